//! `cargo xtask bench`: what the XDP program costs per packet, next to a bare `XDP_DROP` measured
//! in the same run, through `BPF_PROG_TEST_RUN` (no interface, no traffic: the packets are handed
//! to the programs by the kernel's test harness and never leave it).
//!
//! Two methods, each with its own bare `XDP_DROP` to compare with:
//!
//! - **repeat R**: one `test_run` runs the program R times on the same packet. The kernel reports
//!   the mean per run rounded down to whole ns, too coarse next to a floor of ~6 ns, so the time
//!   taken is this thread's CPU time over the call, less the call's fixed cost (measured every
//!   round), divided by R; the kernel's figure is reported beside it as a check. Good for every
//!   case where the same packet is the point: the flood of one key (hot key), a hot key among N
//!   resident ones, a non-IP packet, the clocks.
//! - **one packet per run**: a key that is new on every packet cannot be had from one `test_run`
//!   (it repeats one packet), so each packet gets a `test_run` of its own (repeat 1) and the
//!   kernel's time of that one run is taken. That time includes the harness's own overhead (a
//!   clock read, softirq masking, an indirect call), the same for every program, so these arms
//!   are compared with a bare `XDP_DROP` run the same way, packet by packet interleaved with
//!   them.
//!
//! The arms are interleaved: every round runs each of them once (rotating their order), and the
//! report gives the median over the rounds with the min–max, the ratio to the bare `XDP_DROP` and
//! the cost over it (both taken per round, then the median). Speed is reported, never asserted.

use crate::bench_two_cpus::TwoCpuArm;
use anyhow::{bail, ensure, Context};
use aya::maps::{MapData, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use limiter_common::bucket::{Limit, FULL_BUCKET_TAT};
use limiter_common::http::{Answer, KeyHeaders};
use limiter_common::keyhash::KeyHasher;
use limiter_common::maps::{
    counter_index, ApiKeyEntry, BucketKey, BucketState, Counter, DatapathConfig, HttpConfig,
    PlanQuota, ANSWERS_MAP, API_KEYS_MAP, BUCKETS_MAP, CONFIG_HTTP, CONFIG_MAP, COUNTERS_MAP,
    DEFAULT_RULE_ID, FAMILY_IPV4, FAMILY_IPV6, LIMITER_PROG, PERIOD_DAY, PLAN_QUOTAS_MAP,
    QUOTAS_MAP, QUOTA_ANSWERS, TICK_GLOBAL,
};
use limiter_tests::agent::{ensure_bpffs, TEST_BPFFS};
use limiter_tests::frame;
use limiter_tests::netns::{CLIENT_MAC_BYTES, GATEWAY_MAC_BYTES};
use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The limit of every key: the embedded default config's.
const RATE: u64 = 1000;
const BURST: u64 = 2000;
/// `[agent] max_keys` of the embedded default: the bucket map of the limiter with few keys.
const DEFAULT_MAX_KEYS: u32 = 1_000_000;

/// Addresses from the benchmarking ranges 198.18.0.0/15 and 2001:2::/48. The hot key; the
/// destination of every packet; resident IPv4 keys are 198.18.0.0/16; new keys are taken from
/// 198.19.0.0/16; resident IPv6 keys (/128: the limiters run with `ipv6_prefix = 128`, so that a
/// million distinct keys are reachable from the range) are 2001:2::/96.
const HOT_SOURCE: [u8; 4] = [198, 18, 0, 10];
/// The key of CPU 1 where each of two CPUs floods a key of its own.
const SECOND_HOT_SOURCE: [u8; 4] = [198, 18, 0, 11];
const DESTINATION: [u8; 4] = [198, 18, 0, 1];
const RESIDENT_NET: [u8; 2] = [198, 18];
const NEW_KEY_NET: [u8; 2] = [198, 19];
const V6_NET: [u8; 12] = [0x20, 0x01, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0];
const V6_DESTINATION: [u8; 16] = [0x20, 0x01, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The IPv6 hot key: host 10 of the resident IPv6 keys.
const HOT_V6_HOST: u32 = 10;
/// Resident IPv6 keys that the packets never hit, inserted first: the keys the LRU evicts when
/// the new-key arm inserts into the full map. They start at this host number.
const SPARE_V6_FIRST: u32 = 1 << 31;
/// The limiter with few keys also holds these, from 198.18.1.0.
const FEW_KEYS: u32 = 64;
const FEW_KEYS_FIRST: u32 = 256;
/// Sources of one /16.
const PER_NET: u32 = 1 << 16;

/// XDP verdicts.
const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SECTION: &str = "## Per-packet program cost";

/// Indexes of the repeat-R arms.
const BARE: usize = 0;
const KTIME: usize = 1;
const COARSE: usize = 2;
const JIFFIES: usize = 3;
const HOT: usize = 5;
const HOT_AT_100: usize = 6;
const HOT_AT_10: usize = 7;
const HOT_RESIDENT: usize = 8;
const HOT_V6: usize = 9;
/// Indexes of the one-packet-per-run arms (`BARE` too).
const HOT_SINGLE: usize = 1;
const FEW_HIT: usize = 2;
const RESIDENT_HIT: usize = 3;
const RESIDENT_HIT_V6: usize = 4;
const NEW_SPARSE: usize = 5;
const NEW_FULL: usize = 6;
const HTTP_KEYED: usize = 7;
const HTTP_KEYLESS: usize = 8;
const HTTP_429: usize = 9;
const HTTP_KEEP_ALIVE: usize = 10;
const HTTP_QUOTA_KEEP_ALIVE: usize = 11;
const HTTP_OVER_QUOTA: usize = 12;

/// The API keys of the HTTP arms: one at a limit no run reaches, one registered on a plan of
/// 1/s that every run is over.
const TOKEN_WITHIN: &[u8] = b"k-7f3a9c21d4e8b6f0";
const TOKEN_OVER: &[u8] = b"k-over-the-limit-01";
/// A key on a plan with a quota no run uses up (plan slot 1), and one on a plan whose quota
/// every run is over (plan slot 2).
pub(crate) const TOKEN_QUOTA: &[u8] = b"k-quota-2b9e41c07a";
const TOKEN_OVER_QUOTA: &[u8] = b"k-over-its-quota-1";
pub(crate) const HTTP_SECRET: [u64; 2] = [0x5eed_0001, 0x5eed_0002];
const HTTP_PORT: u16 = 8080;

pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes ^C set [`INTERRUPTED`] (once per process; the benchmark's parts check it and clean up).
pub(crate) fn set_interrupt_handler() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))
            .expect("setting the ^C handler");
    });
}

/// How much of everything a run does.
struct Plan {
    quick: bool,
    /// Rounds over all arms.
    rounds: usize,
    /// Runs per `test_run` of the repeat-R arms.
    repeat: u32,
    /// Packets per round of each one-packet-per-run arm.
    singles: usize,
    /// Keys resident in the bucket map of the "resident" limiter.
    resident: u32,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                rounds: 7,
                repeat: 500_000,
                singles: 2_000,
                resident: 100_000,
            }
        } else {
            Plan {
                quick,
                rounds: 21,
                repeat: 2_000_000,
                singles: 3_000,
                resident: 1_000_000,
            }
        }
    }
}

