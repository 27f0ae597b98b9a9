//! The arms, each set up on the receiver and taken down again: a program on its XDP link, the
//! limiter object, an nftables table or an iptables rule.

use super::model::{Arm, Scenario, NEW_KEYS_PER_SEC, WELL_BASE, WELL_CLIENTS};
use super::ns::ns_command;
use super::receiver::XdpLink;
use crate::bench;
use anyhow::{ensure, Context};
use aya::programs::Xdp;
use limiter_common::bucket::Limit;
use limiter_common::maps::{
    BucketKey, BucketState, Counter, DatapathConfig, BUCKETS_MAP, CONFIG_LIMIT_NEW_KEYS,
    NEW_KEYS_MAP,
};
use limiter_tests::netns::Netns;
use std::path::Path;
use std::time::Instant;

/// The receiver as the arms see it: where they are set up, and with what.
pub(super) struct Rig<'a> {
    pub(super) receiver_ns: &'a Netns,
    pub(super) receiver_if: &'a str,
    /// The receiver's XDP link, and the programs of the arms that are one program alone.
    pub(super) link: &'a XdpLink,
    pub(super) bare_drop: &'a Xdp,
    pub(super) read_drop: &'a Xdp,
    pub(super) bare_pass: &'a Xdp,
    /// Where the XDP objects are, and the bpffs the limiter's maps are pinned in.
    pub(super) objects: &'a Path,
    pub(super) bpffs: &'a Path,
    /// Numbers the limiter loads and hashlimit tables.
    pub(super) serial: std::cell::Cell<u32>,
}

/// An arm, set up on the receiver.
pub(super) enum Filter {
    BareDrop,
    ReadDrop,
    Limiter(Box<FloodLimiter>),
    Nftables,
    Iptables,
    PassAll,
}

const NFT_TABLE: &str = "lflood";

impl Filter {
    pub(super) fn set_up(arm: Arm, scenario: &Scenario, rig: &Rig) -> anyhow::Result<Filter> {
        // Nothing left over by an earlier arm: no table, no rule.
        let leftover = ns_command(rig.receiver_ns, &["nft", "list", "ruleset"], None)?;
        ensure!(
            leftover.trim().is_empty(),
            "the receiver's namespace still has netfilter rules:\n{leftover}"
        );
        Ok(match arm {
            Arm::BareDrop => {
                rig.link.replace(rig.bare_drop)?;
                Filter::BareDrop
            }
            Arm::ReadDrop => {
                rig.link.replace(rig.read_drop)?;
                Filter::ReadDrop
            }
            Arm::Limiter | Arm::LimiterNewKeys => {
                let limiter = FloodLimiter::load(
                    &rig.objects.join("limiter"),
                    rig.bpffs,
                    rig.serial.get(),
                    scenario,
                    (arm == Arm::LimiterNewKeys).then_some(NEW_KEYS_PER_SEC),
                )?;
                rig.link.replace(limiter.program()?)?;
                Filter::Limiter(Box::new(limiter))
            }
            Arm::Nftables => {
                let ruleset = format!(
                    "table netdev {NFT_TABLE} {{\n\
                     \tset sources {{\n\
                     \t\ttype ipv4_addr\n\
                     \t\tsize {}\n\
                     \t\tflags dynamic,timeout\n\
                     \t\ttimeout 10s\n\
                     \t}}\n\
                     \tchain ingress {{\n\
                     \t\ttype filter hook ingress device \"{}\" priority 0; policy accept;\n\
                     \t\tupdate @sources {{ ip saddr limit rate over {}/second burst {} packets }} \
                     drop\n\
                     \t}}\n\
                     }}\n",
                    scenario.capacity, rig.receiver_if, scenario.rate, scenario.burst
                );
                ns_command(rig.receiver_ns, &["nft", "-f", "-"], Some(&ruleset))?;
                Filter::Nftables
            }
            Arm::Iptables => {
                let rate = format!("{}/sec", scenario.rate);
                let burst = scenario.burst.to_string();
                let max = scenario.capacity.to_string();
                let buckets = scenario.capacity.min(65_536).to_string();
                // A name of its own each time: a table of the same name still being destroyed
                // would be taken over, state and all.
                let name = format!("lf{}", rig.serial.get());
                ns_command(
                    rig.receiver_ns,
                    &[
                        "iptables",
                        "-t",
                        "raw",
                        "-A",
                        "PREROUTING",
                        "-i",
                        rig.receiver_if,
                        "-m",
                        "hashlimit",
                        "--hashlimit-mode",
                        "srcip",
                        "--hashlimit-above",
                        &rate,
                        "--hashlimit-burst",
                        &burst,
                        "--hashlimit-htable-size",
                        &buckets,
                        "--hashlimit-htable-max",
                        &max,
                        "--hashlimit-htable-expire",
                        "10000",
                        "--hashlimit-name",
                        &name,
                        "-j",
                        "DROP",
                    ],
                    None,
                )?;
                Filter::Iptables
            }
            Arm::NoFilter => Filter::PassAll,
        })
    }

