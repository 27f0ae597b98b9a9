//! `cargo xtask bench`, flood throughput: what a receiver on one CPU gets through of a flood,
//! with limiter on it and with the tools a Linux admin already has, side by side; and, in
//! [`run_all`], the order of all the benchmark's parts and the summary against the aims.
//!
//! The test bed is a veth pair between two network namespaces (the test bed's `TestNet`: the
//! sender is its "clients" namespace, the receiver its "gateway"). The sender is the project's
//! own generator, `xdp_gen`, an XDP program run with `BPF_PROG_TEST_RUN` in live-frames mode on
//! CPU 0: its `XDP_TX` hands every frame to the sending veth's `ndo_xdp_xmit`, which puts it on
//! the receiving veth's ring as an XDP frame, as a NIC would deliver it. The receiving veth runs
//! its NAPI poll in a kernel thread of its own (threaded NAPI), pinned to CPU 1, so the receiver
//! and the generator do not share a CPU (without it the poll runs in a softirq on the sending
//! CPU; the run measures and reports that first).
//!
//! The receiver always has an XDP program: the arm's (a bare `XDP_DROP`, an `XDP_DROP` that
//! reads the source, the limiter) or a bare `XDP_PASS` for the arms without one (no filter,
//! nftables, iptables). It is attached once through a BPF link whose program is swapped between
//! arms (`BPF_LINK_UPDATE`), so the veth's NAPI (and its thread) stays the same all along.
//!
//! What is measured, per arm, over a window after a warm-up: the packets the receiver processed
//! (the receiving veth's rx packets, the counter `ip -s link` shows, which counts every frame its
//! NAPI poll took off the ring, whatever the verdict), the CPU time its NAPI thread used for them
//! (`/proc/PID/schedstat`: the cost per packet, robust to other work on the machine), the frames
//! the generator sent and those that found the ring full, and what the filter passed (the
//! namespace's UDP counters: every passed flood packet ends in UDP). The generator is paced to
//! just above the receiver's capacity ([`Pacer`]) — or, in a scenario of [`Load::SameForAll`],
//! every arm to one rate, just above the capacity of the receiver without a filter, measured
//! before the scenario's rounds ([`FixedRate`] holds it). Arms are interleaved: every round runs
//! each arm once, in an order rotated every round, each with fresh state; the report gives
//! medians and min–max over the rounds. Then one `perf` profile of the receiver's CPU per arm of
//! interest, and the limiter program's own run time (`BPF_ENABLE_STATS`).
//!
//! `LIMITER_BENCH_VERBOSE=1` prints every sample.

use crate::bench::{self, median, INTERRUPTED, PIN_PREFIX};
use anyhow::{bail, ensure, Context};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use limiter_common::bucket::Limit;
use limiter_common::maps::{
    counter_index, BucketKey, BucketState, Counter, DatapathConfig, BUCKETS_MAP,
    CONFIG_LIMIT_NEW_KEYS, CONFIG_MAP, COUNTERS_MAP, LIMITER_PROG, NEW_KEYS_MAP,
};
use limiter_tests::agent::{ensure_bpffs, TEST_BPFFS};
use limiter_tests::netns::{Netns, TestNet};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

pub(crate) const SECTION: &str = "## Flood throughput";

/// The CPU the generator runs on, and the one the receiver's NAPI thread is pinned to.
const GENERATOR_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;

/// Frames per `test_run` of the generator (a signal ends one early: [`stop_generator`]), and
/// frames per batch within one (the kernel's maximum is 256).
const CHUNK: u32 = 1 << 20;
/// Frames per `test_run` with [`Load::SameForAll`]: one call for a whole run. The generator
/// sleeps ~20–30 ms at the end of every call (in the kernel, here), which a fixed rate would
/// have to make up in a burst.
const CHUNK_SAME_LOAD: u32 = 1 << 26;
const BATCH: u32 = 256;
/// Frames per batch with [`Load::SameForAll`]. The generator hands a batch to the veth at once,
/// so the receiving ring (256 frames) takes a batch's worth in one go: a receiver that keeps
/// up on average still loses frames whenever its thread is slow to wake for a batch of 256.
/// Batches of 64 arrive more as a NIC's frames do, and still leave the generator the speed to
/// catch up ([`FixedRate`]); smaller ones do not.
const BATCH_SAME_LOAD: u32 = 64;

/// Flood sources are hosts of 198.19.0.0/16; the well-behaved clients of scenario (c) are
/// 198.18.0.10 … 198.18.0.25, on the receiver's /24, and send to `WELL_PORT`, where a UDP socket
/// counts them. Flood frames go to `FLOOD_PORT`, where nothing listens.
const FLOOD_BASE: [u8; 4] = [198, 19, 0, 0];
const WELL_BASE: [u8; 4] = [198, 18, 0, 10];
const WELL_CLIENTS: u32 = 16;
const WELL_PORT: u16 = limiter_tests::traffic::PORT;
const FLOOD_PORT: u16 = 9001;
/// One frame in 2^WELL_SHIFT is a well-behaved client's: at ~7 Mpps, ~110 packets/s per client,
/// about a tenth of the limit.
const WELL_SHIFT: u32 = 12;
/// Frames per well-behaved client sent before the flood starts (they are established clients).
const WELL_WARMUP: u32 = 20;

/// Well-behaved sources the generator can count.
const MAX_WELL: u32 = 64;

/// `BPF_LINK_CREATE` / `BPF_LINK_UPDATE` and the XDP attach type (linux/bpf.h).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_XDP: u32 = 37;

/// The generator's configuration (`GEN_CONFIG` of limiter-ebpf/src/bin/xdp_gen.rs: the same
/// layout).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GenConfig {
    flood_base: u32,
    flood_mask: u32,
    random: u32,
    well: u32,
    well_base: u32,
    well_mask: u32,
    well_every_mask: u32,
    well_every_shift: u32,
    only_well: u32,
    flood_port: u32,
    well_port: u32,
    header_sum: u32,
    _pad: u32,
    pace_interval_ns: u64,
    pace_slack_ns: u64,
}

/// `GEN_STATE` of the generator.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct GenState {
    frames: u64,
    held: u64,
    rng: u64,
    next_ns: u64,
}

// SAFETY: #[repr(C)] plain data without padding.
unsafe impl aya::Pod for GenConfig {}
unsafe impl aya::Pod for GenState {}

/// One flood scenario.
struct Scenario {
    id: char,
    title: &'static str,
    /// Flood sources (a power of two), hosts of 198.19.0.0/16.
    sources: u32,
    /// Pseudo-random source per frame, or the sources in turn.
    random: bool,
    /// The 16 well-behaved clients send too.
    well: bool,
    rate: u64,
    burst: u64,
    /// Keys every limiter may track: limiter's `max_keys`, the nftables set's `size`,
    /// hashlimit's `--hashlimit-htable-max`.
    capacity: u32,
    /// The arms measured (`ReadDrop` only where it explains the others).
    arms: &'static [Arm],
    /// How the generator is paced: to each arm's own receiver, or every arm to the same rate.
    load: Load,
}

