//! What the agent keeps on the BPF filesystem, in one place: where the maps and links are pinned,
//! whether pinned maps fit the program, and removing them (`limiter detach`). A leaf that both
//! the agent and the CLI (`limiter detach`, which needs no agent) use.

mod bpffs;
mod lock;

pub use bpffs::ensure_pin_dir;
pub use lock::lock_pin_dir;

use anyhow::{bail, Context};
use aya::maps::{Array, Map, MapData, MapInfo};
use aya::programs::links::{FdLink, PinnedLink};
use limiter_common::maps::{
    DatapathConfig, BUCKETS_MAP, CONFIG_MAP, LAYOUT_VERSION, RINGBUF_MAP_TYPE,
};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// `--pin-path` unless given: maps at `<dir>/<MAP>`, links at `<dir>/links/<IF>`.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/limiter";

/// Where the link of `iface` is pinned.
pub fn link_pin(pin_path: &Path, iface: &str) -> PathBuf {
    links_dir(pin_path).join(pin_name(iface))
}

/// An interface's name as a bpffs name: bpffs refuses names with a dot (`eth0.100`), so a dot
/// is written `%2E` (and a `%` `%25`, so that the name reads back).
fn pin_name(iface: &str) -> String {
    iface.replace('%', "%25").replace('.', "%2E")
}

/// The interface whose name [`pin_name`] gave `name`.
fn iface_of_pin(name: &str) -> String {
    name.replace("%2E", ".").replace("%25", "%")
}

/// What follows an interface's name in the pin of its egress program's link.
// (bpffs refuses names with a dot.)
const EGRESS_SUFFIX: &str = "@egress";

/// Where the link of `iface`'s egress program (`[http] keep_alive`) is pinned.
pub fn egress_link_pin(pin_path: &Path, iface: &str) -> PathBuf {
    links_dir(pin_path).join(format!("{}{EGRESS_SUFFIX}", pin_name(iface)))
}

/// The directory of the interfaces' links, under the pin directory.
const LINKS_DIR: &str = "links";

fn links_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(LINKS_DIR)
}

/// Checks that the maps pinned under `pin_path` by an earlier agent have the type, key and value
/// sizes and capacity that `object` declares (BUCKETS: `max_keys`), before they are adopted: an
/// incompatible map would otherwise be handed to the new program as it is.
pub fn check_pinned_maps(object: &[u8], pin_path: &Path, max_keys: u32) -> anyhow::Result<()> {
    if let Some(layout) = pinned_layout(pin_path) {
        if layout != LAYOUT_VERSION {
            bail!(
                "the maps pinned under {} were made by a limiter build with another map layout \
                 (version {layout}; this build uses {LAYOUT_VERSION}): run that build, or drop \
                 the pinned state with `limiter detach --iface IF --pin-path {}` for every \
                 interface, then start this one",
                pin_path.display(),
                pin_path.display()
            );
        }
    }
    let object = aya_obj::Object::parse(object).context("parsing the XDP object")?;
    let mut problems = Vec::new();
    for (name, def) in &object.maps {
        let pin = pin_path.join(name);
        if !pin.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&pin)
            .with_context(|| format!("reading the pinned map {}", pin.display()))?;
        let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let expected_entries = if name == BUCKETS_MAP {
            max_keys
        } else {
            def.max_entries()
        };
        let mut differs = Vec::new();
        if pinned_type != def.map_type() {
            differs.push(format!(
                "type {} (expected {})",
                pinned_type,
                def.map_type()
            ));
        }
        if info.key_size() != def.key_size() {
            differs.push(format!(
                "key size {} (expected {})",
                info.key_size(),
                def.key_size()
            ));
        }
        if info.value_size() != def.value_size() {
            differs.push(format!(
                "value size {} (expected {})",
                info.value_size(),
                def.value_size()
            ));
        }
        // The kernel rounds a ring buffer's size; its capacity is not part of the layout.
        if def.map_type() != RINGBUF_MAP_TYPE && info.max_entries() != expected_entries {
            let hint = if name == BUCKETS_MAP {
                " — [agent] max_keys"
            } else {
                ""
            };
            differs.push(format!(
                "max_entries {} (expected {expected_entries}{hint})",
                info.max_entries()
            ));
        }
        if !differs.is_empty() {
            problems.push(format!("{name}: {}", differs.join(", ")));
        }
    }
    if !problems.is_empty() {
        bail!(
            "the maps pinned under {} do not fit this program and configuration:\n  {}\n\
             Either run the configuration (or version) that created them, or drop the pinned state \
             — every bucket and counter — with `limiter detach --iface IF --pin-path {}` for each \
             interface, then start the agent again",
            pin_path.display(),
            problems.join("\n  "),
            pin_path.display()
        );
    }
    Ok(())
}