    /// Whether the arm limits per source (so that it has a steady state to reach).
    pub(super) fn limits(&self) -> bool {
        matches!(
            self,
            Filter::Limiter(_) | Filter::Nftables | Filter::Iptables
        )
    }

    pub(super) fn tear_down(self, rig: &Rig) -> anyhow::Result<()> {
        rig.link.replace(rig.bare_pass)?;
        match self {
            Filter::Nftables | Filter::Iptables => {
                // iptables here is iptables-nft: its raw table is an nftables table too.
                ns_command(rig.receiver_ns, &["nft", "flush", "ruleset"], None)?;
            }
            Filter::Limiter(limiter) => drop(limiter),
            Filter::BareDrop | Filter::ReadDrop | Filter::PassAll => {}
        }
        Ok(())
    }
}

/// The `limiter` object loaded as the agent loads it (maps pinned in a directory of its own,
/// removed on drop), `[limits]` = the scenario's rate and burst, `max_keys` = its capacity. No
/// agent process runs: nothing but the XDP program works on the receiver.
///
/// With `new_keys_per_sec` (`[agent] new_keys_per_sec`), keys are created at that rate at most
/// (and as many at once), from a fresh allowance: its map, `NEW_KEYS`, is pinned in the same
/// directory of its own as the buckets.
pub(super) struct FloodLimiter {
    limiter: bench::Limiter,
    pub(super) new_keys_per_sec: Option<u64>,
}

impl FloodLimiter {
    fn load(
        path: &Path,
        bpffs: &Path,
        serial: u32,
        scenario: &Scenario,
        new_keys_per_sec: Option<u64>,
    ) -> anyhow::Result<Self> {
        let (flags, new_key_limit) = match new_keys_per_sec {
            Some(rate) => (CONFIG_LIMIT_NEW_KEYS, Limit::new(rate, rate)),
            None => (0, Limit::new(1, 1)),
        };
        let config = DatapathConfig {
            default_limit: Limit::new(scenario.rate, scenario.burst),
            new_key_limit,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            flags,
            valid: 1,
            http: limiter_common::maps::HttpConfig::OFF,
        };
        let name = format!("flood{serial}");
        let limiter = bench::Limiter::load(path, bpffs, &name, scenario.capacity, config)?;
        ensure!(
            limiter.ebpf.map(NEW_KEYS_MAP).is_some(),
            "the limiter object has no {NEW_KEYS_MAP} map"
        );
        Ok(FloodLimiter {
            limiter,
            new_keys_per_sec,
        })
    }

    pub(super) fn program(&self) -> anyhow::Result<&Xdp> {
        self.limiter.program()
    }

    /// When its configuration was written: from then on it may create keys.
    pub(super) fn configured_at(&self) -> Instant {
        self.limiter.configured_at
    }

    /// How many of the well-behaved clients have a key (a lookup from user space does not
    /// mark an entry of an LRU map as used).
    pub(super) fn clients_tracked(&self) -> anyhow::Result<u32> {
        let map: aya::maps::HashMap<_, BucketKey, BucketState> = aya::maps::HashMap::try_from(
            self.limiter
                .ebpf
                .map(BUCKETS_MAP)
                .context("no BUCKETS map")?,
        )?;
        let mut tracked = 0;
        for i in 0..WELL_CLIENTS {
            let [a, b, c, d] = WELL_BASE;
            match map.get(&bench::v4_key([a, b, c, d + i as u8]), 0) {
                Ok(_) => tracked += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(tracked)
    }

    pub(super) fn counter(&self, counter: Counter) -> anyhow::Result<u64> {
        self.limiter.counter(counter)
    }

    pub(super) fn counter_per_cpu(&self, counter: Counter) -> anyhow::Result<Vec<u64>> {
        self.limiter.counter_per_cpu(counter)
    }
}