/// How the generator is paced in a scenario.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Load {
    /// To `PACE_HEADROOM` × the receiver's capacity under the arm measured ([`Pacer`]): what
    /// the arm's receiver can take at most.
    OwnCapacity,
    /// Every arm to one rate, `PACE_HEADROOM` × the capacity of the receiver without a filter,
    /// measured before the scenario's rounds: a flood that just saturates an unprotected host.
    SameForAll,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        id: 'a',
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
        id: 'b',
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
        id: 'c',
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
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Arm {
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
const NEW_KEYS_PER_SEC: u64 = 1000;

/// Every arm, in the order of the reports and the chart.
const ALL_ARMS: [Arm; 7] = [
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
    fn name(self) -> &'static str {
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

    fn index(self) -> usize {
        ALL_ARMS.iter().position(|&a| a == self).unwrap()
    }

    /// The limiter program, with or without a bound on new keys.
    fn is_limiter(self) -> bool {
        matches!(self, Arm::Limiter | Arm::LimiterNewKeys)
    }
}

/// How long everything runs.
pub(crate) struct Plan {
    quick: bool,
    rounds: usize,
    /// The warm-up before every window, and how far it is stretched for the limiters to spend
    /// their bursts.
    warmup: Duration,
    max_warmup: Duration,
    window: Duration,
    /// How long perf samples each profiled arm.
    profile: Duration,
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
struct Sample {
    /// Frames the generator produced per second, over the window.
    offered_pps: f64,
    /// Packets the receiver processed per second (its veth's rx packets).
    processed_pps: f64,
    /// The share of the window the receiver's NAPI thread ran.
    busy: f64,
    /// NAPI thread CPU time per packet processed, ns.
    ns_per_packet: f64,
    /// The share of the window the NAPI thread waited for its CPU (runnable, not running).
    napi_wait: f64,
    /// The share of the window the generator thread ran, and waited for its CPU.
    gen_busy: f64,
    gen_wait: f64,
    /// Packets the filter passed (those that reached UDP) and dropped, per second.
    passed_pps: f64,
    dropped_pps: f64,
    /// The limiter's own count of its drops, per second (a cross-check).
    limiter_dropped_pps: f64,
    /// Frames per second that found the receiving veth's ring full.
    ring_full_pps: f64,
    /// Packets IPv4 refused for a bad header or checksum (must be none).
    bad_headers: u64,
    /// How long the warm-up took.
    warmup_secs: f64,
    /// Scenario (c): well-behaved packets sent and received over the window, and over the whole
    /// run (the clients' own packets before the flood included).
    well_sent: u64,
    well_received: u64,
    well_sent_run: u64,
    well_received_run: u64,
    /// The limiter: keys it created (over the whole run, the `keys_secs` seconds from its
    /// configuration to the reading), packets it could not give a key, and first packets of
    /// new keys it refused (`new_keys_per_sec`).
    keys_created: u64,
    keys_secs: f64,
    /// Scenario (c), the limiter: well-behaved clients with a key at the end of the window.
    clients_tracked: Option<u32>,
    insert_failed: u64,
    new_keys_refused: u64,
}

/// Every sample of one scenario, per arm.
pub(crate) struct ScenarioResult {
    samples: Vec<Vec<Sample>>,
    /// With [`Load::SameForAll`]: the rate every arm was offered, and where it came from.
    same_load: Option<SameLoad>,
}

/// The rate every arm of a [`Load::SameForAll`] scenario is offered.
#[derive(Clone, Copy, Debug)]
struct SameLoad {
    /// The receiver without a filter (a bare `XDP_PASS` and the stack) in the calibration runs:
    /// its ns per packet, median, min and max.
    ns_per_packet: (f64, f64, f64),
    runs: usize,
    /// Frames per second offered to every arm: `PACE_HEADROOM` × the capacity 1/ns.
    offered_pps: f64,
}

/// Runs of the receiver without a filter that set a [`Load::SameForAll`] scenario's rate.
const CALIBRATION_RUNS: usize = 3;

pub(crate) struct FloodResult {
    scenarios: Vec<ScenarioResult>,
    profiles: Vec<Profile>,
    /// The limiter program's own ns per run on the receiver, and the receiver's ns per packet
    /// in the same run.
    limiter_prog_ns: Option<(f64, f64)>,
    pub(crate) checks: Vec<String>,
    notes: Vec<String>,
    secs: f64,
    iptables_version: String,
    nft_version: String,
}

pub(crate) fn run(plan: &Plan) -> anyhow::Result<FloodResult> {
    let started = Instant::now();
    ensure!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) > RECEIVER_CPU,
        "the flood benchmark puts the generator on CPU {GENERATOR_CPU} and the receiver on CPU \
         {RECEIVER_CPU}: it needs 2 CPUs"
    );
    let bpffs = Path::new(TEST_BPFFS);
    ensure_bpffs(bpffs);
    bench::remove_stale_pin_dirs(bpffs);
    let objects = bench::object_dir();

    // The thread that reads the counters, ahead of ordinary work: a reading is a few system
    // calls that must not be spread over a scheduling delay.
    // SAFETY: plain system call on this thread.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, -10) };
    let net = TestNet::new(0, 1);
    let receiver_ns = &net.gateway;
    let sender_ns = &net.clients;
    let receiver_if = net.gateway_if.clone();
    // No IPv6 (its neighbour and multicast traffic would be keys of their own in the
    // limiter), no reverse-path filter (the flood's sources have no route back).
    for ns in [receiver_ns, sender_ns] {
        for sysctl in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            ns_command(ns, &["sysctl", "-q", "-w", sysctl], None)?;
        }
    }
    let sender_ifindex = ifindex(sender_ns, &net.client_if)?;

    let (gen_ebpf, mut gen_obj) = load_generator(&objects.join("xdp_gen"))?;
    let bare_drop = bench::load_plain(&objects.join("bare_drop"), &["bare_drop"])?;
    let bare_pass = bench::load_plain(&objects.join("bare_pass"), &["bare_pass"])?;
    let read_drop = bench::load_plain(&objects.join("read_drop"), &["read_drop"])?;
    let bare_drop_prog = bench::program(&bare_drop, "bare_drop")?;
    let bare_pass_prog = bench::program(&bare_pass, "bare_pass")?;
    // The veth has a NAPI instance once it has an XDP program; then its poll can run in a
    // thread of its own, which can be pinned.
    let link = XdpLink::create(receiver_ns, &receiver_if, bare_pass_prog)?;
    // Where the receiver's poll runs without threaded NAPI: a short flood onto a bare
    // XDP_DROP, NET_RX softirqs counted per CPU.
    link.replace(bare_drop_prog)?;
    let before = (
        net_rx_softirqs()?,
        rx_packets_once(receiver_ns, &receiver_if)?,
    );
    let started_probe = Instant::now();
    let probe_stop = AtomicBool::new(false);
    let probe_tid = AtomicI32::new(0);
    install_stop_signal()?;
    gen_obj.configure(GenConfig {
        flood_base: u32::from_be_bytes(FLOOD_BASE),
        flood_mask: 255,
        flood_port: u32::from(FLOOD_PORT),
        header_sum: header_sum(&bench::ipv4_udp(FLOOD_BASE)),
        ..GenConfig::default()
    })?;
    let probe_frame = bench::ipv4_udp(FLOOD_BASE);
    let probe_sender = Sender {
        ns: sender_ns,
        ifindex: sender_ifindex,
    };
    let gen_prog = bench::program(&gen_ebpf, "xdp_gen")?;
    std::thread::scope(|s| {
        let generator = s.spawn(|| {
            generate(
                gen_prog,
                &probe_sender,
                &probe_frame,
                Calls {
                    batch: BATCH,
                    repeat: CHUNK,
                    once: false,
                },
                &probe_stop,
                &probe_tid,
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        stop_generator(&probe_stop, &probe_tid, &generator);
        generator
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
    })?;
    let probe_secs = started_probe.elapsed().as_secs_f64();
    let after = (
        net_rx_softirqs()?,
        rx_packets_once(receiver_ns, &receiver_if)?,
    );
    let softirqs: Vec<String> = after
        .0
        .iter()
        .zip(&before.0)
        .enumerate()
        .map(|(cpu, (a, b))| format!("CPU {cpu} +{}", a - b))
        .collect();
    link.replace(bare_pass_prog)?;
    ns_shell(
        receiver_ns,
        &format!("echo 1 > /sys/class/net/{receiver_if}/threaded"),
    )
    .context("enabling threaded NAPI on the receiving veth")?;
    let napi = NapiThread::find(&receiver_if)?;
    napi.pin(RECEIVER_CPU)?;
    let stack = StackFiles::open(receiver_ns, &receiver_if)?;
    let mut notes = vec![format!(
        "**Where the receiver runs.** The veth hands the frames of `ndo_xdp_xmit` to its \
         peer's NAPI, scheduled on the CPU that sends — the generator's: in a {:.1} s flood \
         onto a bare `XDP_DROP` before threaded NAPI was on, NET_RX softirqs went {} ({:.1} \
         Mpps processed), so generator and receiver shared CPU {GENERATOR_CPU}. With the \
         veth's `threaded` NAPI on, its poll runs in a kernel thread ({}), pinned here to CPU \
         {RECEIVER_CPU}.",
        probe_secs,
        softirqs.join(", "),
        (after.1 - before.1) as f64 / probe_secs / 1e6,
        napi.comm
    )];

    let iptables_version = tool_version("iptables", &["-V"]);
    let nft_version = tool_version("nft", &["-v"]);
    let bed = Bed {
        plan,
        receiver_ns,
        receiver_if: &receiver_if,
        link: &link,
        bare_drop: bare_drop_prog,
        read_drop: bench::program(&read_drop, "read_drop")?,
        bare_pass: bare_pass_prog,
        objects: &objects,
        bpffs,
        serial: std::cell::Cell::new(0),
        gen_prog,
        sender: Sender {
            ns: sender_ns,
            ifindex: sender_ifindex,
        },
        stack: &stack,
        napi: &napi,
    };
    let mut checks = Vec::new();
    let mut scenarios = Vec::new();
    for scenario in &SCENARIOS {
        println!(
            "flood ({}) {}: {} rounds × {} arms, {:.1} s warm-up (up to {:.0} s for the limiters \
             to spend their bursts) + {:.1} s measured each",
            scenario.id,
            scenario.title,
            plan.rounds,
            scenario.arms.len(),
            plan.warmup.as_secs_f64(),
            plan.max_warmup.as_secs_f64(),
            plan.window.as_secs_f64()
        );
        let same_load = match scenario.load {
            Load::OwnCapacity => None,
            Load::SameForAll => Some(bed.calibrate(&mut gen_obj, scenario)?),
        };
        let offered = same_load.map(|load| load.offered_pps);
        let mut samples: Vec<Vec<Sample>> = ALL_ARMS.iter().map(|_| Vec::new()).collect();
        for round in 0..plan.rounds {
            for i in 0..scenario.arms.len() {
                let arm = scenario.arms[(i + round) % scenario.arms.len()];
                let sample =
                    bed.run_arm(&mut gen_obj, scenario, arm, offered, &mut |_, pacer| {
                        pacer.run_for(plan.window)
                    })?;
                check_sample(&mut checks, scenario, arm, offered, &sample);
                samples[arm.index()].push(sample);
            }
            eprint!("\rround {}/{}", round + 1, plan.rounds);
        }
        eprintln!();
        scenarios.push(ScenarioResult { samples, same_load });
    }
    println!("profiling the receiver's CPU in scenario (a)");
    let mut profiles = Vec::new();
    for arm in [Arm::Limiter, Arm::BareDrop, Arm::Nftables] {
        // A profile explains the numbers; without perf they stand on their own.
        match bed.profile(&mut gen_obj, &SCENARIOS[0], arm) {
            Ok(profile) => profiles.push(profile),
            Err(e) => notes.push(format!("No profile of {}: {e:#}.", arm.name())),
        }
    }
    let limiter_prog_ns = bed.limiter_program_time(&mut gen_obj, &SCENARIOS[0])?;
    if let Some(cpu) = napi.last_cpu() {
        notes.push(format!(
            "At the end the NAPI thread had last run on CPU {cpu} (`/proc/PID/stat`)."
        ));
    }
    drop(link);
    Ok(FloodResult {
        scenarios,
        profiles,
        limiter_prog_ns,
        checks,
        notes,
        secs: started.elapsed().as_secs_f64(),
        iptables_version,
        nft_version,
    })
}

/// The test bed, and what the arms are set up with.
struct Bed<'a> {
    plan: &'a Plan,
    receiver_ns: &'a Netns,
    receiver_if: &'a str,
    link: &'a XdpLink,
    bare_drop: &'a Xdp,
    read_drop: &'a Xdp,
    bare_pass: &'a Xdp,
    objects: &'a Path,
    bpffs: &'a Path,
    /// Numbers the limiter loads and hashlimit tables.
    serial: std::cell::Cell<u32>,
    gen_prog: &'a Xdp,
    sender: Sender<'a>,
    stack: &'a StackFiles,
    napi: &'a NapiThread,
}

impl Bed<'_> {
    /// Sets `arm` up, measures it (`during` runs through the window), and takes it down.
    /// `offered`: the generator's rate, frames per second; `None`: paced to the receiver's
    /// capacity under `arm`.
    fn run_arm(
        &self,
        gen_obj: &mut Generator,
        scenario: &Scenario,
        arm: Arm,
        offered: Option<f64>,
        during: &mut During,
    ) -> anyhow::Result<Sample> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted; the namespaces and the benchmark's maps were removed");
        }
        self.serial.set(self.serial.get() + 1);
        let filter = Filter::set_up(arm, scenario, self)
            .with_context(|| format!("setting up {} for ({})", arm.name(), scenario.id))?;
        let sample = measure(self, scenario, &filter, gen_obj, offered, during);
        // Back to the bare XDP_PASS and the rules removed, also when the measurement failed.
        let teardown = filter.tear_down(self.link, self.bare_pass, self.receiver_ns);
        let sample = sample
            .with_context(|| format!("measuring {} in scenario ({})", arm.name(), scenario.id))?;
        teardown?;
        Ok(sample)
    }

    /// The rate every arm of `scenario` is offered: `PACE_HEADROOM` × the capacity of the
    /// receiver without a filter, measured under the scenario's traffic and batches, the
    /// generator paced to that receiver as in [`Load::OwnCapacity`] (the median of
    /// `CALIBRATION_RUNS` runs).
    fn calibrate(&self, gen_obj: &mut Generator, scenario: &Scenario) -> anyhow::Result<SameLoad> {
        let mut ns = Vec::new();
        for _ in 0..CALIBRATION_RUNS {
            let sample =
                self.run_arm(gen_obj, scenario, Arm::NoFilter, None, &mut |_, pacer| {
                    pacer.run_for(self.plan.window)
                })?;
            ns.push(sample.ns_per_packet);
        }
        let ns_per_packet = spread(ns);
        let offered_pps = PACE_HEADROOM * 1e9 / ns_per_packet.0;
        println!(
            "  every arm offered {:.2} Mpps: {PACE_HEADROOM} × the no-filter receiver's capacity \
             ({:.0} ns/packet, median of {CALIBRATION_RUNS} runs)",
            offered_pps / 1e6,
            ns_per_packet.0
        );
        Ok(SameLoad {
            ns_per_packet,
            runs: CALIBRATION_RUNS,
            offered_pps,
        })
    }

    /// A profile of the receiver's CPU (perf, `cpu-clock` samples) under `arm`: the symbols
    /// with the largest shares.
    fn profile(
        &self,
        gen_obj: &mut Generator,
        scenario: &Scenario,
        arm: Arm,
    ) -> anyhow::Result<Profile> {
        let data = std::env::temp_dir().join(format!(
            "limiter-bench-{}-{:?}.perf",
            std::process::id(),
            arm
        ));
        let secs = self.plan.profile.as_secs_f64();
        let sample = self.run_arm(gen_obj, scenario, arm, None, &mut |_, pacer| {
            let perf = Command::new("perf")
                .args(["record", "-q", "-e", "cpu-clock", "-F", "4999", "-C"])
                .arg(RECEIVER_CPU.to_string())
                .arg("-o")
                .arg(&data)
                .args(["--", "sleep", &format!("{secs:.1}")])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("running perf record (Debian package linux-perf)")?;
            pacer.run_for(self.plan.profile)?;
            let out = perf.wait_with_output()?;
            ensure!(
                out.status.success(),
                "perf record failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(())
        })?;
        let out = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args([
                "--stdio",
                "--no-children",
                "--sort",
                "sym",
                "-q",
                "--percent-limit",
                "1.5",
            ])
            .output()
            .context("running perf report")?;
        let _ = std::fs::remove_file(&data);
        ensure!(
            out.status.success(),
            "perf report failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let symbols = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let (share, rest) = line.trim().split_once('%')?;
                let symbol = rest.trim().trim_start_matches("[k]").trim();
                Some((share.trim().parse().ok()?, symbol.to_owned()))
            })
            .collect();
        Ok(Profile {
            arm,
            symbols,
            ns_per_packet: sample.ns_per_packet,
        })
    }

    /// The limiter program's own time per run on the receiver (the kernel's run-time
    /// statistics, `BPF_ENABLE_STATS`, on for this run only: they add two clock reads per run).
    fn limiter_program_time(
        &self,
        gen_obj: &mut Generator,
        scenario: &Scenario,
    ) -> anyhow::Result<Option<(f64, f64)>> {
        let mut result = None;
        let window = self.plan.window;
        let sample = self.run_arm(
            gen_obj,
            scenario,
            Arm::Limiter,
            None,
            &mut |filter, pacer| {
                let Filter::Limiter(limiter) = filter else {
                    return Ok(());
                };
                let _stats =
                    aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
                let program = limiter.program()?;
                let before = program.info()?;
                pacer.run_for(window)?;
                let after = program.info()?;
                let runs = after.run_count() - before.run_count();
                let ns = (after.run_time() - before.run_time()).as_nanos() as f64;
                result = Some(ns / runs.max(1) as f64);
                Ok(())
            },
        )?;
        Ok(result.map(|prog| (prog, sample.ns_per_packet)))
    }
}