pub fn run(quick: bool) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark loads XDP programs and runs them with BPF_PROG_TEST_RUN: run it as root"
    );
    let plan = Plan::new(quick);
    // The new-key arms draw their sources from one /16, a different one per packet.
    ensure!(plan.rounds * plan.singles <= PER_NET as usize);
    set_interrupt_handler();

    let started = Instant::now();
    let bpffs = Path::new(TEST_BPFFS);
    ensure_bpffs(bpffs);
    remove_stale_pin_dirs(bpffs);
    let objects = object_dir();
    let load_before = loadavg();

    println!(
        "loading the programs ({} keys resident: {})",
        plan.resident,
        if quick {
            "--quick; the full run has 1M"
        } else {
            "1M"
        }
    );
    let bare = load_plain(&objects.join("bare_drop"), &["bare_drop"])?;
    let clocks = load_plain(
        &objects.join("clock_read"),
        &["clock_ktime", "clock_coarse", "clock_jiffies"],
    )?;
    let limiter = objects.join("limiter");
    let sparse = Limiter::load(&limiter, bpffs, "sparse", DEFAULT_MAX_KEYS, cost_config())?;
    // API keys: source limits no run reaches, so every request gets to its key.
    let mut http = Limiter::load(&limiter, bpffs, "http", DEFAULT_MAX_KEYS, http_config())?;
    http.serve_api_keys()?;
    // The hot key under slower limits, where the coarse clock can prove a drop.
    let at_100 = Limiter::load(&limiter, bpffs, "at100", 1024, cost_config_at(100, 200))?;
    let at_10 = Limiter::load(&limiter, bpffs, "at10", 1024, cost_config_at(10, 20))?;
    // Full: as many keys tracked as the map holds, so that a new key evicts one.
    let resident = Limiter::load(&limiter, bpffs, "resident", plan.resident, cost_config())?;
    let spare = spare_keys(&plan);
    let fill_time = resident.fill(plan.resident, spare)?;
    let v6_pool = plan.resident - PER_NET - spare;
    sparse.write_keys(
        (FEW_KEYS_FIRST..FEW_KEYS_FIRST + FEW_KEYS)
            .map(|host| v4_key(in_net(RESIDENT_NET, host)))
            .collect(),
    )?;
    println!(
        "filled {} keys into the resident limiter's bucket map in {:.2} s (BPF_MAP_UPDATE_BATCH)",
        plan.resident,
        fill_time.as_secs_f64()
    );

    let bare_prog = program(&bare, "bare_drop")?;
    let ktime = program(&clocks, "clock_ktime")?;
    let coarse = program(&clocks, "clock_coarse")?;
    let jiffies = program(&clocks, "clock_jiffies")?;
    let hot = ipv4_udp(HOT_SOURCE);
    let hot_v6 = ipv6_udp(in_v6_net(HOT_V6_HOST));
    let arp = arp();
    let resident_label = count_label(plan.resident);
    let v6_pool_what = format!(
        "a random one of {} resident IPv6 keys: hash bucket and entry are cold",
        thousands(v6_pool)
    );

    let steady = [
        Arm::new(
            "bare XDP_DROP",
            "the floor: the harness and an empty program",
            bare_prog,
            XDP_DROP,
        ),
        Arm::new(
            "clock: bpf_ktime_get_ns",
            "CLOCK_MONOTONIC, what the datapath reads",
            ktime,
            XDP_DROP,
        ),
        Arm::new(
            "clock: bpf_ktime_get_coarse_ns",
            "CLOCK_MONOTONIC_COARSE, one step per tick",
            coarse,
            XDP_DROP,
        ),
        Arm::new(
            "clock: bpf_jiffies64",
            "the tick counter",
            jiffies,
            XDP_DROP,
        ),
        Arm::new(
            "limiter, ARP",
            "non-IP: config read and parse only, passed",
            sparse.program()?,
            XDP_PASS,
        ),
        Arm::new(
            "limiter, hot key",
            "one source flooding, past its burst: dropped (at 1000/s: the precise clock)",
            sparse.program()?,
            XDP_DROP,
        ),
        Arm::new(
            "limiter, hot key at 100/s",
            "the same at 100/s: most drops proven on the coarse clock",
            at_100.program()?,
            XDP_DROP,
        ),
        Arm::new(
            "limiter, hot key at 10/s",
            "the same at 10/s",
            at_10.program()?,
            XDP_DROP,
        ),
        Arm::named(
            format!("limiter, hot key, {resident_label} resident"),
            "the same, in a full map of resident keys",
            resident.program()?,
            XDP_DROP,
        ),
        Arm::named(
            format!("limiter, hot key, IPv6, {resident_label} resident"),
            "the same for an IPv6 source (a /128 key)",
            resident.program()?,
            XDP_DROP,
        ),
    ];
    let steady_packets: [&[u8]; 10] = [
        &hot, &hot, &hot, &hot, &arp, &hot, &hot, &hot, &hot, &hot_v6,
    ];

    let single = [
        Arm::new(
            "bare XDP_DROP, 1/run",
            "the floor of this method",
            bare_prog,
            XDP_DROP,
        ),
        Arm::new(
            "limiter, hot key, 1/run",
            "as above, to show what the method adds (refill passes a few)",
            sparse.program()?,
            XDP_DROP,
        ),
        Arm::named(
            format!("limiter, {FEW_KEYS} keys, other key each run"),
            "a random one of a few keys: they stay in the CPU's caches",
            sparse.program()?,
            XDP_PASS,
        ),
        Arm::named(
            format!("limiter, {resident_label} resident, other IPv4 key each run"),
            "a random one of the 65 536 resident IPv4 keys the range can reach",
            resident.program()?,
            XDP_PASS,
        ),
        Arm::named(
            format!("limiter, {resident_label} resident, other IPv6 key each run"),
            v6_pool_what,
            resident.program()?,
            XDP_PASS,
        ),
        Arm::new(
            "limiter, new key each run",
            "first packet of a key: inserted (map with room)",
            sparse.program()?,
            XDP_PASS,
        ),
        Arm::named(
            format!("limiter, new key, {resident_label} resident"),
            "inserted into the full map: the LRU evicts",
            resident.program()?,
            XDP_PASS,
        ),
        Arm::new(
            "limiter, HTTP request with an API key",
            "400 B, key header mid-way: scanned, hashed, charged to its key: passed",
            http.program()?,
            XDP_PASS,
        ),
        Arm::new(
            "limiter, HTTP request without a key",
            "400 B, no key header: scanned to the end of its headers, passed",
            http.program()?,
            XDP_PASS,
        ),
        Arm::new(
            "limiter, HTTP request over its key's limit",
            "the same request, its key exhausted: the frame becomes the 429 (XDP_TX)",
            http.program()?,
            XDP_TX,
        ),
        Arm::new(
            "limiter, HTTP request with an API key, keep-alive",
            "the first arm's request, the next one on the same connection each run",
            http.program()?,
            XDP_PASS,
        ),
        Arm::new(
            "limiter, HTTP request with an API key with a quota, keep-alive",
            "as above, the key's plan with a quota a day (never used up): the quota's count \
             taken too",
            http.program()?,
            XDP_PASS,
        ),
        Arm::new(
            "limiter, HTTP request over its key's quota",
            "a new connection each run, its key's quota used up: the quota's 429 (XDP_TX)",
            http.program()?,
            XDP_TX,
        ),
    ];
    let mut requests = [
        http_request(Some(TOKEN_WITHIN)),
        http_request(None),
        http_request(Some(TOKEN_OVER)),
        http_request(Some(TOKEN_WITHIN)),
        http_request(Some(TOKEN_QUOTA)),
        http_request(Some(TOKEN_OVER_QUOTA)),
    ];
    // The keep-alive arms' connections: ports the other arms' new connections never use (1024
    // to 61 023), and the next request's sequence number on each.
    let mut keep_alive_seq = [1u32, 1u32];
    for (i, arm) in [HTTP_KEEP_ALIVE, HTTP_QUOTA_KEEP_ALIVE]
        .into_iter()
        .enumerate()
    {
        requests[arm - HTTP_KEYED][TCP_SPORT_AT..TCP_SPORT_AT + 2]
            .copy_from_slice(&(65_000 + i as u16).to_be_bytes());
    }
    let mut request_seq = 0u32;

    let mut steady_results: Vec<ArmResult> = steady.iter().map(|_| ArmResult::new()).collect();
    let mut single_results: Vec<ArmResult> = single.iter().map(|_| ArmResult::new()).collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut new_key = 0u32;
    let mut packet = ipv4_udp(HOT_SOURCE);
    let mut packet_v6 = ipv6_udp(in_v6_net(HOT_V6_HOST));

    println!(
        "measuring: {} rounds; per round {} arms × {} runs (repeat) and {} arms × {} packets \
         (one per run)",
        plan.rounds,
        steady.len(),
        plan.repeat,
        single.len(),
        plan.singles
    );
    let mut fixed_costs = Vec::with_capacity(plan.rounds);
    for round in 0..plan.rounds {
        // Repeat-R arms, in an order rotated every round; the fixed cost of a call measured
        // before, among and after them.
        let mut call_cpu = Vec::with_capacity(steady.len());
        let mut fixed = Vec::with_capacity(3);
        for i in 0..steady.len() {
            if i == 0 || i == steady.len() / 2 {
                fixed.push(call_overhead_ns(bare_prog, &hot)?);
            }
            let a = (i + round) % steady.len();
            let cpu_before = thread_cpu_ns();
            let (verdict, ns) = test_run(steady[a].program, steady_packets[a], plan.repeat)?;
            call_cpu.push((a, thread_cpu_ns() - cpu_before, ns, verdict));
        }
        fixed.push(call_overhead_ns(bare_prog, &hot)?);
        let fixed = median(&mut fixed);
        fixed_costs.push(fixed);
        for (a, cpu_ns, kernel_ns, verdict) in call_cpu {
            steady_results[a].add_repeat_round(
                (cpu_ns as f64 - fixed) / f64::from(plan.repeat),
                kernel_ns,
                verdict == steady[a].expected,
            );
        }
        // One-packet-per-run arms, interleaved packet by packet. The hot key has had time to
        // refill since its last flood: empty its bucket first, so that it is the flood case.
        test_run(single[HOT_SINGLE].program, &hot, 2 * BURST as u32)?;
        let mut samples: Vec<Vec<u64>> = single.iter().map(|_| Vec::new()).collect();
        let mut verdicts = vec![(0u64, 0u64); single.len()];
        for n in 0..plan.singles {
            for i in 0..single.len() {
                let a = (i + n) % single.len();
                let source = match a {
                    FEW_HIT => {
                        let host = (rng.next() % u64::from(FEW_KEYS)) as u32;
                        in_net(RESIDENT_NET, FEW_KEYS_FIRST + host)
                    }
                    RESIDENT_HIT => in_net(RESIDENT_NET, (rng.next() % u64::from(PER_NET)) as u32),
                    NEW_SPARSE | NEW_FULL => in_net(NEW_KEY_NET, new_key),
                    _ => HOT_SOURCE,
                };
                let frame = if a == HTTP_KEEP_ALIVE || a == HTTP_QUOTA_KEEP_ALIVE {
                    // The connection's next request: right after the last one.
                    let seq = &mut keep_alive_seq[usize::from(a == HTTP_QUOTA_KEEP_ALIVE)];
                    *seq = seq.wrapping_add(HTTP_REQUEST_LEN);
                    let request = &mut requests[a - HTTP_KEYED];
                    request[TCP_SEQ_AT..TCP_SEQ_AT + 4].copy_from_slice(&seq.to_be_bytes());
                    &*request
                } else if (HTTP_KEYED..=HTTP_429).contains(&a) || a == HTTP_OVER_QUOTA {
                    // A new connection each run: a request repeated on one would be taken for a
                    // retransmission, and one after a 429 for the rest of a dead connection.
                    request_seq = request_seq.wrapping_add(1);
                    let port = 1024 + (request_seq % 60_000) as u16;
                    let request = &mut requests[a - HTTP_KEYED];
                    request[TCP_SPORT_AT..TCP_SPORT_AT + 2].copy_from_slice(&port.to_be_bytes());
                    request[TCP_SEQ_AT..TCP_SEQ_AT + 4]
                        .copy_from_slice(&request_seq.wrapping_mul(7919).to_be_bytes());
                    &*request
                } else if a == RESIDENT_HIT_V6 {
                    let host = (rng.next() % u64::from(v6_pool)) as u32;
                    set_source_v6(&mut packet_v6, in_v6_net(host));
                    &packet_v6
                } else {
                    frame::set_ipv4_source(&mut packet, source);
                    &packet
                };
                let (verdict, ns) = test_run(single[a].program, frame, 1)?;
                samples[a].push(ns);
                verdicts[a].0 += 1;
                verdicts[a].1 += u64::from(verdict == single[a].expected);
            }
            new_key += 1;
        }
        for (a, samples) in samples.into_iter().enumerate() {
            single_results[a].add_samples(samples, verdicts[a]);
        }
        eprint!("\rround {}/{}", round + 1, plan.rounds);
    }
    eprintln!();

    // One key from two CPUs at once, and a key each.
    let second_hot = ipv4_udp(SECOND_HOT_SOURCE);
    let two_cpu_arms = [
        TwoCpuArm {
            name: "bare XDP_DROP",
            program: bare_prog,
            packets: [&hot, &hot],
            alone: "bare XDP_DROP",
        },
        TwoCpuArm {
            name: "limiter, hot key from both CPUs",
            program: sparse.program()?,
            packets: [&hot, &hot],
            alone: "limiter, hot key",
        },
        TwoCpuArm {
            name: "limiter, a hot key per CPU",
            program: sparse.program()?,
            packets: [&hot, &second_hot],
            alone: "limiter, hot key",
        },
        TwoCpuArm {
            name: "limiter, hot key at 100/s from both CPUs",
            program: at_100.program()?,
            packets: [&hot, &hot],
            alone: "limiter, hot key at 100/s",
        },
        TwoCpuArm {
            name: "limiter, a hot key per CPU at 100/s",
            program: at_100.program()?,
            packets: [&hot, &second_hot],
            alone: "limiter, hot key at 100/s",
        },
    ];
    println!("measuring on two CPUs at once: {} rounds", plan.rounds);
    let two_cpus = crate::bench_two_cpus::run(&two_cpu_arms, plan.rounds, plan.repeat)?;

    // Every resident key the resident-hit arm drew must have been a hit, not an insert: the
    // only keys the resident limiter created are the new-key arm's.
    let new_keys = u64::from(new_key);
    let created_sparse = sparse.counter(Counter::KeysCreated)?;
    let created_resident = resident.counter(Counter::KeysCreated)?;
    let insert_failed =
        sparse.counter(Counter::InsertFailed)? + resident.counter(Counter::InsertFailed)?;
    let mut checks = Vec::new();
    if created_resident != new_keys {
        checks.push(format!(
            "the resident limiter created {created_resident} keys, the new-key arm offered \
             {new_keys}: {} resident-key packets missed their key",
            created_resident.saturating_sub(new_keys)
        ));
    }
    // The two hot keys (the second one of the part on two CPUs) and the new keys.
    if created_sparse != new_keys + 2 {
        checks.push(format!(
            "the limiter with few keys created {created_sparse} keys, expected {}",
            new_keys + 2
        ));
    }
    if insert_failed != 0 {
        checks.push(format!("{insert_failed} bucket inserts failed"));
    }
    let runs = |arm: usize| single_results[arm].runs;
    for (counter, want) in [
        (
            Counter::KeyedRequests,
            runs(HTTP_KEYED)
                + runs(HTTP_429)
                + runs(HTTP_KEEP_ALIVE)
                + runs(HTTP_QUOTA_KEEP_ALIVE)
                + runs(HTTP_OVER_QUOTA),
        ),
        (Counter::KeylessRequests, runs(HTTP_KEYLESS)),
        (Counter::Rejected, runs(HTTP_429) + runs(HTTP_OVER_QUOTA)),
        (Counter::OverQuota, runs(HTTP_OVER_QUOTA)),
        (Counter::Retransmits, 0),
        (Counter::AnswersFailed, 0),
    ] {
        let got = http.counter(counter)?;
        if got != want {
            checks.push(format!(
                "the HTTP limiter counted {got} {}, expected {want}",
                counter.name()
            ));
        }
    }
    let mut coarse_shares = Vec::new();
    for (limiter, rate) in [(&sparse, 1000), (&at_100, 100), (&at_10, 10)] {
        let dropped = limiter.counter(Counter::Dropped)?;
        let coarse = limiter.counter(Counter::CoarseDrops)?;
        coarse_shares.push((rate, coarse as f64 / dropped.max(1) as f64));
        if limiter.counter(Counter::CoarseClockLate)? != 0 {
            checks.push(format!(
                "the limiter at {rate}/s found the jiffies late: its fast path paused"
            ));
        }
    }
    for (limiter, rate, keys) in [(&at_100, 100, 2), (&at_10, 10, 1)] {
        let created = limiter.counter(Counter::KeysCreated)?;
        if created != keys {
            checks.push(format!(
                "the limiter at {rate}/s created {created} keys, expected the hot keys alone"
            ));
        }
    }
    let machine = Machine::read(load_before);

    let report = report(
        &plan,
        &machine,
        &steady,
        &steady_results,
        &single,
        &single_results,
        &Notes {
            checks,
            fill_secs: fill_time.as_secs_f64(),
            total_secs: started.elapsed().as_secs_f64(),
            call_overhead_ns: median(&mut fixed_costs),
            spare,
            v6_pool,
            coarse_shares,
            two_cpus: crate::bench_two_cpus::report(&two_cpu_arms, &two_cpus, &|name| {
                steady
                    .iter()
                    .position(|arm| arm.name == name)
                    .map(|i| median(&mut steady_results[i].kernel_rounds.clone()))
            }),
        },
    );
    println!("\n{report}");
    write_section(&crate::root().join("BENCHMARKS.md"), &report)?;
    println!("written to BENCHMARKS.md");
    Ok(())
}

