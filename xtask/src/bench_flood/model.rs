//! The flood benchmark's vocabulary: the test bed's addresses and CPUs, the scenarios and the
//! arms, how long everything runs, and what one run measured.

use crate::bench::median;
use std::time::Duration;

/// The CPU the generator runs on, and the one the receiver's NAPI thread is pinned to.
pub(super) const GENERATOR_CPU: usize = 0;
pub(super) const RECEIVER_CPU: usize = 1;

/// Flood sources are hosts of 198.19.0.0/16; the well-behaved clients of scenario (c) are
/// 198.18.0.10 … 198.18.0.25, on the receiver's /24, and send to `WELL_PORT`, where a UDP socket
/// counts them. Flood frames go to `FLOOD_PORT`, where nothing listens.
pub(super) const FLOOD_BASE: [u8; 4] = [198, 19, 0, 0];
pub(super) const WELL_BASE: [u8; 4] = [198, 18, 0, 10];
pub(super) const WELL_CLIENTS: u32 = 16;
pub(super) const WELL_PORT: u16 = limiter_tests::traffic::PORT;
pub(super) const FLOOD_PORT: u16 = 9001;
/// One frame in 2^WELL_SHIFT is a well-behaved client's: at ~7 Mpps, ~110 packets/s per client,
/// about a tenth of the limit.
pub(super) const WELL_SHIFT: u32 = 12;
/// Frames per well-behaved client sent before the flood starts (they are established clients).
pub(super) const WELL_WARMUP: u32 = 20;

/// One flood scenario.
pub(super) struct Scenario {
    pub(super) id: &'static str,
    pub(super) title: &'static str,
    /// Flood sources (a power of two), hosts of 198.19.0.0/16.
    pub(super) sources: u32,
    /// Pseudo-random source per frame, or the sources in turn.
    pub(super) random: bool,
    /// The 16 well-behaved clients send too.
    pub(super) well: bool,
    pub(super) rate: u64,
    pub(super) burst: u64,
    /// Keys every limiter may track: limiter's `max_keys`, the nftables set's `size`,
    /// hashlimit's `--hashlimit-htable-max`.
    pub(super) capacity: u32,
    /// The arms measured (`ReadDrop` only where it explains the others).
    pub(super) arms: &'static [Arm],
    /// How the generator is paced: to each arm's own receiver, or every arm to the same rate.
    pub(super) load: Load,
}

/// How the generator is paced in a scenario.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Load {
    /// To `PACE_HEADROOM` × the receiver's capacity under the arm measured ([`Pacer`]): what
    /// the arm's receiver can take at most.
    ///
    /// [`Pacer`]: super::pacer::Pacer
    OwnCapacity,
    /// Every arm to one rate, `PACE_HEADROOM` × the capacity of the receiver without a filter,
    /// measured before the scenario's rounds: a flood that just saturates an unprotected host.
    SameForAll,
}

pub(super) const SCENARIOS: [Scenario; 4] = [
    Scenario {
        id: "a",
        title: "256 sources flooding far over their limit",
        sources: 256,
        random: false,
        well: false,
        rate: 1000,
        burst: 2000,
        capacity: 131_072,
        arms: &ARMS_A,
        load: Load::OwnCapacity,
    },
    Scenario {
        id: "b",
        title: "65 536 sources (a large table)",
        sources: 65_536,
        random: true,
        well: false,
        rate: 1,
        burst: 2,
        capacity: 131_072,
        arms: &ARMS_B,
        load: Load::OwnCapacity,
    },
    Scenario {
        id: "c",
        title: "random-source flood beyond the table, 16 well-behaved clients",
        sources: 65_536,
        random: true,
        well: true,
        rate: 1000,
        burst: 2000,
        capacity: 4096,
        arms: &ARMS_C,
        load: Load::SameForAll,
    },
    // (a) at a rate whose refill interval (10 ms) is longer than a tick: most drops are proven
    // on the jiffies, without the precise clock.
    Scenario {
        id: "a100",
        title: "256 sources flooding far over a limit of 100/s",
        sources: 256,
        random: false,
        well: false,
        rate: 100,
        burst: 200,
        capacity: 131_072,
        arms: &ARMS_A100,
        load: Load::OwnCapacity,
    },
];