/// Where the receiver's CPU went under one arm.
pub(crate) struct Profile {
    arm: Arm,
    /// Share in percent, symbol.
    symbols: Vec<(f64, String)>,
    ns_per_packet: f64,
}

struct Sender<'a> {
    ns: &'a Netns,
    ifindex: u32,
}

/// An arm, set up on the receiver.
enum Filter {
    BareDrop,
    ReadDrop,
    Limiter(Box<FloodLimiter>),
    Nftables,
    Iptables,
    PassAll,
}

const NFT_TABLE: &str = "lflood";

impl Filter {
    fn set_up(arm: Arm, scenario: &Scenario, env: &Bed) -> anyhow::Result<Filter> {
        // Nothing left over by an earlier arm: no table, no rule.
        let leftover = ns_command(env.receiver_ns, &["nft", "list", "ruleset"], None)?;
        ensure!(
            leftover.trim().is_empty(),
            "the receiver's namespace still has netfilter rules:\n{leftover}"
        );
        Ok(match arm {
            Arm::BareDrop => {
                env.link.replace(env.bare_drop)?;
                Filter::BareDrop
            }
            Arm::ReadDrop => {
                env.link.replace(env.read_drop)?;
                Filter::ReadDrop
            }
            Arm::Limiter | Arm::LimiterNewKeys => {
                let limiter = FloodLimiter::load(
                    &env.objects.join("limiter"),
                    env.bpffs,
                    env.serial.get(),
                    scenario,
                    (arm == Arm::LimiterNewKeys).then_some(NEW_KEYS_PER_SEC),
                )?;
                env.link.replace(limiter.program()?)?;
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
                    scenario.capacity, env.receiver_if, scenario.rate, scenario.burst
                );
                ns_command(env.receiver_ns, &["nft", "-f", "-"], Some(&ruleset))?;
                Filter::Nftables
            }
            Arm::Iptables => {
                let rate = format!("{}/sec", scenario.rate);
                let burst = scenario.burst.to_string();
                let max = scenario.capacity.to_string();
                let buckets = scenario.capacity.min(65_536).to_string();
                // A name of its own each time: a table of the same name still being destroyed
                // would be taken over, state and all.
                let name = format!("lf{}", env.serial.get());
                ns_command(
                    env.receiver_ns,
                    &[
                        "iptables",
                        "-t",
                        "raw",
                        "-A",
                        "PREROUTING",
                        "-i",
                        env.receiver_if,
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
    fn limits(&self) -> bool {
        matches!(
            self,
            Filter::Limiter(_) | Filter::Nftables | Filter::Iptables
        )
    }

    fn tear_down(self, link: &XdpLink, bare_pass: &Xdp, ns: &Netns) -> anyhow::Result<()> {
        link.replace(bare_pass)?;
        match self {
            Filter::Nftables | Filter::Iptables => {
                // iptables here is iptables-nft: its raw table is an nftables table too.
                ns_command(ns, &["nft", "flush", "ruleset"], None)?;
            }
            Filter::Limiter(limiter) => drop(limiter),
            Filter::BareDrop | Filter::ReadDrop | Filter::PassAll => {}
        }
        Ok(())
    }
}

/// Counters read at one moment.
struct Reading {
    at: Instant,
    stack: StackCounters,
    napi: Schedstat,
    gen: Schedstat,
    generated: u64,
    /// Well-behaved frames the generator made (scenario (c); else 0).
    well_sent: u64,
    /// The limiter's own count of the packets it dropped.
    limiter_dropped: u64,
}

fn measure(
    bed: &Bed,
    scenario: &Scenario,
    filter: &Filter,
    gen_obj: &mut Generator,
    offered: Option<f64>,
    during: &mut During,
) -> anyhow::Result<Sample> {
    let Bed {
        plan,
        receiver_ns,
        gen_prog,
        sender,
        stack,
        napi,
        ..
    } = bed;
    let frame = bench::ipv4_udp(FLOOD_BASE);
    let mut config = GenConfig {
        flood_base: u32::from_be_bytes(FLOOD_BASE),
        flood_mask: scenario.sources - 1,
        random: u32::from(scenario.random),
        well: 0,
        well_base: u32::from_be_bytes(WELL_BASE),
        well_mask: WELL_CLIENTS - 1,
        well_every_mask: (1 << WELL_SHIFT) - 1,
        well_every_shift: WELL_SHIFT,
        only_well: 0,
        flood_port: u32::from(FLOOD_PORT),
        well_port: u32::from(WELL_PORT),
        header_sum: header_sum(&frame),
        ..GenConfig::default()
    };
    let receiver = if scenario.well {
        gen_obj.clear_sent()?;
        let receiver = limiter_tests::traffic::Receiver::start(
            receiver_ns,
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        );
        // The clients were there before the flood: a few packets of each first.
        config.well = 1;
        config.only_well = 1;
        gen_obj.configure(config)?;
        generate(
            gen_prog,
            sender,
            &frame,
            Calls {
                batch: BATCH,
                repeat: WELL_CLIENTS * WELL_WARMUP,
                once: true,
            },
            &AtomicBool::new(false),
            &AtomicI32::new(0),
        )?;
        std::thread::sleep(Duration::from_millis(50));
        config.only_well = 0;
        Some(receiver)
    } else {
        None
    };
    gen_obj.configure(config)?;
    let Generator {
        config: config_map,
        state: gen_state,
        sent: gen_sent,
    } = gen_obj;
    // Paced from the start (the pacer raises the rate to the receiver's capacity at its first
    // step): an unpaced start would overflow the ring for that step. At a given rate, that
    // rate from the start.
    config.pace_interval_ns = match offered {
        Some(rate) => fixed_interval(rate),
        None => (1e9 / PACE_START) as u64,
    };
    let calls = match scenario.load {
        Load::OwnCapacity => Calls {
            batch: BATCH,
            repeat: CHUNK,
            once: false,
        },
        Load::SameForAll => Calls {
            batch: BATCH_SAME_LOAD,
            repeat: CHUNK_SAME_LOAD,
            once: false,
        },
    };
    config.pace_slack_ns = config.pace_interval_ns * u64::from(calls.batch);
    config_map.set(0, config, 0)?;
    let mut pacer = Pacer {
        map: config_map,
        config,
        stack,
        napi,
        batch: calls.batch,
        capacity: None,
        last: None,
        fixed: offered.map(|rate| FixedRate {
            rate,
            frames: gen_state,
            last: None,
            owed: 0.0,
        }),
    };

    let stop = AtomicBool::new(false);
    let gen_tid = AtomicI32::new(0);
    // Everything read back to back; the moment is the middle of it.
    let read = || -> anyhow::Result<Reading> {
        let before = Instant::now();
        let napi = Schedstat::read(napi.pid)?;
        let stack = stack.read()?;
        let generated = gen_state.get(&0, 0)?.iter().map(|s| s.frames).sum();
        let well_sent = if scenario.well {
            well_sent(gen_sent)?
        } else {
            0
        };
        let limiter_dropped = match filter {
            Filter::Limiter(limiter) => {
                limiter.counter(Counter::Dropped)? + limiter.counter(Counter::ContentionDrops)?
            }
            _ => 0,
        };
        let gen = Schedstat::read(gen_tid.load(Ordering::Relaxed))?;
        Ok(Reading {
            at: before + (Instant::now() - before) / 2,
            stack,
            napi,
            gen,
            generated,
            well_sent,
            limiter_dropped,
        })
    };
    // The limiters are in their steady state once what they pass is what the sources'
    // sustained rates allow (their bursts spent); the packets passed over the last step tell.
    let steady_passed = (!scenario.well && filter.limits())
        .then_some((scenario.sources as f64 * scenario.rate as f64) * 1.25 + 1000.0);
    // A limiter that creates keys at a bounded rate is in its steady state once it has created
    // as many as its table holds: from then on every key it creates evicts one. Its allowance
    // takes (capacity − burst) / rate seconds to get there.
    let fill = match filter {
        Filter::Limiter(limiter) => limiter.new_keys_per_sec.map(|rate| {
            let secs = (f64::from(scenario.capacity) - rate as f64).max(0.0) / rate as f64;
            (
                limiter,
                plan.max_warmup.max(Duration::from_secs_f64(secs + 1.0)),
            )
        }),
        _ => None,
    };
    let (warmup, start, end, clients_tracked) = std::thread::scope(|s| {
        let generator = s.spawn(|| generate(gen_prog, sender, &frame, calls, &stop, &gen_tid));
        let readings = (|| {
            let began = Instant::now();
            pacer.run_for(plan.warmup)?;
            ensure!(
                gen_tid.load(Ordering::Relaxed) != 0,
                "the generator did not start"
            );
            let mut start = read()?;
            if let Some((limiter, max_warmup)) = fill {
                loop {
                    pacer.run_for(Duration::from_millis(250))?;
                    let full =
                        limiter.counter(Counter::KeysCreated)? >= u64::from(scenario.capacity);
                    if full || began.elapsed() >= max_warmup {
                        break;
                    }
                }
                start = read()?;
            }
            if let Some(steady_passed) = steady_passed {
                loop {
                    pacer.run_for(Duration::from_millis(250))?;
                    let now = read()?;
                    let secs = (now.at - start.at).as_secs_f64();
                    let passed = now.stack.passed() - start.stack.passed();
                    start = now;
                    if passed as f64 / secs <= steady_passed || began.elapsed() >= plan.max_warmup {
                        break;
                    }
                }
            }
            let warmup = start.at - began;
            during(filter, &mut pacer)?;
            let end = read()?;
            let tracked = match filter {
                Filter::Limiter(limiter) if scenario.well => Some(limiter.clients_tracked()?),
                _ => None,
            };
            anyhow::Ok((warmup, start, end, tracked))
        })();
        stop_generator(&stop, &gen_tid, &generator);
        let generated = generator
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
        let (warmup, start, end, tracked) = readings?;
        generated?;
        anyhow::Ok((warmup, start, end, tracked))
    })?;
    ensure!(
        end.generated > start.generated,
        "the generator sent nothing"
    );

    let secs = (end.at - start.at).as_secs_f64();
    let processed = end.stack.rx_packets - start.stack.rx_packets;
    let passed = (end.stack.passed() - start.stack.passed()).min(processed);
    let napi_ns = end.napi.run_ns - start.napi.run_ns;
    let mut sample = Sample {
        warmup_secs: warmup.as_secs_f64(),
        offered_pps: (end.generated - start.generated) as f64 / secs,
        processed_pps: processed as f64 / secs,
        busy: napi_ns as f64 / 1e9 / secs,
        ns_per_packet: napi_ns as f64 / processed.max(1) as f64,
        napi_wait: (end.napi.wait_ns - start.napi.wait_ns) as f64 / 1e9 / secs,
        gen_busy: (end.gen.run_ns - start.gen.run_ns) as f64 / 1e9 / secs,
        gen_wait: (end.gen.wait_ns - start.gen.wait_ns) as f64 / 1e9 / secs,
        passed_pps: passed as f64 / secs,
        dropped_pps: (processed - passed) as f64 / secs,
        ring_full_pps: (end.stack.rx_dropped - start.stack.rx_dropped) as f64 / secs,
        bad_headers: end.stack.bad_headers - start.stack.bad_headers,
        clients_tracked,
        ..Sample::default()
    };
    if let Filter::Limiter(limiter) = filter {
        sample.keys_created = limiter.counter(Counter::KeysCreated)?;
        sample.keys_secs = limiter.configured_at.elapsed().as_secs_f64();
        sample.new_keys_refused = limiter.counter(Counter::NewKeysRefused)?;
        sample.insert_failed = limiter.counter(Counter::InsertFailed)?;
        sample.limiter_dropped_pps = (end.limiter_dropped - start.limiter_dropped) as f64 / secs;
    }
    if let Some(receiver) = receiver {
        // Over the window: what the generator made, and what UDP delivered to a socket (the
        // receiver's, the only one: flood packets go to a port where none listens).
        sample.well_sent = end.well_sent - start.well_sent;
        sample.well_received = end.stack.udp_delivered - start.stack.udp_delivered;
        // Over the whole run, per client. `finish` waits for the socket's queue to drain.
        let counts: HashMap<IpAddr, u64> = receiver.finish();
        sample.well_sent_run = well_sent(gen_sent)?;
        sample.well_received_run = (0..WELL_CLIENTS)
            .map(|i| {
                let [a, b, c, d] = WELL_BASE;
                let addr = Ipv4Addr::new(a, b, c, d.wrapping_add(i as u8));
                counts.get(&IpAddr::V4(addr)).copied().unwrap_or(0)
            })
            .sum();
    }
    Ok(sample)
}

/// Well-behaved frames the generator has made, all clients together.
fn well_sent(sent: &PerCpuArray<MapData, u64>) -> anyhow::Result<u64> {
    (0..WELL_CLIENTS)
        .map(|i| Ok(sent.get(&i, 0)?.iter().sum::<u64>()))
        .sum()
}

/// What runs through a measurement's window (the default: [`Pacer::run_for`] the window).
type During<'a> = dyn FnMut(&Filter, &mut Pacer) -> anyhow::Result<()> + 'a;

/// Keeps the generator just above what the receiver can take, so that the receiver always has
/// frames waiting (the generator is not what limits it) and the veth ring overflows little.
/// Every `PACE_STEP` it estimates the receiver's capacity — packets processed per second of its
/// NAPI thread's CPU time, smoothed — and paces the generator to `PACE_HEADROOM` × that. Above
/// `PACE_CEILING` the generator runs unpaced, flat out. Or, `fixed`, it keeps the generator at
/// a given rate whatever the receiver ([`Load::SameForAll`]).
struct Pacer<'a> {
    map: &'a mut Array<MapData, GenConfig>,
    config: GenConfig,
    stack: &'a StackFiles,
    napi: &'a NapiThread,
    /// Frames per batch of the generator.
    batch: u32,
    fixed: Option<FixedRate<'a>>,
    /// Packets per CPU-second of the receiver, smoothed.
    capacity: Option<f64>,
    /// rx packets and NAPI run time at the last step.
    last: Option<(u64, u64)>,
}

const PACE_STEP: Duration = Duration::from_millis(20);
const PACE_HEADROOM: f64 = 1.1;
/// The rate the generator starts at, until the receiver's capacity is known.
const PACE_START: f64 = 1_000_000.0;
/// Above this rate the generator is not paced at all (paced, it reads the clock for every
/// frame, and tops out at ~7 Mpps here).
const PACE_CEILING: f64 = 6_000_000.0;

impl Pacer<'_> {
    fn run_for(&mut self, duration: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + duration;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep(PACE_STEP.min(end - now));
            self.step()?;
        }
    }

    fn step(&mut self) -> anyhow::Result<()> {
        if let Some(fixed) = &mut self.fixed {
            let interval = fixed.step()?;
            return self.set_interval(interval);
        }
        let rx = self.stack.rx_packets()?;
        let run_ns = Schedstat::read(self.napi.pid)?.run_ns;
        if let Some((rx_before, run_before)) = self.last {
            let processed = rx.saturating_sub(rx_before) as f64;
            let run = run_ns.saturating_sub(run_before) as f64 / 1e9;
            // Steps where the receiver hardly ran say little.
            if run > 0.002 && processed > 1000.0 {
                let now = processed / run;
                self.capacity = Some(self.capacity.map_or(now, |c| 0.5 * c + 0.5 * now));
            }
            let rate = self.capacity.map_or(f64::INFINITY, |c| c * PACE_HEADROOM);
            let interval = if rate >= PACE_CEILING {
                0
            } else {
                (1e9 / rate) as u64
            };
            self.set_interval(interval)?;
        }
        self.last = Some((rx, run_ns));
        Ok(())
    }

    fn set_interval(&mut self, interval: u64) -> anyhow::Result<()> {
        if interval != self.config.pace_interval_ns {
            self.config.pace_interval_ns = interval;
            // A pause of the generator thread is caught up by one batch at most.
            self.config.pace_slack_ns = interval * u64::from(self.batch);
            self.map.set(0, self.config, 0)?;
        }
        Ok(())
    }
}

/// The generator's interval between frames for `rate` frames per second (0: unpaced).
fn fixed_interval(rate: f64) -> u64 {
    if rate >= PACE_CEILING {
        0
    } else {
        (1e9 / rate).round() as u64
    }
}

/// Keeps the generator at `rate` on average. The generator itself keeps one frame per interval
/// while it runs, but loses the time it does not (other work took its CPU; the pacing's slack
/// catches up one batch): every `PACE_STEP` this counts the frames it sent against those due,
/// and paces it faster by what it owes, spread over `CATCH_UP` (or slower when it is ahead).
struct FixedRate<'a> {
    rate: f64,
    frames: &'a PerCpuArray<MapData, GenState>,
    /// When the last step was, and the generator's frames then.
    last: Option<(Instant, u64)>,
    /// Frames due and not sent (negative: sent ahead), within ± `CATCH_UP` of the rate.
    owed: f64,
}

/// How quickly [`FixedRate`] makes up for frames the generator owes.
const CATCH_UP: Duration = Duration::from_millis(100);

impl FixedRate<'_> {
    /// The interval for the generator until the next step.
    fn step(&mut self) -> anyhow::Result<u64> {
        if self.rate >= PACE_CEILING {
            return Ok(0);
        }
        let now = Instant::now();
        let frames: u64 = self.frames.get(&0, 0)?.iter().map(|s| s.frames).sum();
        if let Some((at, before)) = self.last {
            let due = self.rate * (now - at).as_secs_f64();
            let bound = self.rate * CATCH_UP.as_secs_f64();
            self.owed =
                (self.owed + due - frames.saturating_sub(before) as f64).clamp(-bound, bound);
        }
        self.last = Some((now, frames));
        // Paced still at the catch-up's fastest (the generator's paced maximum is above it).
        let rate =
            (self.rate + self.owed / CATCH_UP.as_secs_f64()).clamp(self.rate / 2.0, PACE_CEILING);
        Ok((1e9 / rate).round() as u64)
    }
}