/// One thing measured: a program and the verdict it must give.
struct Arm<'a> {
    name: String,
    what: String,
    program: &'a Xdp,
    expected: u32,
}

impl<'a> Arm<'a> {
    fn new(name: &str, what: &str, program: &'a Xdp, expected: u32) -> Arm<'a> {
        Arm::named(name.to_owned(), what, program, expected)
    }

    fn named(name: String, what: impl Into<String>, program: &'a Xdp, expected: u32) -> Arm<'a> {
        Arm {
            name,
            what: what.into(),
            program,
            expected,
        }
    }
}

/// What an arm measured: one value per round (ns per packet), all samples of the one-per-run
/// arms, and how many runs gave the expected verdict.
struct ArmResult {
    rounds: Vec<f64>,
    /// Repeat-R arms: the kernel's own figure per round (whole ns, rounded down).
    kernel_rounds: Vec<f64>,
    samples: Vec<u64>,
    runs: u64,
    expected_verdicts: u64,
}

impl ArmResult {
    fn new() -> ArmResult {
        ArmResult {
            rounds: Vec::new(),
            kernel_rounds: Vec::new(),
            samples: Vec::new(),
            runs: 0,
            expected_verdicts: 0,
        }
    }

    fn add_repeat_round(&mut self, ns: f64, kernel_ns: u64, expected: bool) {
        self.rounds.push(ns);
        self.kernel_rounds.push(kernel_ns as f64);
        self.runs += 1;
        self.expected_verdicts += u64::from(expected);
    }

    /// A round's value is the median of its samples.
    fn add_samples(&mut self, samples: Vec<u64>, (runs, expected): (u64, u64)) {
        let mut values: Vec<f64> = samples.iter().map(|&ns| ns as f64).collect();
        self.rounds.push(median(&mut values));
        self.samples.extend(samples);
        self.runs += runs;
        self.expected_verdicts += expected;
    }

    fn mean(&self) -> f64 {
        self.samples.iter().sum::<u64>() as f64 / self.samples.len().max(1) as f64
    }
}

/// The summary of one arm against its floor, from per-round values.
struct Summary {
    median: f64,
    min: f64,
    max: f64,
    ratio: f64,
    over: f64,
}

fn summarize(arm: &ArmResult, floor: &ArmResult) -> Summary {
    let mut values = arm.rounds.clone();
    let mut ratios: Vec<f64> = arm
        .rounds
        .iter()
        .zip(&floor.rounds)
        .map(|(a, b)| a / b.max(1.0))
        .collect();
    let mut over: Vec<f64> = arm
        .rounds
        .iter()
        .zip(&floor.rounds)
        .map(|(a, b)| a - b)
        .collect();
    Summary {
        median: median(&mut values),
        min: values.first().copied().unwrap_or(0.0),
        max: values.last().copied().unwrap_or(0.0),
        ratio: median(&mut ratios),
        over: median(&mut over),
    }
}

/// Median of `values`; sorts them.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Median over the rounds of `a - b`, per round.
fn median_difference(a: &ArmResult, b: &ArmResult) -> f64 {
    let mut diff: Vec<f64> = a.rounds.iter().zip(&b.rounds).map(|(x, y)| x - y).collect();
    median(&mut diff)
}

/// CPU time of this thread, ns: it stops while the thread waits for the CPU (other work on the
/// machine), unlike the wall clock.
fn thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("CLOCK_THREAD_CPUTIME_ID");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// The CPU time a `test_run` with repeat > 1 costs besides its runs, ns: for repeat > 1 the kernel
/// installs the program in the XDP dispatcher before the runs and removes it after (its image is
/// rewritten both times), ~0.2 ms of CPU here (and ~20 ms of wall time, mostly waiting).
/// Measured as a call with repeat 2, whose two runs take a few ns.
fn call_overhead_ns(program: &Xdp, packet: &[u8]) -> anyhow::Result<f64> {
    let before = thread_cpu_ns();
    test_run(program, packet, 2)?;
    Ok((thread_cpu_ns() - before) as f64)
}

/// Runs `program` `repeat` times on `packet`; returns the last verdict and the kernel's time per
/// run in nanoseconds (rounded down to whole ns). The kernel stops its clock while it yields the
/// CPU to other tasks within the loop, so time the machine spends elsewhere is mostly left out.
pub(crate) fn test_run(program: &Xdp, packet: &[u8], repeat: u32) -> anyhow::Result<(u32, u64)> {
    loop {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted; the benchmark's maps were removed");
        }
        let result = program.test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::new()
        });
        match result {
            // The kernel reports the average per run (it divides by `repeat` itself).
            Ok(result) => {
                return Ok((
                    result.return_value,
                    u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
                ))
            }
            // A signal arrived during the run: see whether it was ^C, else run again.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e).context("BPF_PROG_TEST_RUN"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The programs
// ---------------------------------------------------------------------------------------------

/// Where limiter-agent's build script leaves the eBPF objects.
pub(crate) fn object_dir() -> PathBuf {
    crate::root().join("target/ebpf/bpfel-unknown-none/release")
}

/// Loads an object without maps and its XDP programs `names`.
pub(crate) fn load_plain(path: &Path, names: &[&str]) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load_file(path).with_context(|| format!("loading {}", path.display()))?;
    for name in names {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("{} has no program {name}", path.display()))?
            .try_into()
            .with_context(|| format!("{name} is not an XDP program"))?;
        program
            .load()
            .map_err(|e| anyhow::anyhow!("loading {name} (verifier): {e:#?}"))?;
    }
    Ok(ebpf)
}