/// The index in [`SCENARIOS`] of (a) at 100/s.
pub(super) const A100: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Arm {
    BareDrop,
    /// Scenario (a) only: an XDP_DROP that reads the packet's source first.
    ReadDrop,
    Limiter,
    /// Scenario (c) only: the limiter with `[agent] new_keys_per_sec = NEW_KEYS_PER_SEC`.
    LimiterNewKeys,
    Nftables,
    Iptables,
    NoFilter,
}

/// `[agent] new_keys_per_sec` of the arm [`Arm::LimiterNewKeys`] (its name says it too).
pub(super) const NEW_KEYS_PER_SEC: u64 = 1000;

/// Every arm, in the order of the reports and the chart.
pub(super) const ALL_ARMS: [Arm; 7] = [
    Arm::BareDrop,
    Arm::ReadDrop,
    Arm::Limiter,
    Arm::LimiterNewKeys,
    Arm::Nftables,
    Arm::Iptables,
    Arm::NoFilter,
];

const ARMS_A: [Arm; 6] = [
    Arm::BareDrop,
    Arm::ReadDrop,
    Arm::Limiter,
    Arm::Nftables,
    Arm::Iptables,
    Arm::NoFilter,
];

const ARMS_A100: [Arm; 3] = [Arm::BareDrop, Arm::ReadDrop, Arm::Limiter];

const ARMS_B: [Arm; 5] = [
    Arm::BareDrop,
    Arm::Limiter,
    Arm::Nftables,
    Arm::Iptables,
    Arm::NoFilter,
];

const ARMS_C: [Arm; 6] = [
    Arm::BareDrop,
    Arm::Limiter,
    Arm::LimiterNewKeys,
    Arm::Nftables,
    Arm::Iptables,
    Arm::NoFilter,
];

impl Arm {
    pub(super) fn name(self) -> &'static str {
        match self {
            Arm::BareDrop => "bare XDP_DROP",
            Arm::ReadDrop => "XDP_DROP reading the source",
            Arm::Limiter => "limiter",
            Arm::LimiterNewKeys => "limiter, new keys ≤ 1000/s",
            Arm::Nftables => "nftables",
            Arm::Iptables => "iptables hashlimit",
            Arm::NoFilter => "no filter",
        }
    }

    pub(super) fn index(self) -> usize {
        ALL_ARMS.iter().position(|&a| a == self).unwrap()
    }

    /// The limiter program, with or without a bound on new keys.
    pub(super) fn is_limiter(self) -> bool {
        matches!(self, Arm::Limiter | Arm::LimiterNewKeys)
    }
}

/// How long everything runs.
pub(super) struct Plan {
    pub(super) quick: bool,
    pub(super) rounds: usize,
    /// The warm-up before every window, and how far it is stretched for the limiters to spend
    /// their bursts.
    pub(super) warmup: Duration,
    pub(super) max_warmup: Duration,
    pub(super) window: Duration,
    /// How long perf samples each profiled arm.
    pub(super) profile: Duration,
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 3,
                warmup: Duration::from_millis(250),
                max_warmup: Duration::from_secs(3),
                window: Duration::from_millis(500),
                profile: Duration::from_millis(700),
            }
        } else {
            Plan {
                quick,
                rounds: 7,
                warmup: Duration::from_millis(1000),
                max_warmup: Duration::from_secs(10),
                window: Duration::from_millis(3000),
                profile: Duration::from_secs(3),
            }
        }
    }
}