/// How far the generator's rate may stray from the one it is paced to, as a share of it.
const OFFERED_TOLERANCE: f64 = 0.05;

/// Checks of what arrived, per sample.
/// `offered`: the rate the generator was to keep, if one was given.
fn check_sample(
    checks: &mut Vec<String>,
    scenario: &Scenario,
    arm: Arm,
    offered: Option<f64>,
    sample: &Sample,
) {
    let id = scenario.id;
    if arm == Arm::Limiter && !scenario.well {
        // Every source reached the receiver as itself: the limiter made a key for each (with
        // random sources, for nearly each: a few may not have come up yet).
        let sources = u64::from(scenario.sources);
        let keys = sample.keys_created;
        let fits = if scenario.random {
            keys <= sources && keys * 10 >= sources * 9
        } else {
            keys == sources
        };
        if !fits {
            checks.push(format!(
                "({id}) the limiter created {keys} keys for {sources} sources"
            ));
        }
    }
    if arm.is_limiter() {
        // Its own count of drops agrees with what did not reach UDP.
        let (own, seen) = (sample.limiter_dropped_pps, sample.dropped_pps);
        if (own - seen).abs() > 0.02 * seen.max(own) + 1000.0 {
            checks.push(format!(
                "({id}) {} counted {own:.0} drops/s, the stack saw {seen:.0}/s not arrive",
                arm.name()
            ));
        }
    }
    if arm == Arm::LimiterNewKeys {
        // New keys beyond the allowance were refused, and no more keys were created than it
        // allows: `burst + rate × t`, the burst being the rate.
        if sample.new_keys_refused == 0 {
            checks.push(format!("({id}) {} refused no new key", arm.name()));
        }
        let allowed = NEW_KEYS_PER_SEC as f64 * (sample.keys_secs + 1.0);
        if sample.keys_created as f64 > allowed {
            checks.push(format!(
                "({id}) {} created {} keys in {:.1} s: more than {allowed:.0}",
                arm.name(),
                sample.keys_created,
                sample.keys_secs
            ));
        }
    }
    if let Some(target) = offered {
        // The generator kept the rate it was given.
        if (sample.offered_pps - target).abs() > OFFERED_TOLERANCE * target {
            checks.push(format!(
                "({id}) {}: the generator offered {:.2} Mpps, not the {:.2} Mpps it was paced to",
                arm.name(),
                sample.offered_pps / 1e6,
                target / 1e6
            ));
        }
    }
    if sample.insert_failed > 0 && !scenario.well {
        checks.push(format!(
            "({id}) {} packets found no room for their key",
            sample.insert_failed
        ));
    }
    if sample.bad_headers > 0 {
        checks.push(format!(
            "({id}) {}: IPv4 refused {} packets for bad headers",
            arm.name(),
            sample.bad_headers
        ));
    }
    if sample.well_received_run > sample.well_sent_run {
        checks.push(format!(
            "({id}) {}: more well-behaved packets received ({}) than sent ({})",
            arm.name(),
            sample.well_received_run,
            sample.well_sent_run
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------------------------

/// The generator's maps (its program stays in its `Ebpf`).
struct Generator {
    config: Array<MapData, GenConfig>,
    state: PerCpuArray<MapData, GenState>,
    sent: PerCpuArray<MapData, u64>,
}

fn load_generator(path: &Path) -> anyhow::Result<(Ebpf, Generator)> {
    let mut ebpf = bench::load_plain(path, &["xdp_gen"])?;
    let config = Array::try_from(ebpf.take_map("GEN_CONFIG").context("no GEN_CONFIG")?)?;
    let state = PerCpuArray::try_from(ebpf.take_map("GEN_STATE").context("no GEN_STATE")?)?;
    let sent = PerCpuArray::try_from(ebpf.take_map("GEN_SENT").context("no GEN_SENT")?)?;
    Ok((
        ebpf,
        Generator {
            config,
            state,
            sent,
        },
    ))
}

impl Generator {
    fn configure(&mut self, config: GenConfig) -> anyhow::Result<()> {
        self.config.set(0, config, 0)?;
        Ok(())
    }

    fn clear_sent(&mut self) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        for i in 0..MAX_WELL {
            self.sent
                .set(i, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
        }
        Ok(())
    }
}

/// How the generator runs: frames per batch, and frames per `BPF_PROG_TEST_RUN` call — one
/// call (`once`), or calls until stopped.
#[derive(Clone, Copy)]
struct Calls {
    batch: u32,
    repeat: u32,
    once: bool,
}

/// Runs the generator on CPU 0, in the sender's namespace: one call, or calls until `stop`
/// ([`stop_generator`]). Its thread's id is in `tid` while it runs.
fn generate(
    program: &Xdp,
    sender: &Sender,
    frame: &[u8],
    calls: Calls,
    stop: &AtomicBool,
    tid: &AtomicI32,
) -> anyhow::Result<()> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, frame.len() as u32, 0, sender.ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
    within(sender.ns, || {
        limiter_tests::traffic::pin_to_cpu(GENERATOR_CPU);
        // Ahead of ordinary work on the machine (this thread only).
        // SAFETY: plain system call on this thread.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, -10) };
        // SAFETY: plain system call.
        tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
        let result = (|| loop {
            if !calls.once && stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let result = program.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: calls.repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(calls.batch),
                ..TestRunOptions::new()
            });
            match result {
                Ok(_) => {}
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    return Err(e).context("BPF_PROG_TEST_RUN of the generator (live frames)")
                }
            }
            if calls.once {
                return Ok(());
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
        })();
        tid.store(0, Ordering::Relaxed);
        result
    })?
}

/// The signal that ends a call of the generator early (`BPF_PROG_TEST_RUN` returns `EINTR` when
/// one is pending); its handler does nothing.
const STOP_SIGNAL: libc::c_int = libc::SIGUSR1;

fn install_stop_signal() -> anyhow::Result<()> {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: a handler that does nothing, installed without SA_RESTART.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(STOP_SIGNAL, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("sigaction");
        }
    }
    Ok(())
}