pub(crate) fn program<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a Xdp> {
    let program: &Xdp = ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    Ok(program)
}

/// Prefix of the benchmark's pin directories under the test bpffs: `bench-<pid>-<name>`.
pub(crate) const PIN_PREFIX: &str = "bench-";

/// Removes pin directories of benchmark runs whose process is gone (killed before cleaning up):
/// their maps would otherwise stay in the kernel.
pub(crate) fn remove_stale_pin_dirs(bpffs: &Path) {
    let Ok(entries) = std::fs::read_dir(bpffs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PIN_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The `limiter` object, loaded (not attached) with its maps pinned in a directory of its own,
/// removed on drop, and its configuration written: for the cost benchmark and the flood's
/// limiter arms alike.
pub(crate) struct Limiter {
    pub(crate) ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    pin_dir: PathBuf,
    /// When its configuration was written: from then on it may create keys.
    pub(crate) configured_at: Instant,
}

/// The cost benchmark's configuration: `[limits]` RATE and BURST, IPv6 sources keyed by /128.
fn cost_config() -> DatapathConfig {
    cost_config_at(RATE, BURST)
}

/// [`cost_config`] with another `[limits]`.
fn cost_config_at(rate: u64, burst: u64) -> DatapathConfig {
    DatapathConfig {
        default_limit: Limit::new(rate, burst),
        new_key_limit: Limit::new(1, 1),
        ipv4_prefix: 32,
        ipv6_prefix: 128,
        flags: 0,
        valid: 1,
        http: limiter_common::maps::HttpConfig::OFF,
    }
}

/// The HTTP arms' configuration: source limits no run reaches, `[http]` on HTTP_PORT with
/// keys at a limit no run reaches either (the registered one aside).
pub(crate) fn http_config() -> DatapathConfig {
    let mut http = HttpConfig::OFF;
    http.key_headers =
        KeyHeaders::new(&[b"x-api-key", b"authorization"]).expect("valid key headers");
    http.default_limit = Limit::new(1_000_000_000, 1_000_000_000);
    http.secret = HTTP_SECRET;
    http.ports[0] = HTTP_PORT;
    http.port_count = 1;
    // Plans 1 and 2 have quotas (`serve_api_keys`).
    http.quota_plans = 0b110;
    DatapathConfig {
        default_limit: Limit::new(1_000_000_000, 1_000_000_000),
        flags: CONFIG_HTTP,
        http,
        ..cost_config()
    }
}

/// Where a TCP segment's source port and sequence number are in the frames of
/// [`http_request`].
pub(crate) const TCP_SPORT_AT: usize = 14 + 20;
pub(crate) const TCP_SEQ_AT: usize = 14 + 20 + 4;

/// Bytes of the requests of [`http_request`].
pub(crate) const HTTP_REQUEST_LEN: u32 = 400;

/// A 400-byte request from the test bed's hot source to HTTP_PORT (TCP with timestamps), its
/// key header (`X-API-Key: token`) mid-way, or none.
pub(crate) fn http_request(token: Option<&[u8]>) -> Vec<u8> {
    let mut request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: api.example\r\n\
        User-Agent: bench/1.0\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
        .to_vec();
    request.extend_from_slice(b"X-Request-Id: 5d1c0f3e-8b47-4a8e-9c1d-2f6a0b9e7d35\r\n");
    match token {
        Some(token) => {
            request.extend_from_slice(b"X-API-Key: ");
            request.extend_from_slice(token);
        }
        None => request.extend_from_slice(b"X-Trace: none"),
    }
    request.extend_from_slice(b"\r\nAccept-Encoding: gzip, deflate, br\r\nCookie: session=");
    request.resize(HTTP_REQUEST_LEN as usize - 4, b'c');
    request.extend_from_slice(b"\r\n\r\n");
    let timestamps = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let tcp = frame::Tcp {
        src_port: 40000,
        dst_port: HTTP_PORT,
        seq: 1,
        ack: 1,
        flags: 0x18,
        options: &timestamps,
    }
    .segment(&request);
    let mut ip = frame::Ipv4::udp(HOT_SOURCE, DESTINATION);
    ip.proto = frame::IPPROTO_TCP;
    ip.frag = 0x4000;
    test_bed_frame(frame::ETH_P_IPV4, &ip.packet(&tcp))
}

impl Limiter {
    /// Writes the HTTP arms' 429s, registers TOKEN_OVER at 1/s, burst 1, and the quota arms'
    /// keys: TOKEN_QUOTA on plan 1 (a quota a day no run uses up), TOKEN_OVER_QUOTA on plan 2
    /// (its quota used up for good).
    pub(crate) fn serve_api_keys(&mut self) -> anyhow::Result<()> {
        let mut answers: aya::maps::Array<_, Answer> =
            aya::maps::Array::try_from(self.ebpf.map_mut(ANSWERS_MAP).context("no ANSWERS map")?)?;
        answers.set(0, Answer::render("default", 1, 1, false), 0)?;
        for plan in [1, 2] {
            answers.set(plan, Answer::render("quota", 1, 1, false), 0)?;
            let quota = Answer::render_quota("quota", 1, 86_400, false);
            answers.set(QUOTA_ANSWERS + plan, quota, 0)?;
        }
        let mut quotas: aya::maps::Array<_, PlanQuota> = aya::maps::Array::try_from(
            self.ebpf
                .map_mut(PLAN_QUOTAS_MAP)
                .context("no PLAN_QUOTAS map")?,
        )?;
        for (plan, quota) in [(1, u32::MAX), (2, 1)] {
            let period = PERIOD_DAY;
            quotas.set(plan, PlanQuota { quota, period }, 0)?;
        }
        let hash_of = |token: &[u8]| {
            let mut hasher = KeyHasher::new(HTTP_SECRET[0], HTTP_SECRET[1]);
            hasher.write(token);
            hasher.finish()
        };
        let mut keys: aya::maps::HashMap<_, u64, ApiKeyEntry> = aya::maps::HashMap::try_from(
            self.ebpf.map_mut(API_KEYS_MAP).context("no API_KEYS map")?,
        )?;
        let huge = Limit::new(1_000_000_000, 1_000_000_000);
        for (token, plan) in [(TOKEN_QUOTA, 1), (TOKEN_OVER_QUOTA, 2)] {
            let entry = ApiKeyEntry {
                limit: huge,
                plan,
                _pad: 0,
            };
            keys.insert(hash_of(token), entry, 0)?;
        }
        let entry = ApiKeyEntry {
            limit: Limit::new(1, 1),
            plan: 0,
            _pad: 0,
        };
        let hash = hash_of(TOKEN_OVER);
        keys.insert(hash, entry, 0)?;
        // Used up in a window later than any run's: every request is charged to it, over.
        let mut counts: aya::maps::HashMap<_, u64, u64> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut(QUOTAS_MAP).context("no QUOTAS map")?)?;
        let used_up = limiter_common::quota::Usage {
            tag: limiter_common::quota::tag(PERIOD_DAY, u64::MAX),
            used: u32::MAX,
        };
        counts.insert(hash_of(TOKEN_OVER_QUOTA), used_up.word(), 0)?;
        // Exhausted for the whole run: a TAT far ahead.
        let over = BucketState {
            tat_ns: u64::MAX / 2,
            ..BucketState::default()
        };
        self.write_bucket(limiter_common::charge::api_key(hash), over)
    }

    fn write_bucket(&self, key: BucketKey, state: BucketState) -> anyhow::Result<()> {
        let map = MapData::from_pin(self.pin_dir.join(BUCKETS_MAP))?;
        update_batch(map.fd().as_fd().as_raw_fd(), &[key], &[state])
            .with_context(|| format!("writing {BUCKETS_MAP}"))
    }

    /// Loads the object at `path` with a bucket map of `max_keys` entries, its maps pinned in
    /// `bpffs` under a directory named after `name`, and writes `config`.
    pub(crate) fn load(
        path: &Path,
        bpffs: &Path,
        name: &str,
        max_keys: u32,
        config: DatapathConfig,
    ) -> anyhow::Result<Limiter> {
        let pin_dir = bpffs.join(format!("{PIN_PREFIX}{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        std::fs::create_dir_all(&pin_dir)
            .with_context(|| format!("creating {}", pin_dir.display()))?;
        let guard = PinDirGuard(Some(pin_dir.clone()));
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(BUCKETS_MAP, max_keys)
            // What the agent sets: the timer tick, for the coarse-clock fast path.
            .override_global(TICK_GLOBAL, &limiter_common::sys::tick_ns(), true)
            .load_file(path)
            .with_context(|| format!("loading {}", path.display()))?;
        {
            let program: &mut Xdp = ebpf
                .program_mut(LIMITER_PROG)
                .context("the object has no limiter program")?
                .try_into()?;
            program.load().map_err(|e| {
                anyhow::anyhow!(
                    "loading the {LIMITER_PROG} program (verifier; when limiter-ebpf is being \
                     changed, retry in a few minutes): {e:#?}"
                )
            })?;
        }
        let mut config_map: aya::maps::Array<_, DatapathConfig> =
            aya::maps::Array::try_from(ebpf.map_mut(CONFIG_MAP).context("no CONFIG map")?)?;
        let configured_at = Instant::now();
        config_map.set(0, config, 0)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map(COUNTERS_MAP).context("no COUNTERS map")?)?;
        guard.disarm();
        Ok(Limiter {
            ebpf,
            counters,
            pin_dir,
            configured_at,
        })
    }

    pub(crate) fn program(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program(LIMITER_PROG)
            .context("no limiter program")?
            .try_into()?)
    }

    /// A global counter (interface slot 0), summed over the CPUs.
    pub(crate) fn counter(&self, counter: Counter) -> anyhow::Result<u64> {
        Ok(self
            .counters
            .get(&counter_index(0, counter), 0)?
            .iter()
            .fold(0, |sum, v| sum.wrapping_add(*v)))
    }

    /// One counter, per CPU.
    pub(crate) fn counter_per_cpu(&self, counter: Counter) -> anyhow::Result<Vec<u64>> {
        Ok(self
            .counters
            .get(&counter_index(0, counter), 0)?
            .iter()
            .copied()
            .collect())
    }

    /// Fills the bucket map with `keys` distinct keys, full buckets, with
    /// `BPF_MAP_UPDATE_BATCH` (64k keys a call): the 65 536 IPv4 sources of 198.18.0.0/16, the
    /// rest IPv6 sources of 2001:2::/96 — `spare` of them never hit by a packet, then the pool
    /// the IPv6 arm draws from, hosts 0, 1, 2, … The benchmarking ranges hold only 131 072 IPv4
    /// keys, so a million reachable keys must be mostly IPv6. The spare keys go in first and the
    /// IPv4 keys last, so that the LRU evicts the spare ones first.
    fn fill(&self, keys: u32, spare: u32) -> anyhow::Result<std::time::Duration> {
        ensure!(keys > PER_NET + spare, "{keys} keys leave no IPv6 pool");
        let pool = keys - PER_NET - spare;
        let start = Instant::now();
        let v6 = (SPARE_V6_FIRST..SPARE_V6_FIRST + spare).chain(0..pool);
        let mut batch = Vec::with_capacity(PER_NET as usize);
        for host in v6 {
            batch.push(v6_key(in_v6_net(host)));
            if batch.len() == PER_NET as usize {
                self.write_keys(std::mem::take(&mut batch))?;
            }
        }
        self.write_keys(batch)?;
        self.write_keys(
            (0..PER_NET)
                .map(|host| v4_key(in_net(RESIDENT_NET, host)))
                .collect(),
        )?;
        Ok(start.elapsed())
    }

    /// Writes `keys` with full buckets in one `BPF_MAP_UPDATE_BATCH`.
    fn write_keys(&self, keys: Vec<BucketKey>) -> anyhow::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let map = MapData::from_pin(self.pin_dir.join(BUCKETS_MAP))?;
        let value = BucketState {
            tat_ns: FULL_BUCKET_TAT,
            ..BucketState::default()
        };
        let values = vec![value; keys.len()];
        update_batch(map.fd().as_fd().as_raw_fd(), &keys, &values)
            .with_context(|| format!("filling {BUCKETS_MAP}"))
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Removes a pin directory unless disarmed (when loading fails half-way).
struct PinDirGuard(Option<PathBuf>);

impl PinDirGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `BPF_MAP_UPDATE_BATCH` of `keys` → `values` (see `limiter_common::batch`).
pub(crate) fn update_batch(
    fd: i32,
    keys: &[BucketKey],
    values: &[BucketState],
) -> anyhow::Result<()> {
    let written =
        limiter_common::batch::update_buckets(fd, keys, values).context("BPF_MAP_UPDATE_BATCH")?;
    ensure!(
        written == keys.len(),
        "the kernel wrote only {written} of {} keys",
        keys.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------------

/// Host `host` (0..65 536) of the /16 `net`.
fn in_net(net: [u8; 2], host: u32) -> [u8; 4] {
    [net[0], net[1], (host >> 8) as u8, host as u8]
}

/// Host `host` of 2001:2::/96.
pub(crate) fn in_v6_net(host: u32) -> [u8; 16] {
    let mut addr = [0; 16];
    addr[..12].copy_from_slice(&V6_NET);
    addr[12..].copy_from_slice(&host.to_be_bytes());
    addr
}

/// The key of an IPv4 source (`ipv4_prefix = 32`, no rule).
pub(crate) fn v4_key(addr: [u8; 4]) -> BucketKey {
    let mut key_addr = [0; 16];
    key_addr[..4].copy_from_slice(&addr);
    BucketKey {
        family: FAMILY_IPV4,
        prefix_len: 32,
        _pad: 0,
        rule_id: DEFAULT_RULE_ID,
        addr: key_addr,
    }
}

/// The key of an IPv6 source (`ipv6_prefix = 128`, no rule).
pub(crate) fn v6_key(addr: [u8; 16]) -> BucketKey {
    BucketKey {
        family: FAMILY_IPV6,
        prefix_len: 128,
        _pad: 0,
        rule_id: DEFAULT_RULE_ID,
        addr,
    }
}

/// How many spare IPv6 keys the resident map gets: one for every key the new-key arm inserts
/// into it (each evicts one), and a margin for the LRU's batches.
fn spare_keys(plan: &Plan) -> u32 {
    (plan.rounds * plan.singles) as u32 + 4096
}

/// 1234567 → "1 234 567".
pub(crate) fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A 64-byte Ethernet frame between the test bed's MACs: IPv4 (don't fragment), UDP to port
/// 9000, from `source`.
pub(crate) fn ipv4_udp(source: [u8; 4]) -> Vec<u8> {
    let payload = [0; 64 - 14 - 20 - 8];
    let ip = frame::Ipv4 {
        frag: 0x4000,
        ..frame::Ipv4::udp(source, DESTINATION)
    }
    .packet(&frame::udp(40000, 9000, &payload));
    test_bed_frame(frame::ETH_P_IPV4, &ip)
}

const IPV6_SOURCE_AT: usize = 14 + 8;

/// A 64-byte Ethernet frame between the test bed's MACs: IPv6, UDP to port 9000, from `source`.
fn ipv6_udp(source: [u8; 16]) -> Vec<u8> {
    let payload = [0; 64 - 14 - 40 - 8];
    // No UDP checksum (the program does not look at it).
    let udp = frame::udp(40000, 9000, &payload);
    let ip = frame::ipv6(source, V6_DESTINATION, frame::IPPROTO_UDP, 64, &udp);
    test_bed_frame(frame::ETH_P_IPV6, &ip)
}

/// An Ethernet frame from the test bed's client to its gateway.
fn test_bed_frame(ether_type: u16, payload: &[u8]) -> Vec<u8> {
    frame::ethernet(GATEWAY_MAC_BYTES, CLIENT_MAC_BYTES, ether_type, payload)
}

fn set_source_v6(frame: &mut [u8], source: [u8; 16]) {
    frame[IPV6_SOURCE_AT..IPV6_SOURCE_AT + 16].copy_from_slice(&source);
}

/// A 60-byte Ethernet frame: an ARP request.
fn arp() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    frame.extend_from_slice(&[0x02, 0x00, 0xc6, 0x12, 0x00, 0x02]);
    frame.extend_from_slice(&HOT_SOURCE);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&DESTINATION);
    frame.resize(60, 0);
    frame
}

/// Reproducible pseudo-random numbers (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// The command that wrote a section, as the report names it.
pub(crate) fn command(quick: bool) -> &'static str {
    if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    }
}

pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) kernel: String,
    pub(crate) clocksource: String,
    bpf_stats: String,
    coarse_resolution_ns: Option<i64>,
    pub(crate) date: String,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

impl Machine {
    /// The line under a part's heading: how it was run, when, on what, how loaded.
    pub(crate) fn header(&self, command: &str, secs: f64) -> String {
        format!(
            "`{command}` — {}, {secs:.0} s for this part. Machine: {} CPUs, {}; kernel {}; load \
             average {} before, {} after.\n",
            self.date, self.nproc, self.cpu, self.kernel, self.load_before, self.load_after,
        )
    }

    pub(crate) fn read(load_before: String) -> Machine {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".into())
        };
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "?".into());
        let coarse_resolution_ns =
            nix::time::clock_getres(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
                .ok()
                .map(|res| res.tv_sec() * 1_000_000_000 + res.tv_nsec());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .unwrap_or_else(|| "?".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu,
            kernel: read("/proc/sys/kernel/osrelease"),
            clocksource: read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
            bpf_stats: read("/proc/sys/kernel/bpf_stats_enabled"),
            coarse_resolution_ns,
            date,
            load_before,
            load_after: loadavg(),
        }
    }
}

/// The 1-minute load average.
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `x`, with what would print as -0.0 printed as 0.0.
fn no_minus_zero(x: f64) -> f64 {
    if x.abs() < 0.05 {
        0.0
    } else {
        x
    }
}