/// What one arm measured in one round.
#[derive(Clone, Debug, Default)]
pub(super) struct Sample {
    /// Frames the generator produced per second, over the window.
    pub(super) offered_pps: f64,
    /// Packets the receiver processed per second (its veth's rx packets).
    pub(super) processed_pps: f64,
    /// The share of the window the receiver's NAPI thread ran.
    pub(super) busy: f64,
    /// NAPI thread CPU time per packet processed, ns.
    pub(super) ns_per_packet: f64,
    /// The share of the window the NAPI thread waited for its CPU (runnable, not running).
    pub(super) napi_wait: f64,
    /// The share of the window the generator thread ran, and waited for its CPU.
    pub(super) gen_busy: f64,
    pub(super) gen_wait: f64,
    /// Packets the filter passed (those that reached UDP) and dropped, per second.
    pub(super) passed_pps: f64,
    pub(super) dropped_pps: f64,
    /// The limiter's own count of its drops, per second (a cross-check).
    pub(super) limiter_dropped_pps: f64,
    /// Frames per second that found the receiving veth's ring full.
    pub(super) ring_full_pps: f64,
    /// Packets IPv4 refused for a bad header or checksum (must be none).
    pub(super) bad_headers: u64,
    /// How long the warm-up took.
    pub(super) warmup_secs: f64,
    /// Scenario (c): well-behaved packets sent and received over the window, and over the whole
    /// run (the clients' own packets before the flood included).
    pub(super) well_sent: u64,
    pub(super) well_received: u64,
    pub(super) well_sent_run: u64,
    pub(super) well_received_run: u64,
    /// The limiter: keys it created (over the whole run, the `keys_secs` seconds from its
    /// configuration to the reading), packets it could not give a key, and first packets of
    /// new keys it refused (`new_keys_per_sec`).
    pub(super) keys_created: u64,
    pub(super) keys_secs: f64,
    /// Scenario (c), the limiter: well-behaved clients with a key at the end of the window.
    pub(super) clients_tracked: Option<u32>,
    pub(super) insert_failed: u64,
    pub(super) new_keys_refused: u64,
}

/// Every sample of one scenario, per arm.
pub(super) struct ScenarioResult {
    pub(super) samples: Vec<Vec<Sample>>,
    /// With [`Load::SameForAll`]: the rate every arm was offered, and where it came from.
    pub(super) same_load: Option<SameLoad>,
}

/// The rate every arm of a [`Load::SameForAll`] scenario is offered.
#[derive(Clone, Copy, Debug)]
pub(super) struct SameLoad {
    /// The receiver without a filter (a bare `XDP_PASS` and the stack) in the calibration runs:
    /// its ns per packet, median, min and max.
    pub(super) ns_per_packet: (f64, f64, f64),
    pub(super) runs: usize,
    /// Frames per second offered to every arm: `PACE_HEADROOM` × the capacity 1/ns.
    pub(super) offered_pps: f64,
}

pub(super) struct FloodResult {
    pub(super) scenarios: Vec<ScenarioResult>,
    pub(super) profiles: Vec<Profile>,
    /// The limiter program's own ns per run on the receiver, and the receiver's ns per packet
    /// in the same run.
    pub(super) limiter_prog_ns: Option<(f64, f64)>,
    pub(crate) checks: Vec<String>,
    pub(super) notes: Vec<String>,
    pub(super) secs: f64,
    pub(super) iptables_version: String,
    pub(super) nft_version: String,
    /// Scenario (d), run after the others on a test bed of its own.
    pub(super) queues: Option<super::queues::QueuesResult>,
}

/// Where the receiver's CPU went under one arm.
pub(super) struct Profile {
    pub(super) arm: Arm,
    /// Share in percent, symbol.
    pub(super) symbols: Vec<(f64, String)>,
    pub(super) ns_per_packet: f64,
}

/// Median, min and max of `values`.
pub(super) fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.into_iter().collect();
    let m = median(&mut values);
    (
        m,
        values.first().copied().unwrap_or(f64::NAN),
        values.last().copied().unwrap_or(f64::NAN),
    )
}