/// Stops the generator running in `thread`: `stop`, and [`STOP_SIGNAL`] to its thread (its id
/// in `tid`) until it is done — again and again, in case one came between two calls.
fn stop_generator<T>(
    stop: &AtomicBool,
    tid: &AtomicI32,
    thread: &std::thread::ScopedJoinHandle<'_, T>,
) {
    stop.store(true, Ordering::Relaxed);
    while !thread.is_finished() {
        let tid = tid.load(Ordering::Relaxed);
        if tid != 0 {
            // SAFETY: plain system call, to a thread of this process.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, STOP_SIGNAL) };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Ones' complement sum of the frame's IPv4 header, source address and checksum left out.
fn header_sum(frame: &[u8]) -> u32 {
    let mut header = frame[14..34].to_vec();
    header[10..12].fill(0);
    header[12..16].fill(0);
    header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum()
}

// ---------------------------------------------------------------------------------------------
// The limiter arm
// ---------------------------------------------------------------------------------------------

/// The `limiter` object loaded as the agent loads it (maps pinned in a directory of its own,
/// removed on drop), `[limits]` = the scenario's rate and burst, `max_keys` = its capacity. No
/// agent process runs: nothing but the XDP program works on the receiver.
///
/// With `new_keys_per_sec` (`[agent] new_keys_per_sec`), keys are created at that rate at most
/// (and as many at once), from a fresh allowance: its map, `NEW_KEYS`, is pinned in the same
/// directory of its own as the buckets.
struct FloodLimiter {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    pin_dir: PathBuf,
    /// When its configuration was written: from then on it may create keys.
    configured_at: Instant,
    new_keys_per_sec: Option<u64>,
}

impl FloodLimiter {
    fn load(
        path: &Path,
        bpffs: &Path,
        serial: u32,
        scenario: &Scenario,
        new_keys_per_sec: Option<u64>,
    ) -> anyhow::Result<Self> {
        let pin_dir = bpffs.join(format!("{PIN_PREFIX}{}-flood{serial}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        // Removed when anything below fails.
        let guard = FloodLimiter::partial(&pin_dir);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(BUCKETS_MAP, scenario.capacity)
            .load_file(path)
            .with_context(|| format!("loading {}", path.display()))?;
        {
            let program: &mut Xdp = ebpf
                .program_mut(LIMITER_PROG)
                .context("the object has no limiter program")?
                .try_into()?;
            program
                .load()
                .map_err(|e| anyhow::anyhow!("loading {LIMITER_PROG} (verifier): {e:#?}"))?;
        }
        ensure!(
            ebpf.map(NEW_KEYS_MAP).is_some(),
            "the limiter object has no {NEW_KEYS_MAP} map"
        );
        let mut config: Array<_, DatapathConfig> =
            Array::try_from(ebpf.map_mut(CONFIG_MAP).context("no CONFIG map")?)?;
        let (flags, new_key_limit) = match new_keys_per_sec {
            Some(rate) => (CONFIG_LIMIT_NEW_KEYS, Limit::new(rate, rate)),
            None => (0, Limit::new(1, 1)),
        };
        let configured_at = Instant::now();
        config.set(
            0,
            DatapathConfig {
                default_limit: Limit::new(scenario.rate, scenario.burst),
                new_key_limit,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                flags,
                valid: 1,
            },
            0,
        )?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map(COUNTERS_MAP).context("no COUNTERS map")?)?;
        std::mem::forget(guard);
        Ok(FloodLimiter {
            ebpf,
            counters,
            pin_dir,
            configured_at,
            new_keys_per_sec,
        })
    }

    /// A guard that removes `dir` on drop (forgotten once loading succeeded).
    fn partial(dir: &Path) -> impl Drop {
        struct Guard(PathBuf);
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        Guard(dir.to_owned())
    }

    fn program(&self) -> anyhow::Result<&Xdp> {
        bench::program(&self.ebpf, LIMITER_PROG)
    }

    /// How many of the well-behaved clients have a key (a lookup from user space does not
    /// mark an entry of an LRU map as used).
    fn clients_tracked(&self) -> anyhow::Result<u32> {
        let map: aya::maps::HashMap<_, BucketKey, BucketState> =
            aya::maps::HashMap::try_from(self.ebpf.map(BUCKETS_MAP).context("no BUCKETS map")?)?;
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

    fn counter(&self, counter: Counter) -> anyhow::Result<u64> {
        Ok(self
            .counters
            .get(&counter_index(0, counter), 0)?
            .iter()
            .fold(0, |sum, v| sum.wrapping_add(*v)))
    }
}

impl Drop for FloodLimiter {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

// ---------------------------------------------------------------------------------------------
// The receiver: its XDP link, its NAPI thread, its counters
// ---------------------------------------------------------------------------------------------

/// An XDP BPF link on the receiving veth whose program is replaced in place between arms.
struct XdpLink {
    fd: OwnedFd,
}

impl XdpLink {
    fn create(ns: &Netns, iface: &str, program: &Xdp) -> anyhow::Result<XdpLink> {
        let prog_fd = program.fd()?.as_fd().as_raw_fd();
        let iface = iface.to_owned();
        within(ns, move || {
            let name = std::ffi::CString::new(iface.clone())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {iface}");
            // union bpf_attr's link_create: prog_fd, target_ifindex, attach_type, flags, and
            // zeroes for the rest.
            let mut attr = [0u32; 16];
            attr[0] = prog_fd as u32;
            attr[1] = ifindex;
            attr[2] = BPF_XDP;
            let fd = bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (XDP)")?;
            // SAFETY: the kernel returned a new file descriptor.
            Ok(XdpLink {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })
        })?
    }

    fn replace(&self, program: &Xdp) -> anyhow::Result<()> {
        let mut attr = [0u32; 16];
        attr[0] = self.fd.as_raw_fd() as u32;
        attr[1] = program.fd()?.as_fd().as_raw_fd() as u32;
        bpf(BPF_LINK_UPDATE, &mut attr).context("BPF_LINK_UPDATE")?;
        Ok(())
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u32; 16]) -> anyhow::Result<i32> {
    // SAFETY: attr is a zero-padded bpf_attr of the size given.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(ret as i32)
}

/// The kernel thread that runs the receiving veth's NAPI poll (threaded NAPI).
struct NapiThread {
    pid: i32,
    comm: String,
}

impl NapiThread {
    /// The thread named `napi/IFACE-ID` (truncated to the 15 characters a name keeps).
    fn find(iface: &str) -> anyhow::Result<NapiThread> {
        let mut prefix = format!("napi/{iface}-");
        prefix.truncate(15);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut found = Vec::new();
            for entry in std::fs::read_dir("/proc")?.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
                    if comm.trim().starts_with(&prefix) {
                        found.push((pid, comm.trim().to_owned()));
                    }
                }
            }
            match found.len() {
                1 => {
                    let (pid, comm) = found.remove(0);
                    return Ok(NapiThread { pid, comm });
                }
                0 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                0 => bail!(
                    "no NAPI thread {prefix}… for the receiving veth: threaded NAPI did not take \
                     effect, so the receiver would run on the generator's CPU"
                ),
                _ => bail!("several NAPI threads match {prefix}: {found:?}"),
            }
        }
    }

    fn pin(&self, cpu: usize) -> anyhow::Result<()> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(self.pid), &set)
            .with_context(|| format!("pinning {} to CPU {cpu}", self.comm))?;
        // SAFETY: plain system call.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, self.pid as u32, -10) };
        Ok(())
    }

    /// The CPU the thread last ran on (field 39 of `/proc/PID/stat`).
    fn last_cpu(&self) -> Option<usize> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let after_comm = &text[text.rfind(')')? + 2..];
        after_comm.split_whitespace().nth(36)?.parse().ok()
    }
}

/// What the scheduler says of a thread (`/proc/TID/schedstat`): the time it ran and the time it
/// waited, runnable, for a CPU, ns.
struct Schedstat {
    run_ns: u64,
    wait_ns: u64,
}

impl Schedstat {
    fn read(tid: i32) -> anyhow::Result<Schedstat> {
        let path = format!("/proc/{tid}/schedstat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mut fields = text.split_whitespace().map(|v| v.parse::<u64>());
        match (fields.next(), fields.next()) {
            (Some(Ok(run_ns)), Some(Ok(wait_ns))) => Ok(Schedstat { run_ns, wait_ns }),
            _ => bail!("{path}: {text}"),
        }
    }
}

/// NET_RX softirqs per CPU (`/proc/softirqs`).
fn net_rx_softirqs() -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/softirqs")?;
    text.lines()
        .find_map(|line| {
            let rest = line.trim_start().strip_prefix("NET_RX:")?;
            Some(
                rest.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect(),
            )
        })
        .context("no NET_RX line in /proc/softirqs")
}

/// rx packets of `iface` in `ns`, read once.
fn rx_packets_once(ns: &Netns, iface: &str) -> anyhow::Result<u64> {
    StackFiles::open(ns, iface)?.rx_packets()
}

/// The receiver's counters: its veth's rx packets, as `ip -s link` shows them (`/proc/net/dev`
/// of the namespace: the driver's `ndo_get_stats64`), and the IPv4/UDP counters of the
/// namespace (`/proc/net/snmp`).
struct StackCounters {
    rx_packets: u64,
    /// Frames that found the veth's ring full (the sender's `ndo_xdp_xmit` could not queue).
    rx_dropped: u64,
    /// Datagrams UDP took: delivered to a socket, to no socket (NoPorts), or refused by a full
    /// socket (InErrors). Every flood packet the filter passes gets to UDP, so this counts them.
    udp: u64,
    /// Datagrams UDP delivered to a socket (InDatagrams).
    udp_delivered: u64,
    /// IPv4 InHdrErrors (bad checksums included) + InAddrErrors.
    bad_headers: u64,
}

impl StackCounters {
    fn passed(&self) -> u64 {
        self.udp
    }
}

/// `/proc/net/dev` and `/proc/net/snmp` of the receiver's namespace, opened once from a thread
/// inside it (a `/proc/net` file stays bound to the namespace it was opened in), so that a
/// reading is two system calls each, from any thread.
struct StackFiles {
    iface: String,
    dev: std::fs::File,
    snmp: std::fs::File,
}

impl StackFiles {
    fn open(ns: &Netns, iface: &str) -> anyhow::Result<StackFiles> {
        let (dev, snmp) = within(ns, || {
            anyhow::Ok((
                std::fs::File::open("/proc/thread-self/net/dev")?,
                std::fs::File::open("/proc/thread-self/net/snmp")?,
            ))
        })??;
        Ok(StackFiles {
            iface: iface.to_owned(),
            dev,
            snmp,
        })
    }

    /// The veth's rx packets alone.
    fn rx_packets(&self) -> anyhow::Result<u64> {
        Ok(self.dev_counters()?.0)
    }

    /// rx packets and rx drops of the veth (the drops: frames that found its ring full).
    fn dev_counters(&self) -> anyhow::Result<(u64, u64)> {
        let dev = read_whole(&self.dev)?;
        dev.lines()
            .find_map(|line| {
                let (name, rest) = line.split_once(':')?;
                if name.trim() != self.iface {
                    return None;
                }
                let fields: Vec<u64> = rest
                    .split_whitespace()
                    .map(|v| v.parse().unwrap_or(0))
                    .collect();
                Some((*fields.get(1)?, *fields.get(3)?))
            })
            .with_context(|| format!("no {} in /proc/net/dev", self.iface))
    }