/// 100000 → "100k", 1000000 → "1M".
pub(crate) fn count_label(n: u32) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn verdict_name(verdict: u32) -> &'static str {
    match verdict {
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx (429)",
        _ => "other",
    }
}

/// What the report says besides the tables.
struct Notes {
    /// Checks of the limiters' counters that failed.
    checks: Vec<String>,
    fill_secs: f64,
    total_secs: f64,
    /// CPU time of a repeat > 1 call besides its runs (median over the rounds).
    call_overhead_ns: f64,
    /// IPv6 keys of the resident map never sent to, and those the IPv6 arm picks among.
    spare: u32,
    v6_pool: u32,
    /// Per hot-key rate: the share of its drops proven on the jiffies.
    coarse_shares: Vec<(u64, f64)>,
    /// The part on two CPUs at once, rendered.
    two_cpus: String,
}

fn report(
    plan: &Plan,
    machine: &Machine,
    steady: &[Arm],
    steady_results: &[ArmResult],
    single: &[Arm],
    single_results: &[ArmResult],
    notes: &Notes,
) -> String {
    let Notes {
        checks,
        fill_secs,
        total_secs,
        call_overhead_ns,
        spare,
        v6_pool,
        coarse_shares,
        two_cpus,
    } = notes;
    let mut out = String::new();
    let command = command(plan.quick);
    let resident = count_label(plan.resident);
    let _ = writeln!(out, "{SECTION}\n");
    let _ = writeln!(
        out,
        "`{command}` — {}, {} s in all. Machine: {} CPUs, {}; kernel {}; clocksource {}; \
         `kernel.bpf_stats_enabled` = {}; load average {} before, {} after (other work was \
         running on the machine).\n",
        machine.date,
        total_secs.round(),
        machine.nproc,
        machine.cpu,
        machine.kernel,
        machine.clocksource,
        machine.bpf_stats,
        machine.load_before,
        machine.load_after,
    );
    if plan.quick {
        let _ = writeln!(
            out,
            "**Quick run**: {resident} resident keys instead of 1M, {} rounds, fewer repeats and \
             packets; run `cargo xtask bench` for the full numbers.\n",
            plan.rounds
        );
    }
    let _ = writeln!(
        out,
        "Every program runs under `BPF_PROG_TEST_RUN` on 64-byte frames (UDP from 198.18.0.0/15 \
         or 2001:2::/48; ARP: 60 bytes), loaded but attached nowhere; the limiter has \
         `rate = {RATE}`, `burst = {BURST}`, no rules. {} rounds; in each, every arm runs once, in \
         an order rotated every round. ns/packet is the median over the rounds, with the min–max \
         of the rounds; × bare and + ns are the ratio to and the difference from the bare \
         `XDP_DROP` of the same method, taken per round, median.\n",
        plan.rounds
    );
    let _ = writeln!(
        out,
        "**Same packet, repeat {}**: one `test_run` per round and arm runs the program {} times \
         on one packet. ns/packet is this thread's CPU time over the call, less the call's fixed \
         cost, divided by {}. The fixed cost ({:.0} µs of CPU, median; measured in every round \
         as a call with repeat 2, before, among and after the arms) is mostly the kernel \
         installing the program in the XDP dispatcher for the call and removing it after. CPU \
         time leaves out the time the thread waits while other work on the machine runs, and \
         unlike the kernel's own figure (the mean per run rounded down to whole ns, given \
         alongside as a check) it resolves fractions of a ns, which matter next to a floor of a \
         few ns.\n",
        plan.repeat,
        plan.repeat,
        plan.repeat,
        call_overhead_ns / 1000.0
    );
    let steady_floor = &steady_results[BARE];
    table(&mut out, steady, steady_results, steady_floor, false);
    let _ = writeln!(
        out,
        "\n**One packet per run**: a key new on every packet cannot come from one `test_run` (it \
         repeats its packet), so each packet has a `test_run` of its own (repeat 1) and the \
         kernel's time for that one run is taken: {} packets per arm and round, interleaved \
         packet by packet across the arms; a round's value is the median of its packets. A \
         single run's time includes the harness's own fixed overhead (its clock read, softirq \
         masking, and an indirect call: with repeat 1 the kernel does not install the program \
         in the XDP dispatcher), which the bare `XDP_DROP` run the same way shows; and the \
         caches are colder than in a run of back-to-back packets, as a system call comes \
         between two packets. The mean over all packets is given too, as it carries the work \
         the kernel does in batches (the LRU map refills its per-CPU free list and evicts up to \
         128 entries at a time) and interrupts.\n",
        plan.singles
    );
    let single_floor = &single_results[BARE];
    table(&mut out, single, single_results, single_floor, true);
    let hot_single = &single_results[HOT_SINGLE];
    let over_hot = |arm: usize| {
        (
            median_difference(&single_results[arm], hot_single),
            single_results[arm].mean() - hot_single.mean(),
        )
    };
    let (few, _) = over_hot(FEW_HIT);
    let (cold, cold_mean) = over_hot(RESIDENT_HIT);
    let (cold6, cold6_mean) = over_hot(RESIDENT_HIT_V6);
    let (new, new_mean) = over_hot(NEW_SPARSE);
    let v6_path = median_difference(&steady_results[HOT_V6], &steady_results[HOT_RESIDENT]);
    let (full, full_mean) = over_hot(NEW_FULL);
    let _ = writeln!(
        out,
        "\nOver the hot key run the same way (median / mean): another of a few warm keys \
         {few:+.0} ns; a resident key at random {cold:+.0} / {cold_mean:+.0} ns (IPv4, 65 536 \
         keys) and {cold6:+.0} / {cold6_mean:+.0} ns (IPv6, among the rest of the map; the \
         IPv6 path itself costs {v6_path:+.1} ns over IPv4 on a hot key, first table) — cache \
         and TLB misses on the hash table; a new key {new:+.0} / {new_mean:+.0} ns (a lookup \
         that misses, then the insert); a new key into the full map {full:+.0} / \
         {full_mean:+.0} ns (the insert evicts).",
    );

    let quota = median_difference(
        &single_results[HTTP_QUOTA_KEEP_ALIVE],
        &single_results[HTTP_KEEP_ALIVE],
    );
    let _ = writeln!(
        out,
        "\n**Quotas.** A keep-alive request of a key whose plan has a quota costs {quota:+.0} ns \
         over the same request of a key without one (median of the rounds' differences): a call, \
         the plan's quota (`PLAN_QUOTAS`), the key's count (a lookup in `QUOTAS`, an LRU hash \
         map), its window (one division of the clock the request path read already) and a \
         compare-and-swap. A key of a plan without a quota pays a bit test of the \
         configuration: the keyed arms without a quota are that case.",
    );

    // The clock.
    let ktime = median_difference(&steady_results[KTIME], steady_floor);
    let coarse = median_difference(&steady_results[COARSE], steady_floor);
    let jiffies = median_difference(&steady_results[JIFFIES], steady_floor);
    let (ktime, coarse, jiffies) = (
        no_minus_zero(ktime),
        no_minus_zero(coarse),
        no_minus_zero(jiffies),
    );
    let tick = machine
        .coarse_resolution_ns
        .map_or("?".to_owned(), |ns| format!("{} ms", ns as f64 / 1e6));
    let shares: Vec<String> = coarse_shares
        .iter()
        .map(|(rate, share)| format!("{:.0}% at {rate}/s", 100.0 * share))
        .collect();
    let at = |arm: usize| summarize(&steady_results[arm], steady_floor).median;
    let _ = writeln!(
        out,
        "\n**The clock.** One read costs ≈ {ktime:.1} ns with `bpf_ktime_get_ns` (CLOCK_MONOTONIC, \
         what a pass is decided on), ≈ {coarse:.1} ns with `bpf_ktime_get_coarse_ns`, ≈ \
         {jiffies:.1} ns with `bpf_jiffies64` (over the bare `XDP_DROP`; the verifier inlines the \
         jiffies read). The datapath drops a packet of a key far over its limit on the jiffies \
         when they prove it over: jiffies `j` mean a precise time before `base + (j + 1) · tick \
         + tick / 4` (the kernel moves the jiffies and the time of their update in step; the \
         program learns `base` from packets that read both clocks, and checks the bound on them: \
         a tick {tick} here). That needs a key whose refill interval is longer than a tick and a \
         quarter: of the hot key's drops, {} were proven on the jiffies; its packet costs {:.1} ns \
         at 1000/s, {:.1} ns at 100/s and {:.1} ns at 10/s.\n",
        shares.join(", "),
        at(HOT),
        at(HOT_AT_100),
        at(HOT_AT_10),
    );
    out.push_str(two_cpus);
    let _ = writeln!(
        out,
        "Resident keys: the bucket map of the \"resident\" limiter holds {resident} keys and has \
         room for exactly that many (`[agent] max_keys` reached), filled from userspace with \
         `BPF_MAP_UPDATE_BATCH` in {fill_secs:.1} s. The benchmarking ranges hold only 131 072 \
         IPv4 sources, so the keys are the 65 536 sources of 198.18.0.0/16 and, for the rest, \
         IPv6 sources of 2001:2::/96 as /128 keys (both limiters run with `ipv6_prefix = 128`): \
         {} of those are never sent to — the first the LRU evicts when the new-key arm inserts \
         into the full map — and the IPv6 arm picks among the other {}. The other limiter has \
         the default `max_keys` = 1M and holds the hot key, {FEW_KEYS} keys of 198.18.1.0/24 \
         and the new keys, which come from 198.19.0.0/16, one per packet.",
        thousands(*spare),
        thousands(*v6_pool),
    );
    if checks.is_empty() {
        let _ = writeln!(
            out,
            "\nChecks (the limiters' counters): every resident-key packet found its key, every \
             new key was created, no insert failed."
        );
    } else {
        let _ = writeln!(
            out,
            "\n**Checks failed** (the numbers above may not mean what they say):"
        );
        for check in checks {
            let _ = writeln!(out, "- {check}");
        }
    }
    out
}