/// The layout version the pinned CONFIG map holds, if there is one that says (0: written by no
/// agent yet).
fn pinned_layout(pin_path: &Path) -> Option<u32> {
    let data = MapData::from_pin(pin_path.join(CONFIG_MAP)).ok()?;
    let config: Array<MapData, DatapathConfig> = Array::try_from(Map::Array(data)).ok()?;
    Some(config.get(&0, 0).ok()?.valid).filter(|valid| *valid != 0)
}

/// What `limiter detach` did.
#[derive(Debug, Serialize)]
pub struct DetachReport {
    pub interface: String,
    /// No interface was left attached, so the maps were unpinned too.
    pub state_removed: bool,
    /// Interfaces still attached from the same pin path.
    pub still_attached: Vec<String>,
    /// Entries of the pin directory limiter did not make, left alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}

/// Refuses a pin directory that holds entries limiter does not make there (another tool's pins,
/// the root of a bpffs): sharing it would mix up, or later remove, what is not limiter's.
pub fn check_own_content(pin_path: &Path, map_names: &[String]) -> anyhow::Result<()> {
    let foreign = foreign_entries(pin_path, map_names)?;
    if !foreign.is_empty() {
        bail!(
            "{} holds entries limiter did not make ({}): give limiter a directory of its own, \
             such as {DEFAULT_PIN_PATH}",
            pin_path.display(),
            foreign.join(", ")
        );
    }
    Ok(())
}

/// The entries of `pin_path` that are neither a map of the program nor `links/`.
fn foreign_entries(pin_path: &Path, map_names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(pin_path)
        .with_context(|| format!("reading the pin directory {}", pin_path.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name != LINKS_DIR && !map_names.contains(&name) {
            foreign.push(name);
        }
    }
    foreign.sort();
    Ok(foreign)
}

/// Takes the program off `iface` by unpinning its link (the link goes with its last reference),
/// and removes the pinned maps (those named `map_names`, nothing else) when no other interface
/// is attached from `pin_path`.
pub fn detach(iface: &str, pin_path: &Path, map_names: &[String]) -> anyhow::Result<DetachReport> {
    ensure_pin_dir(pin_path)?;
    let pin = link_pin(pin_path, iface);
    if !pin.exists() {
        bail!(
            "limiter is not attached to {iface} from {} (no pinned link at {}); \
             check --pin-path, or `ip link show {iface}` for another XDP program",
            pin_path.display(),
            pin.display()
        );
    }
    for pin in [pin, egress_link_pin(pin_path, iface)] {
        if !pin.exists() {
            continue;
        }
        let link =
            PinnedLink::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
        let link: FdLink = link
            .unpin()
            .with_context(|| format!("unpinning {}", pin.display()))?;
        drop(link);
    }

    let still_attached: Vec<String> = std::fs::read_dir(links_dir(pin_path))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.ends_with(EGRESS_SUFFIX))
                .map(|name| iface_of_pin(&name))
                .collect()
        })
        .unwrap_or_default();
    let state_removed = still_attached.is_empty();
    let mut kept = Vec::new();
    if state_removed {
        for name in map_names {
            let pin = pin_path.join(name);
            // Unpinning a map is removing its name; the map goes with its last reference.
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("unpinning {}", pin.display()))
                }
            }
        }
        // Directories only when empty: whatever someone else put there stays.
        let _ = std::fs::remove_dir(links_dir(pin_path));
        kept = foreign_entries(pin_path, map_names)?;
        if kept.is_empty() {
            let _ = std::fs::remove_dir(pin_path);
        }
    }
    Ok(DetachReport {
        interface: iface.to_owned(),
        state_removed,
        still_attached,
        kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_with_dots_make_valid_pin_names_and_read_back() {
        for iface in ["eth0", "eth0.100", "a%2Eb", "x.y.z", "%", "%2E", "."] {
            let name = pin_name(iface);
            assert!(!name.contains('.'), "{name}");
            assert_eq!(iface_of_pin(&name), iface, "{name}");
        }
    }
}