    fn read(&self) -> anyhow::Result<StackCounters> {
        let (rx_packets, rx_dropped) = self.dev_counters()?;
        let snmp = snmp(&read_whole(&self.snmp)?);
        let get = |name: &str| snmp.get(name).copied().unwrap_or(0);
        Ok(StackCounters {
            rx_packets,
            rx_dropped,
            udp: get("Udp.InDatagrams") + get("Udp.NoPorts") + get("Udp.InErrors"),
            udp_delivered: get("Udp.InDatagrams"),
            bad_headers: get("Ip.InHdrErrors") + get("Ip.InAddrErrors"),
        })
    }
}

/// A `/proc` file read again from its start.
fn read_whole(file: &std::fs::File) -> anyhow::Result<String> {
    use std::io::{Read, Seek};
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// `/proc/net/snmp` as "Proto.Name" → value.
fn snmp(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                out.insert(format!("{proto}.{name}"), value);
            }
        }
    }
    out
}

fn ifindex(ns: &Netns, iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    let index = within(ns, move || {
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    ensure!(index != 0, "no interface {iface}");
    Ok(index)
}

/// Runs `work` on a thread that has entered `ns` (the thread ends with it).
fn within<T: Send>(ns: &Netns, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            Ok(work())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {path} panicked"))?
    })
}

/// `ip netns exec NS ARGS…`, with `stdin` fed to it; its stdout.
fn ns_command(ns: &Netns, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .with_context(|| format!("feeding {}", args.join(" ")))?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{} (in namespace {}) failed: {}{}",
        args.join(" "),
        ns.name,
        String::from_utf8_lossy(&out.stderr).trim(),
        stdin.map_or(String::new(), |s| format!("\ninput:\n{s}"))
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ns_shell(ns: &Netns, script: &str) -> anyhow::Result<()> {
    ns_command(ns, &["sh", "-c", script], None).map(|_| ())
}

fn tool_version(tool: &str, args: &[&str]) -> String {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

// ---------------------------------------------------------------------------------------------
// All parts, and the report
// ---------------------------------------------------------------------------------------------

/// The parts of `cargo xtask bench`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    /// Per-packet program cost (BPF_PROG_TEST_RUN).
    Cost,
    /// Flood throughput on a veth pair, next to nftables and iptables.
    Flood,
    /// Management at scale: 1M keys, next to bpftool.
    Scale,
}

pub(crate) fn run_all(quick: bool, only: Option<Part>) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark loads XDP programs and creates network namespaces: run it as root"
    );
    bench::set_interrupt_handler();
    let started = Instant::now();
    let load_before = bench::loadavg();
    let wants = |part: Part| only.is_none_or(|only| only == part);
    let path = crate::root().join("BENCHMARKS.md");
    if wants(Part::Cost) {
        bench::run(quick)?;
    }
    let mut flood = None;
    if wants(Part::Flood) {
        let plan = Plan::new(quick);
        let result = run(&plan)?;
        if std::env::var_os("LIMITER_BENCH_VERBOSE").is_some() {
            print_samples(&result);
        }
        let machine = bench::Machine::read(load_before.clone());
        let chart = crate::root().join(CHART);
        let chart_note = match draw_chart(&result, &chart) {
            Ok(()) => None,
            Err(e) => Some(format!("The chart could not be drawn: {e:#}.")),
        };
        let section = report(&plan, &machine, &result, chart_note.as_deref());
        println!("\n{section}");
        bench::write_named_section(&path, SECTION, &section)?;
        flood = Some(result);
    }
    let mut scale = None;
    if wants(Part::Scale) {
        let result = crate::bench_scale::run(quick)?;
        let machine = bench::Machine::read(load_before.clone());
        let section = crate::bench_scale::report(quick, &machine, &result);
        println!("\n{section}");
        bench::write_named_section(&path, crate::bench_scale::SECTION, &section)?;
        scale = Some(result);
    }
    if only.is_none() {
        let section = aims(
            quick,
            flood.as_ref(),
            scale.as_ref(),
            started.elapsed().as_secs_f64(),
        );
        println!("\n{section}");
        bench::write_named_section(&path, AIMS_SECTION, &section)?;
    }
    order_sections(
        &path,
        &[
            AIMS_SECTION,
            "## Per-packet program cost",
            SECTION,
            crate::bench_scale::SECTION,
        ],
    )?;
    println!(
        "written to BENCHMARKS.md ({:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Puts the `## ` sections of `path` in the order of `headings` (others after them, as they
/// were), after the text before the first section.
fn order_sections(path: &Path, headings: &[&str]) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut starts: Vec<usize> = text.match_indices("\n## ").map(|(i, _)| i + 1).collect();
    if text.starts_with("## ") {
        starts.insert(0, 0);
    }
    let Some(&first) = starts.first() else {
        return Ok(());
    };
    let mut sections: Vec<&str> = starts
        .iter()
        .zip(starts.iter().skip(1).chain(std::iter::once(&text.len())))
        .map(|(&a, &b)| text[a..b].trim_end())
        .collect();
    sections.sort_by_key(|section| {
        headings
            .iter()
            .position(|h| section.starts_with(h))
            .unwrap_or(headings.len())
    });
    let mut out = text[..first].trim_end().to_owned();
    for section in sections {
        out.push_str("\n\n");
        out.push_str(section);
    }
    out.push('\n');
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// The chart, at the repository's root.
const CHART: &str = "bench-flood.png";
const AIMS_SECTION: &str = "## Where limiter stands";

fn print_samples(result: &FloodResult) {
    for (scenario, scenario_result) in SCENARIOS.iter().zip(&result.scenarios) {
        for (arm, samples) in ALL_ARMS.iter().zip(&scenario_result.samples) {
            for s in samples {
                println!(
                    "({}) {:28} warm {:4.1} offered {:5.2} processed {:5.2} ring-full {:5.2} \
                     Mpps | NAPI busy {:3.0}% wait {:3.0}% {:6.0} ns/p | generator busy {:3.0}% \
                     wait {:3.0}% | passed {:7.0}/s dropped {:8.0}/s (limiter's count {:8.0}) | \
                     well-behaved {}/{} (run {}/{}, {:?} tracked) | keys {} in {:.1} s, new keys \
                     refused {}",
                    scenario.id,
                    arm.name(),
                    s.warmup_secs,
                    s.offered_pps / 1e6,
                    s.processed_pps / 1e6,
                    s.ring_full_pps / 1e6,
                    s.busy * 100.0,
                    s.napi_wait * 100.0,
                    s.ns_per_packet,
                    s.gen_busy * 100.0,
                    s.gen_wait * 100.0,
                    s.passed_pps,
                    s.dropped_pps,
                    s.limiter_dropped_pps,
                    s.well_received,
                    s.well_sent,
                    s.well_received_run,
                    s.well_sent_run,
                    s.clients_tracked,
                    s.keys_created,
                    s.keys_secs,
                    s.new_keys_refused
                );
            }
        }
    }
}

/// Median, min and max of `values`.
fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.into_iter().collect();
    let m = median(&mut values);
    (
        m,
        values.first().copied().unwrap_or(f64::NAN),
        values.last().copied().unwrap_or(f64::NAN),
    )
}

/// One arm of one scenario, summarised over the rounds.
struct ArmSummary {
    arm: Arm,
    /// Processed Mpps: median, min, max.
    mpps: (f64, f64, f64),
    /// Receiver ns per packet: median, min, max.
    ns: (f64, f64, f64),
    /// Per-round ratios (median) of the processed rate and of the capacity (1/ns) to bare
    /// XDP_DROP's and to nftables'.
    mpps_vs_bare: f64,
    mpps_vs_nft: f64,
    cap_vs_bare: f64,
    cap_vs_nft: f64,
    busy: f64,
    offered: f64,
    ring_loss: f64,
    passed: f64,
    dropped_share: f64,
    /// Well-behaved packets kept: over all rounds, and per round min–max.
    well: Option<(f64, f64, f64)>,
    warmup: f64,
    /// The limiter in (c): well-behaved clients with a key at the end of the window, median
    /// and min–max over the rounds.
    tracked: Option<(f64, f64, f64)>,
    /// The limiter: keys created over the whole run, and that run's seconds (medians).
    keys: f64,
    keys_secs: f64,
}

fn summarize(scenario: &Scenario, result: &ScenarioResult) -> Vec<ArmSummary> {
    let samples = |arm: Arm| &result.samples[arm.index()];
    let ratio = |arm: Arm, of: Arm, f: &dyn Fn(&Sample) -> f64| {
        let mut r: Vec<f64> = samples(arm)
            .iter()
            .zip(samples(of))
            .map(|(a, b)| f(a) / f(b))
            .collect();
        median(&mut r)
    };
    let mpps = |s: &Sample| s.processed_pps;
    let cap = |s: &Sample| 1.0 / s.ns_per_packet;
    scenario
        .arms
        .iter()
        .map(|&arm| {
            let ss = samples(arm);
            let well = scenario.well.then(|| {
                let sent: u64 = ss.iter().map(|s| s.well_sent).sum();
                let received: u64 = ss.iter().map(|s| s.well_received).sum();
                let (_, min, max) = spread(
                    ss.iter()
                        .map(|s| s.well_received as f64 / s.well_sent.max(1) as f64),
                );
                (received as f64 / sent.max(1) as f64, min, max)
            });
            ArmSummary {
                arm,
                mpps: spread(ss.iter().map(|s| s.processed_pps / 1e6)),
                ns: spread(ss.iter().map(|s| s.ns_per_packet)),
                mpps_vs_bare: ratio(arm, Arm::BareDrop, &mpps),
                mpps_vs_nft: ratio(arm, Arm::Nftables, &mpps),
                cap_vs_bare: ratio(arm, Arm::BareDrop, &cap),
                cap_vs_nft: ratio(arm, Arm::Nftables, &cap),
                busy: spread(ss.iter().map(|s| s.busy)).0,
                offered: spread(ss.iter().map(|s| s.offered_pps / 1e6)).0,
                ring_loss: spread(
                    ss.iter()
                        .map(|s| s.ring_full_pps / (s.ring_full_pps + s.processed_pps).max(1.0)),
                )
                .0,
                passed: spread(ss.iter().map(|s| s.passed_pps)).0,
                dropped_share: spread(ss.iter().map(|s| s.dropped_pps / s.processed_pps.max(1.0)))
                    .0,
                well,
                warmup: spread(ss.iter().map(|s| s.warmup_secs)).0,
                tracked: ss
                    .iter()
                    .all(|s| s.clients_tracked.is_some())
                    .then(|| spread(ss.iter().filter_map(|s| s.clients_tracked.map(f64::from)))),
                keys: spread(ss.iter().map(|s| s.keys_created as f64)).0,
                keys_secs: spread(ss.iter().map(|s| s.keys_secs)).0,
            }
        })
        .collect()
}

fn rate_text(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2} M", pps / 1e6)
    } else if pps >= 1e3 {
        format!("{:.0} k", pps / 1e3)
    } else {
        format!("{pps:.0}")
    }
}