/// One markdown table of arms against `floor`. Repeat-R arms (`single` false) have their ns
/// to a tenth and the kernel's own whole-ns figure; one-per-run arms have the mean of all their
/// packets.
fn table(out: &mut String, arms: &[Arm], results: &[ArmResult], floor: &ArmResult, single: bool) {
    let (extra, verdict) = if single {
        ("mean", "verdicts")
    } else {
        ("kernel's figure", "verdict")
    };
    let _ = writeln!(
        out,
        "| arm | ns/packet | min–max | {extra} | × bare | + ns | {verdict} | what |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for (arm, result) in arms.iter().zip(results) {
        let s = summarize(result, floor);
        let verdicts = if result.expected_verdicts == result.runs {
            verdict_name(arm.expected).to_owned()
        } else {
            format!(
                "{:.1}% {}",
                100.0 * result.expected_verdicts as f64 / result.runs.max(1) as f64,
                verdict_name(arm.expected)
            )
        };
        let (values, extra) = if single {
            (
                format!("{:.0} | {:.0}–{:.0}", s.median, s.min, s.max),
                format!("{:.0}", result.mean()),
            )
        } else {
            let mut kernel = result.kernel_rounds.clone();
            (
                format!("{:.1} | {:.1}–{:.1}", s.median, s.min, s.max),
                format!("{:.0}", median(&mut kernel)),
            )
        };
        let _ = writeln!(
            out,
            "| {} | {values} | {extra} | ×{:.2} | {:+.1} | {verdicts} | {} |",
            arm.name,
            s.ratio,
            no_minus_zero(s.over),
            arm.what
        );
    }
}

/// Replaces the section of `path` that starts with [`SECTION`] by `section`, or appends it.
fn write_section(path: &Path, section: &str) -> anyhow::Result<()> {
    write_named_section(path, SECTION, section)
}

/// Replaces the section of `path` that starts with the heading `heading` (up to the next `## `
/// heading) by `section`, or appends it; creates the file when there is none.
pub(crate) fn write_named_section(path: &Path, heading: &str, section: &str) -> anyhow::Result<()> {
    let old = match std::fs::read_to_string(path) {
        Ok(old) => old,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = match old.find(heading) {
        Some(start) => {
            let after = start + heading.len();
            let end = old[after..]
                .find("\n## ")
                .map_or(old.len(), |i| after + i + 1);
            match &old[end..] {
                "" => format!("{}{}\n", &old[..start], section.trim_end()),
                rest => format!("{}{}\n\n{rest}", &old[..start], section.trim_end()),
            }
        }
        None => format!("{}\n\n{}", old.trim_end(), section),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
