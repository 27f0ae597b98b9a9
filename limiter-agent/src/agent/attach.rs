//! Attaching the XDP program to interfaces through pinned links, so that it stays attached when
//! the agent exits and a restarted agent replaces the program in place, keeping the maps.

use crate::pins::{egress_link_pin, link_pin};
use anyhow::{anyhow, Context};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::xdp::XdpLink;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use std::path::Path;
use std::process::Command;
use tracing::{info, warn};

/// `--attach-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode, falling back to skb mode where the driver has no XDP support.
    Auto,
    /// Native mode only: fail where the driver has no XDP support.
    Native,
    /// Generic XDP in the kernel's network stack: works everywhere, costs more.
    Skb,
}

/// Attaches `program` to `iface`, or takes over the link a previous agent pinned there.
/// Returns the mode it runs in ("native" or "skb").
pub fn attach(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
    pin_path: &Path,
) -> anyhow::Result<String> {
    let pin = link_pin(pin_path, iface);
    if pin.exists() {
        match adopt(program, &pin) {
            Ok(()) => {
                info!(
                    iface,
                    "took over the pinned link: program replaced in place, state kept"
                );
                return Ok(attached_mode(iface).unwrap_or_else(|| "unknown".to_owned()));
            }
            Err(err) => {
                warn!(iface, pin = %pin.display(), "the pinned link is unusable ({err:#}); attaching anew");
                std::fs::remove_file(&pin)
                    .with_context(|| format!("removing the stale pin {}", pin.display()))?;
            }
        }
    }
    let (link_id, mode_name) = match mode {
        AttachMode::Native => (
            program
                .attach(iface, XdpMode::Driver)
                .with_context(|| attach_failed(iface, "native"))?,
            "native",
        ),
        AttachMode::Skb => (
            program
                .attach(iface, XdpMode::Skb)
                .with_context(|| attach_failed(iface, "skb"))?,
            "skb",
        ),
        AttachMode::Auto => match program.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(err) => {
                warn!(
                    iface,
                    "native XDP is not available ({err}); falling back to skb mode"
                );
                (
                    program
                        .attach(iface, XdpMode::Skb)
                        .with_context(|| attach_failed(iface, "skb"))?,
                    "skb",
                )
            }
        },
    };
    let link = program.take_link(link_id)?;
    let link = FdLink::try_from(link).map_err(|_| {
        anyhow!("the kernel attached to {iface} without a BPF link, which cannot be pinned")
    })?;
    std::fs::create_dir_all(pin.parent().unwrap())?;
    link.pin(&pin)
        .with_context(|| format!("pinning the link of {iface} at {}", pin.display()))?;
    info!(iface, mode = mode_name, "attached");
    Ok(mode_name.to_owned())
}

fn attach_failed(iface: &str, mode: &str) -> String {
    format!("attaching the XDP program to {iface} in {mode} mode (is another XDP program attached? `ip link show {iface}`)")
}

/// Replaces the program of a pinned link atomically.
fn adopt(program: &mut Xdp, pin: &Path) -> anyhow::Result<()> {
    let pinned = PinnedLink::from_pin(pin)?;
    let link = XdpLink::try_from(FdLink::from(pinned))?;
    let link_id = program.attach_to_link(link)?;
    // The pin keeps the link; our handle may close with the program.
    drop(program.take_link(link_id)?);
    Ok(())
}

/// The XDP mode the kernel reports for `iface` (from iproute2's JSON output).
fn attached_mode(iface: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-j", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mode = links.get(0)?.get("xdp")?.get("mode")?.as_u64()?;
    // XDP_ATTACHED_DRV = 1, XDP_ATTACHED_SKB = 2, XDP_ATTACHED_HW = 3.
    match mode {
        1 => Some("native".to_owned()),
        2 => Some("skb".to_owned()),
        3 => Some("offload".to_owned()),
        _ => None,
    }
}

/// Attaches the egress program (`[http] keep_alive`: the gateway's side of connections kept
/// open after a 429) to `iface` through a pinned TCX link, or takes over the one a previous
/// agent pinned, as for the XDP program.
pub fn attach_egress(
    program: &mut SchedClassifier,
    iface: &str,
    pin_path: &Path,
) -> anyhow::Result<()> {
    let pin = egress_link_pin(pin_path, iface);
    if pin.exists() {
        let adopted = (|| -> anyhow::Result<()> {
            let pinned = PinnedLink::from_pin(&pin)?;
            let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
            let id = program.attach_to_link(link)?;
            // The pin keeps the link; our handle may close with the program.
            drop(program.take_link(id)?);
            Ok(())
        })();
        match adopted {
            Ok(()) => return Ok(()),
            Err(err) => {
                warn!(iface, pin = %pin.display(), "the pinned egress link is unusable ({err:#}); attaching anew");
                std::fs::remove_file(&pin)
                    .with_context(|| format!("removing the stale pin {}", pin.display()))?;
            }
        }
    }
    let id = program
        .attach(iface, TcAttachType::Egress)
        .with_context(|| format!("attaching the egress program to {iface}"))?;
    let link = FdLink::try_from(program.take_link(id)?).map_err(|_| {
        anyhow!("the kernel attached the egress program to {iface} without a BPF link (TCX needs Linux 6.6)")
    })?;
    std::fs::create_dir_all(pin.parent().unwrap())?;
    link.pin(&pin)
        .with_context(|| format!("pinning the egress link of {iface} at {}", pin.display()))?;
    Ok(())
}