fn report(
    plan: &Plan,
    machine: &bench::Machine,
    result: &FloodResult,
    chart_note: Option<&str>,
) -> String {
    let mut out = String::new();
    let command = bench::command(plan.quick);
    let _ = writeln!(out, "{SECTION}\n");
    let _ = writeln!(
        out,
        "`{command}` — {}, {:.0} s for this part. Machine: {} CPUs, {}; kernel {}; {}; {}; load \
         average {} before, {} after (other work was running on the machine).\n",
        machine.date,
        result.secs,
        machine.nproc,
        machine.cpu,
        machine.kernel,
        result.iptables_version,
        result.nft_version,
        machine.load_before,
        machine.load_after,
    );
    if plan.quick {
        let _ = writeln!(
            out,
            "**Quick run**: {} rounds of {:.1} s windows; run `cargo xtask bench` for the full \
             numbers.\n",
            plan.rounds,
            plan.window.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "![flood throughput]({CHART})\n\n\
         **Test bed.** Two network namespaces joined by a veth pair; 64-byte UDP frames to the \
         receiver, from 198.19.0.0/16 (the flood) and 198.18.0.10–25 (the well-behaved clients \
         of (c)). The sender is the project's generator (`limiter-ebpf/src/bin/xdp_gen.rs`): an \
         XDP program run with `BPF_PROG_TEST_RUN` live frames on CPU {GENERATOR_CPU}, writing \
         each frame's source (and IPv4 checksum) and returning `XDP_TX`, so frames reach the \
         receiver as XDP frames, as from a NIC. The receiving veth's NAPI poll runs in a thread \
         of its own (threaded NAPI) pinned to CPU {RECEIVER_CPU}: all the receiver's work — XDP \
         program, skb, netfilter, IPv4, UDP — happens in that thread, and its CPU time \
         (`/proc/PID/schedstat`) divided by the packets it processed (the veth's rx packets, as \
         `ip -s link` counts them) is the **receiver's cost per packet**; 1000 / that is its \
         **capacity** in Mpps on one CPU. This measure is not disturbed when other work takes \
         the CPUs for a while; Mpps processed is, and is given too. In (a) and (b) the generator \
         is paced to ~1.1 × the receiver's measured capacity (or runs flat out, ≈ 10 Mpps, when \
         that is more; in (c) every arm is offered the same rate, below), so the receiver always has frames waiting while the veth's 256-frame ring \
         overflows little: on a veth, overflowing frames go back to the generator's page pool \
         from CPU {GENERATOR_CPU} while the receiver returns its frames there from CPU \
         {RECEIVER_CPU}, and the lock contention that follows (up to 75% of the receiver's \
         time in a profile of an unpaced run) is an artifact of the test bed — a NIC drops \
         what its ring cannot hold at no cost to the host.\n"
    );
    let _ = writeln!(
        out,
        "**Arms.** bare `XDP_DROP` (the ceiling: it never reads the packet); in (a) also an \
         `XDP_DROP` that reads the IPv4 source first — the least any filter by source must do; \
         limiter (the XDP program as the agent loads it, `[limits]` as below, no agent \
         process); nftables (a `netdev` table, `ingress` hook on the receiving veth, \
         `update @sources {{ ip saddr limit rate over R/second burst B packets }} drop` on a \
         dynamic set with a timeout of 10 s); iptables `hashlimit` (`-t raw -A PREROUTING -m \
         hashlimit --hashlimit-mode srcip --hashlimit-above R/sec --hashlimit-burst B \
         -j DROP`, expiry 10 s); no filter; in (c) also limiter with `[agent] new_keys_per_sec \
         = {NEW_KEYS_PER_SEC}` (\"{}\"): the first packet of a source it does not track takes \
         one key creation from an allowance of {NEW_KEYS_PER_SEC} a second (and \
         {NEW_KEYS_PER_SEC} at once) shared by all sources, or is dropped and no key is created \
         (the allowance is a map of its own, `NEW_KEYS`, fresh in every run like the buckets). \
         The non-XDP arms have a bare `XDP_PASS` on the \
         receiver. Every limiter gets the same rate, burst and table size (limiter's \
         `max_keys`, the set's `size`, `--hashlimit-htable-max`). Passed packets go up to UDP \
         (port {FLOOD_PORT}, nothing listening: dropped by UDP, no reply — the sources have no \
         route back); \"passed\" counts them in the namespace's UDP counters, \"dropped\" is \
         what the receiver processed less that. {} rounds; in each every arm runs once, in an \
         order rotated every round, each with fresh state: {:.1} s warm-up (stretched up to \
         {:.0} s until a limiter passes no more than its sources' sustained rate, its bursts \
         spent; for the limiter with new keys bounded, until it has created as many keys as its \
         table holds), then a {:.1} s window. Values are medians over the rounds with min–max; \
         ratios are taken per round, then the median.\n",
        Arm::LimiterNewKeys.name(),
        plan.rounds,
        plan.warmup.as_secs_f64(),
        plan.max_warmup.as_secs_f64(),
        plan.window.as_secs_f64()
    );
    if let Some(note) = chart_note {
        let _ = writeln!(out, "{note}\n");
    }
    for (scenario, scenario_result) in SCENARIOS.iter().zip(&result.scenarios) {
        let summaries = summarize(scenario, scenario_result);
        let _ = writeln!(out, "### ({}) {}\n", scenario.id, scenario.title);
        let _ = writeln!(
            out,
            "{} flood sources ({}), rate {}/s and burst {} per source, tables of {} keys.{}\n",
            thousands(scenario.sources),
            if scenario.random {
                "a pseudo-random one per frame"
            } else {
                "in turn"
            },
            scenario.rate,
            scenario.burst,
            thousands(scenario.capacity),
            match scenario.id {
                'b' => " The generator offers each source ~10–100 packets/s here, so the limit \
                         is 1/s for the flood to be far over it."
                    .to_owned(),
                'c' => well_text(scenario, scenario_result.same_load.as_ref()),
                _ => String::new(),
            }
        );
        let well = scenario.well;
        let _ = writeln!(
            out,
            "| arm | Mpps processed | min–max | × bare | × nftables | receiver ns/packet | \
             min–max | capacity, Mpps/CPU | × bare | × nftables | receiver busy | ring full | \
             passed/s | dropped |{}",
            if well {
                " well-behaved kept | min–max |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | \
             ---: | ---: |{}",
            if well { " ---: | ---: |" } else { "" }
        );
        for a in &summaries {
            let well = match a.well {
                Some((kept, min, max)) => format!(
                    " {:.1}% | {:.1}–{:.1}% |",
                    100.0 * kept,
                    100.0 * min,
                    100.0 * max
                ),
                None if well => " — | — |".to_owned(),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2}–{:.2} | ×{:.2} | ×{:.2} | {:.0} | {:.0}–{:.0} | {:.1} | \
                 ×{:.2} | ×{:.2} | {:.0}% | {:.0}% | {} | {:.0}% |{well}",
                a.arm.name(),
                a.mpps.0,
                a.mpps.1,
                a.mpps.2,
                a.mpps_vs_bare,
                a.mpps_vs_nft,
                a.ns.0,
                a.ns.1,
                a.ns.2,
                1000.0 / a.ns.0,
                a.cap_vs_bare,
                a.cap_vs_nft,
                100.0 * a.busy,
                100.0 * a.ring_loss,
                rate_text(a.passed),
                100.0 * a.dropped_share,
            );
        }
        let _ = writeln!(out);
        let bare = summaries.iter().find(|a| a.arm == Arm::BareDrop);
        let digits = if scenario_result.same_load.is_some() {
            2
        } else {
            1
        };
        let offered: Vec<String> = summaries
            .iter()
            .map(|a| {
                format!(
                    "{} {:.digits$} ({:.1} s)",
                    a.arm.name(),
                    a.offered,
                    a.warmup
                )
            })
            .collect();
        if scenario.well {
            let get = |arm: Arm| summaries.iter().find(|a| a.arm == arm);
            if let (Some(limiter), Some(bounded), Some(nft), Some(ipt)) = (
                get(Arm::Limiter),
                get(Arm::LimiterNewKeys),
                get(Arm::Nftables),
                get(Arm::Iptables),
            ) {
                let tracked = |a: &ArmSummary| {
                    let (m, lo, hi) = a.tracked.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
                    let rounds = if lo == hi {
                        "in every round".to_owned()
                    } else {
                        format!("median over the rounds; {lo:.0}–{hi:.0}")
                    };
                    format!(
                        "at the end of the window {m:.0} of the {WELL_CLIENTS} clients had a key \
                         ({rounds})"
                    )
                };
                let _ = writeln!(
                    out,
                    "What happens: the flood has {}× more sources than the tables hold. \
                     limiter's LRU map evicts a key for every new one, so nearly every flood \
                     packet finds no bucket, gets a new, full one and passes: it dropped {:.0}% \
                     of what it processed and spent {:.0} ns per packet (an insert that evicts, \
                     then the stack) — more than no filter at all. The clients' keys go with \
                     the rest: {}. Their packets pass on new buckets, when they get past the \
                     ring. With \
                     `new_keys_per_sec = {NEW_KEYS_PER_SEC}` the limiter creates at most \
                     {NEW_KEYS_PER_SEC} keys a second for all sources together: the clients, \
                     tracked before the flood, find their buckets; a flood packet from a source \
                     without a key takes a creation when one is left and is otherwise refused \
                     — a lookup that misses and a read of the allowance, then `XDP_DROP`: no \
                     insert, no eviction. It dropped {:.0}% of what it processed at {:.0} ns per \
                     packet. Its table still fills, with the flood sources that won a creation \
                     and then pass, under their limit ({} packets/s passed; its warm-up ran \
                     until the table was full, {:.1} s), and from then on every key created \
                     evicts one ({:.0} created in {:.1} s, the table holds {}); {}. A client \
                     whose key is evicted is refused \
                     like the flood until one of its packets finds a creation left. nftables' \
                     full set refuses the `update`, the rule does not match and the packet is \
                     accepted ({:.0}% dropped). hashlimit drops packets of sources it has no \
                     room for ({:.0}% dropped): the established clients keep their entries. \
                     Well-behaved packets are lost at the ring where the receiver cannot keep \
                     up with the load (and a little where it can: a batch that finds the ring \
                     still full) and, for hashlimit, when a client's entry is gone.\n",
                    scenario.sources / scenario.capacity,
                    100.0 * limiter.dropped_share,
                    limiter.ns.0,
                    tracked(limiter),
                    100.0 * bounded.dropped_share,
                    bounded.ns.0,
                    rate_text(bounded.passed),
                    bounded.warmup,
                    bounded.keys,
                    bounded.keys_secs,
                    thousands(scenario.capacity),
                    tracked(bounded),
                    100.0 * nft.dropped_share,
                    100.0 * ipt.dropped_share,
                );
            }
        }
        let note = match (&scenario_result.same_load, bare) {
            (Some(load), _) => {
                format!("Every arm was paced to {:.2} Mpps.", load.offered_pps / 1e6)
            }
            (None, Some(b)) => format!(
                "The bare `XDP_DROP` receiver was busy {:.0}% of its CPU: the generator, not the \
                 receiver, sets its Mpps, so its capacity column is the ceiling to compare with.",
                100.0 * b.busy
            ),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "Offered by the generator, Mpps (and warm-up), medians: {}. {note}\n",
            offered.join(", "),
        );
    }
    // Profiles.
    let _ = writeln!(
        out,
        "### Where the receiver's CPU goes\n\n\
         `perf record -e cpu-clock -C {RECEIVER_CPU}` for {:.1} s in scenario (a), one run per \
         arm (symbols with 1.5% or more; ns = share × that run's ns/packet).\n",
        plan.profile.as_secs_f64()
    );
    for profile in &result.profiles {
        let top: Vec<String> = profile
            .symbols
            .iter()
            .map(|(share, symbol)| {
                let symbol = if symbol.starts_with("bpf_prog_") {
                    format!("{symbol} (the XDP program)")
                } else {
                    symbol.clone()
                };
                format!(
                    "`{symbol}` {share:.1}% ({:.0} ns)",
                    share / 100.0 * profile.ns_per_packet
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- **{}** ({:.0} ns/packet): {}.",
            profile.arm.name(),
            profile.ns_per_packet,
            top.join(", ")
        );
    }
    if let Some((prog, total)) = result.limiter_prog_ns {
        let _ = writeln!(
            out,
            "\nThe limiter program's own time per run on the receiver (the kernel's run-time \
             statistics, `BPF_ENABLE_STATS`, on for one extra run of (a): they add two clock \
             reads per run, ~40 ns here): {prog:.0} ns of the {total:.0} ns the receiver spent \
             per packet in that run. Under `BPF_PROG_TEST_RUN` (the per-packet section above) \
             the same program costs ~45 ns over a bare `XDP_DROP` on a hot key: on the \
             receiver its first read of the packet misses the cache (the generator wrote the \
             frame on the other CPU — a NIC's DMA leaves it in memory or the LLC), which the \
             `XDP_DROP` reading the source shows alone."
        );
    }
    let _ = writeln!(out);
    for note in &result.notes {
        let _ = writeln!(out, "{note}");
    }
    if result.checks.is_empty() {
        let _ = writeln!(
            out,
            "\nChecks: what arrived is what was sent — in (a) the limiter made exactly one key \
             per source, in (b) one for nearly every source (random sources: a few may not come \
             up in a short run), its own drop count matches what did not reach UDP within 2%, \
             no insert failed (in (a) and (b)), and IPv4 refused no packet for a bad header or \
             checksum; in (c) the limiter with new keys bounded refused new keys and created no \
             more than its allowance ({NEW_KEYS_PER_SEC} + {NEW_KEYS_PER_SEC}/s), and the \
             generator held the rate it was paced to within 5% for every arm."
        );
    } else {
        let _ = writeln!(out, "\n**Checks failed**:");
        for check in &result.checks {
            let _ = writeln!(out, "- {check}");
        }
    }
    out
}

/// What (c) adds to its scenario's line: the well-behaved clients, and the load every arm got.
fn well_text(scenario: &Scenario, load: Option<&SameLoad>) -> String {
    let per_client = WELL_CLIENTS << WELL_SHIFT;
    let mut text = format!(
        " {WELL_CLIENTS} well-behaved clients (198.18.0.10–25) each send one frame in {} and sent \
         {WELL_WARMUP} packets each before the flood started: they are established clients.",
        thousands(per_client)
    );
    if let Some(load) = load {
        let client_pps = load.offered_pps / f64::from(per_client);
        let _ = write!(
            text,
            " **Every arm is offered the same load**: {:.2} Mpps, {PACE_HEADROOM} × the capacity \
             of the receiver without a filter (a bare `XDP_PASS` and the stack: {:.0} ns/packet, \
             {:.0}–{:.0}, in {} runs under this traffic before the rounds) — a flood that just \
             saturates an unprotected host; each client sends ~{client_pps:.0} packets/s of it, \
             {:.0}% of its limit. A receiver faster than that keeps up and loses little at the \
             veth's ring; a slower one loses there what it cannot take, as a host does at its \
             NIC (on the veth, frames lost at the ring also load the receiver — the page pool's \
             lock, above — so an arm that cannot keep up may show more ns/packet here than when \
             paced to its capacity, as in (a) and (b)). An arm that keeps up is not busy all the \
             time and wakes its thread for fewer frames at a time: its ns/packet here is above \
             its cost at full load (see (a) and (b) for capacities). The generator hands frames \
             to the veth in batches of {BATCH_SAME_LOAD} here ({BATCH} elsewhere: a batch \
             reaches the 256-frame ring at once), and is held at the rate on average: every {} \
             ms it is paced faster by the frames it owes when other work took its CPU, slower \
             when it is ahead.",
            load.offered_pps / 1e6,
            load.ns_per_packet.0,
            load.ns_per_packet.1,
            load.ns_per_packet.2,
            load.runs,
            100.0 * client_pps / scenario.rate as f64,
            PACE_STEP.as_millis(),
        );
    }
    text.push_str(
        " \"kept\" is the share of the clients' packets sent during the window that UDP \
         delivered to their socket on the receiver; it includes what the veth ring lost.",
    );
    text
}

fn thousands(n: u32) -> String {
    bench::thousands(n)
}

// ---------------------------------------------------------------------------------------------
// The chart
// ---------------------------------------------------------------------------------------------

/// The font the chart's text is drawn with (Debian's fonts-dejavu-core; read at run time, so no
/// system font library is needed).
const CHART_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn arm_color(arm: Arm) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match arm {
        Arm::BareDrop => RGBColor(120, 120, 120),
        Arm::ReadDrop => RGBColor(180, 180, 180),
        Arm::Limiter => RGBColor(31, 119, 180),
        Arm::LimiterNewKeys => RGBColor(44, 160, 44),
        Arm::Nftables => RGBColor(255, 127, 14),
        Arm::Iptables => RGBColor(214, 39, 40),
        Arm::NoFilter => RGBColor(148, 103, 189),
    }
}

/// Two panels, one group of bars per scenario: Mpps processed, and the receiver's capacity on one
/// CPU; medians, with min–max whiskers.
fn draw_chart(result: &FloodResult, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = std::fs::read(CHART_FONT)
            .map_err(|e| format!("reading {CHART_FONT} (Debian package fonts-dejavu-core): {e}"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
            .map_err(|_| format!("{CHART_FONT} is not a usable font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)?;

    let summaries: Vec<Vec<ArmSummary>> = SCENARIOS
        .iter()
        .zip(&result.scenarios)
        .map(|(scenario, r)| summarize(scenario, r))
        .collect();
    let root = BitMapBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(50);
    title.draw(&Text::new(
        "Flood throughput: one receiver CPU behind a veth, per arm (median, min–max)",
        (20, 15),
        ("sans-serif", 24).into_font(),
    ))?;
    let (left, right) = body.split_horizontally(700);
    type Metric = fn(&ArmSummary) -> (f64, f64, f64);
    let panels: [(&DrawingArea<_, _>, &str, Metric); 2] = [
        (&left, "Mpps processed", |a| a.mpps),
        (
            &right,
            "receiver capacity, Mpps on one CPU (1000 / ns per packet)",
            |a| (1000.0 / a.ns.0, 1000.0 / a.ns.2, 1000.0 / a.ns.1),
        ),
    ];
    for (area, caption, metric) in panels {
        let top = summaries
            .iter()
            .flatten()
            .map(|a| metric(a).2)
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max)
            * 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..SCENARIOS.len() as f64, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(SCENARIOS.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < SCENARIOS.len() {
                    let s = &SCENARIOS[i];
                    format!(
                        "({}) {} sources, {} keys",
                        s.id,
                        thousands(s.sources),
                        thousands(s.capacity)
                    )
                } else {
                    String::new()
                }
            })
            .y_desc("Mpps")
            .label_style(("sans-serif", 14))
            .draw()?;
        for arm in ALL_ARMS {
            let mut bars = Vec::new();
            let mut whiskers = Vec::new();
            for (g, group) in summaries.iter().enumerate() {
                let Some(pos) = group.iter().position(|a| a.arm == arm) else {
                    continue;
                };
                let width = 0.8 / group.len() as f64;
                let x0 = g as f64 + 0.1 + pos as f64 * width;
                let (m, lo, hi) = metric(&group[pos]);
                bars.push(Rectangle::new(
                    [(x0 + 0.1 * width, 0.0), (x0 + 0.9 * width, m)],
                    arm_color(arm).filled(),
                ));
                let mid = x0 + 0.5 * width;
                whiskers.push(PathElement::new(vec![(mid, lo), (mid, hi)], BLACK));
            }
            if bars.is_empty() {
                continue;
            }
            chart
                .draw_series(bars)?
                .label(arm.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], arm_color(arm).filled())
                });
            chart.draw_series(whiskers)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Against the aims
// ---------------------------------------------------------------------------------------------

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**not met**"
    }
}

/// Where limiter stands against the aims of the issue, from the parts that ran.
fn aims(
    quick: bool,
    flood: Option<&FloodResult>,
    scale: Option<&crate::bench_scale::ScaleResult>,
    secs: f64,
) -> String {
    let mut out = String::new();
    let command = bench::command(quick);
    let _ = writeln!(out, "{AIMS_SECTION}\n");
    let _ = writeln!(
        out,
        "From the run of `{command}` ({secs:.0} s in all) whose sections are below. The claim: \
         limiter throttles floods at nearly the cost of a bare `XDP_DROP`, several times \
         cheaper than the tools a Linux admin already has.\n"
    );
    let _ = writeln!(out, "| aim | measured | |");
    let _ = writeln!(out, "| --- | --- | --- |");
    if let Some(flood) = flood {
        let a = summarize(&SCENARIOS[0], &flood.scenarios[0]);
        let get = |arm: Arm| a.iter().find(|s| s.arm == arm);
        if let (Some(limiter), Some(ipt), Some(read), Some(bare)) = (
            get(Arm::Limiter),
            get(Arm::Iptables),
            get(Arm::ReadDrop),
            get(Arm::BareDrop),
        ) {
            let limiter_vs_ipt = ipt.ns.0 / limiter.ns.0;
            let _ = writeln!(
                out,
                "| (a) limiter ≥ 0.8× bare `XDP_DROP` | ×{:.2} by receiver capacity ({:.0} vs \
                 {:.0} ns/packet), ×{:.2} by Mpps processed; ×{:.2} of an `XDP_DROP` that only \
                 reads the source | {} |",
                limiter.cap_vs_bare,
                limiter.ns.0,
                bare.ns.0,
                limiter.mpps_vs_bare,
                read.ns.0 / limiter.ns.0,
                verdict(limiter.cap_vs_bare >= 0.8)
            );
            let _ = writeln!(
                out,
                "| (a) limiter ≥ 3× nftables and iptables | ×{:.2} nftables, ×{limiter_vs_ipt:.2} \
                 iptables by capacity; ×{:.2} nftables by Mpps | {} |",
                limiter.cap_vs_nft,
                limiter.mpps_vs_nft,
                verdict(limiter.cap_vs_nft >= 3.0 && limiter_vs_ipt >= 3.0)
            );
        }
        let c = summarize(&SCENARIOS[2], &flood.scenarios[2]);
        let get = |arm: Arm| c.iter().find(|s| s.arm == arm);
        if let (Some(limiter), Some(bounded)) = (get(Arm::Limiter), get(Arm::LimiterNewKeys)) {
            let kept = |a: &ArmSummary| a.well.unwrap_or((0.0, 0.0, 0.0));
            let (bounded_kept, bounded_min, bounded_max) = kept(bounded);
            let (limiter_kept, limiter_min, limiter_max) = kept(limiter);
            let others: Vec<String> = c
                .iter()
                .filter(|s| !s.arm.is_limiter() && s.arm != Arm::BareDrop)
                .filter_map(|s| {
                    s.well
                        .map(|(k, _, _)| format!("{} {:.0}%", s.arm.name(), 100.0 * k))
                })
                .collect();
            let offered = flood.scenarios[2].same_load.map_or(String::new(), |load| {
                format!(" {:.2} Mpps,", load.offered_pps / 1e6)
            });
            let _ = writeln!(
                out,
                "| (c) well-behaved clients keep ≥ 99% | with `new_keys_per_sec = \
                 {NEW_KEYS_PER_SEC}`: {:.1}% ({:.1}–{:.1}%); the ring lost {:.1}% of all frames, \
                 it dropped {:.0}% of what it processed. Without (the default): {:.1}% \
                 ({:.1}–{:.1}%); it cannot keep up ({:.0} ns/packet: {:.0}% of all frames lost \
                 at the ring) and passes the flood (it dropped {:.0}%). {}. Every arm offered \
                 the same load,{offered} {PACE_HEADROOM} × what a receiver without a filter \
                 takes | {} with `new_keys_per_sec`; {} without |",
                100.0 * bounded_kept,
                100.0 * bounded_min,
                100.0 * bounded_max,
                100.0 * bounded.ring_loss,
                100.0 * bounded.dropped_share,
                100.0 * limiter_kept,
                100.0 * limiter_min,
                100.0 * limiter_max,
                limiter.ns.0,
                100.0 * limiter.ring_loss,
                100.0 * limiter.dropped_share,
                others.join(", "),
                verdict(bounded_kept >= 0.99),
                verdict(limiter_kept >= 0.99),
            );
        }
    }
    if let Some(scale) = scale {
        if let (Some(list), Some(dump)) = (
            scale.timing("`limiter list --json`"),
            scale.timing("`bpftool map dump"),
        ) {
            let _ = writeln!(
                out,
                "| listing {} keys faster than bpftool dumps them | `limiter list --json` {:.2} \
                 s, `bpftool map dump` {:.2} s | {} |",
                crate::bench::count_label(scale.keys),
                list.median(),
                dump.median(),
                verdict(list.median() < dump.median())
            );
        }
        let per_key = scale.bytes_per_key();
        let _ = writeln!(
            out,
            "| per-key state ≤ 64 bytes | key + value {} bytes; the kernel charges {per_key:.0} \
             bytes per key of the map | {} |",
            scale.key_size + scale.value_size,
            if scale.key_size + scale.value_size <= 64 && per_key <= 64.0 {
                "**met**"
            } else if scale.key_size + scale.value_size <= 64 {
                "**met** for the state itself, **not met** for what the kernel spends"
            } else {
                "**not met**"
            }
        );
    }
    out
}
