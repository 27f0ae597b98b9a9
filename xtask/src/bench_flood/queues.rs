//! Scenario (d): one key flooded through two receive queues at once — what a multi-queue NIC
//! does with a flood from one source whose packets' ports vary (RSS spreads them over the
//! queues), and so the case where every CPU charges the same bucket.
//!
//! The test bed of (a)–(c), with two queues: a veth pair of two queues each, a generator on
//! each CPU (a veth puts a frame on the receiving queue of the CPU that sends it), and the
//! receiving veth's two NAPI instances in threads of their own (threaded NAPI), queue `i`'s
//! pinned to CPU `i`, beside the generator that feeds it — as a NIC queue's interrupt is
//! affine to one CPU. On two CPUs each CPU alternates between its generator and its receiver,
//! so the two receivers charge the key at the same moment for part of the time only (a host
//! with CPUs to spare would do it all the time). The receiver's cost per packet is the NAPI
//! threads' CPU time (`/proc/PID/schedstat`) over the packets they processed, as in (a)–(c);
//! the generators are not paced (the receiver shares its CPU with its generator: it gets
//! through what it can).
//!
//! Rows: the floor (an `XDP_DROP` that reads the source), the limiter on one key, the limiter on
//! 256 keys (every CPU cycles through them: the same keys from both queues, but seldom the same
//! one at the same moment) — on two queues, and the floor and the one key on one queue, to tell
//! what the second queue adds.

use super::arms::{Filter, Rig};
use super::generator::{
    generate, header_sum, load_generator, stop_generator, Calls, GenConfig, Generator, Sender,
    BATCH, CHUNK,
};
use super::model::{spread, Arm, Load, Plan, Scenario, FLOOD_BASE, FLOOD_PORT};
use super::ns::{ifindex, ns_shell};
use super::receiver::{NapiThread, Schedstat, StackFiles, XdpLink};
use super::run::quiet_namespaces;
use crate::bench::{self, INTERRUPTED};
use anyhow::{bail, ensure, Context};
use aya::programs::Xdp;
use limiter_common::maps::Counter;
use limiter_tests::netns::TestNet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

const QUEUES: usize = 2;
/// The limit of (d): a refill interval (10 ms) longer than a tick, as in (a) at 100/s.
const RATE: u64 = 100;
const BURST: u64 = 200;

/// One row of (d).
#[derive(Clone, Copy)]
struct Row {
    arm: Arm,
    /// Flood sources, in turn on every CPU.
    keys: u32,
    queues: usize,
}

const ROWS: [Row; 5] = [
    Row {
        arm: Arm::ReadDrop,
        keys: 1,
        queues: 2,
    },
    Row {
        arm: Arm::Limiter,
        keys: 1,
        queues: 2,
    },
    Row {
        arm: Arm::Limiter,
        keys: 256,
        queues: 2,
    },
    Row {
        arm: Arm::ReadDrop,
        keys: 1,
        queues: 1,
    },
    Row {
        arm: Arm::Limiter,
        keys: 1,
        queues: 1,
    },
];

impl Row {
    fn name(&self) -> String {
        let keys = match (self.arm, self.keys) {
            (Arm::ReadDrop, _) => String::new(),
            (_, 1) => ", one key".to_owned(),
            (_, n) => format!(", {n} keys"),
        };
        let queues = if self.queues == 1 {
            "one queue"
        } else {
            "two queues"
        };
        format!("{}{keys}, {queues}", self.arm.name())
    }

    /// The scenario the arm is set up for (the limiter's `[limits]` and table).
    fn scenario(&self) -> Scenario {
        Scenario {
            id: "d",
            title: "one key from two queues",
            sources: self.keys,
            random: false,
            well: false,
            rate: RATE,
            burst: BURST,
            capacity: 131_072,
            arms: &[],
            load: Load::OwnCapacity,
        }
    }
}

/// What one row measured in one round.
#[derive(Clone, Debug, Default)]
struct Sample {
    processed_pps: f64,
    ns_per_packet: f64,
    ring_full_share: f64,
    /// The limiter: the share of the key's packets each CPU charged, drops proven on the
    /// jiffies, and contention drops.
    cpu_shares: Vec<f64>,
    coarse_share: f64,
    contention_drops: u64,
}

pub(super) struct QueuesResult {
    /// Per row: its samples over the rounds.
    samples: Vec<Vec<Sample>>,
    pub(super) checks: Vec<String>,
    napi: Vec<String>,
    secs: f64,
}

pub(super) fn run(plan: &Plan) -> anyhow::Result<QueuesResult> {
    let started = Instant::now();
    ensure!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= QUEUES,
        "scenario (d) runs a generator and a receiver on each of {QUEUES} CPUs"
    );
    let bpffs = Path::new(limiter_tests::agent::TEST_BPFFS);
    let objects = bench::object_dir();
    let net = TestNet::new(0, QUEUES as u8);
    quiet_namespaces(&net)?;
    let receiver_ns = &net.gateway;
    let receiver_if = net.gateway_if.clone();
    let sender = Sender {
        ns: &net.clients,
        ifindex: ifindex(&net.clients, &net.client_if)?,
    };
    let (gen_ebpf, mut gen_obj) = load_generator(&objects.join("xdp_gen"))?;
    let gen_prog = bench::program(&gen_ebpf, "xdp_gen")?;
    let bare_drop = bench::load_plain(&objects.join("bare_drop"), &["bare_drop"])?;
    let bare_pass = bench::load_plain(&objects.join("bare_pass"), &["bare_pass"])?;
    let read_drop = bench::load_plain(&objects.join("read_drop"), &["read_drop"])?;
    let link = XdpLink::create(
        receiver_ns,
        &receiver_if,
        bench::program(&bare_pass, "bare_pass")?,
    )?;
    ns_shell(
        receiver_ns,
        &format!("echo 1 > /sys/class/net/{receiver_if}/threaded"),
    )
    .context("enabling threaded NAPI on the receiving veth")?;
    // One thread per queue, in the order the queues were made (their NAPI ids).
    let napi = NapiThread::find_all(&receiver_if, QUEUES)?;
    for (cpu, thread) in napi.iter().enumerate() {
        thread.pin(cpu)?;
    }
    let stack = StackFiles::open(receiver_ns, &receiver_if)?;
    let rig = Rig {
        receiver_ns,
        receiver_if: &receiver_if,
        link: &link,
        bare_drop: bench::program(&bare_drop, "bare_drop")?,
        read_drop: bench::program(&read_drop, "read_drop")?,
        bare_pass: bench::program(&bare_pass, "bare_pass")?,
        objects: &objects,
        bpffs,
        serial: std::cell::Cell::new(1 << 20),
    };
    let bed = Bed {
        rig: &rig,
        gen_prog,
        sender: &sender,
        stack: &stack,
        napi: &napi,
    };
    println!(
        "flood (d) one key from two queues: {} rounds × {} rows, {:.1} s warm-up + {:.1} s \
         measured each",
        plan.rounds,
        ROWS.len(),
        plan.warmup.as_secs_f64(),
        plan.window.as_secs_f64()
    );
    let mut samples: Vec<Vec<Sample>> = ROWS.iter().map(|_| Vec::new()).collect();
    let mut checks = Vec::new();
    for round in 0..plan.rounds {
        for i in 0..ROWS.len() {
            let index = (i + round) % ROWS.len();
            let row = ROWS[index];
            let sample = bed
                .measure(plan, &mut gen_obj, row, &mut checks)
                .with_context(|| format!("measuring {} in scenario (d)", row.name()))?;
            samples[index].push(sample);
        }
        eprint!("\rround {}/{}", round + 1, plan.rounds);
    }
    eprintln!();
    drop(link);
    Ok(QueuesResult {
        samples,
        checks,
        napi: napi.iter().map(|t| t.comm.clone()).collect(),
        secs: started.elapsed().as_secs_f64(),
    })
}

struct Bed<'a> {
    rig: &'a Rig<'a>,
    gen_prog: &'a Xdp,
    sender: &'a Sender<'a>,
    stack: &'a StackFiles,
    napi: &'a [NapiThread],
}

impl Bed<'_> {
    /// Sets `row` up, floods it from its queues' CPUs for the warm-up and the window, and
    /// takes it down; the limiter's count of passes is checked against its limit.
    fn measure(
        &self,
        plan: &Plan,
        gen_obj: &mut Generator,
        row: Row,
        checks: &mut Vec<String>,
    ) -> anyhow::Result<Sample> {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted; the namespaces and the benchmark's maps were removed");
        }
        let scenario = row.scenario();
        self.rig.serial.set(self.rig.serial.get() + 1);
        let filter = Filter::set_up(row.arm, &scenario, self.rig)?;
        let frame = bench::ipv4_udp(FLOOD_BASE);
        gen_obj.configure(GenConfig {
            flood_base: u32::from_be_bytes(FLOOD_BASE),
            flood_mask: row.keys - 1,
            flood_port: u32::from(FLOOD_PORT),
            header_sum: header_sum(&frame),
            ..GenConfig::default()
        })?;
        let stop = AtomicBool::new(false);
        let tids: Vec<AtomicI32> = (0..row.queues).map(|_| AtomicI32::new(0)).collect();
        let read = || -> anyhow::Result<(Instant, u64, u64, u64)> {
            let stack = self.stack.read()?;
            let mut napi_ns = 0;
            for thread in self.napi {
                napi_ns += Schedstat::read(thread.pid)?.run_ns;
            }
            Ok((Instant::now(), stack.rx_packets, stack.rx_dropped, napi_ns))
        };
        let counters = |counter: Counter| match &filter {
            Filter::Limiter(limiter) => limiter.counter_per_cpu(counter),
            _ => Ok(Vec::new()),
        };
        let (gen_prog, sender) = (self.gen_prog, self.sender);
        let result = std::thread::scope(|s| -> anyhow::Result<_> {
            let generators: Vec<_> = tids
                .iter()
                .enumerate()
                .map(|(cpu, tid)| {
                    let (stop, frame) = (&stop, &frame);
                    s.spawn(move || {
                        let calls = Calls {
                            batch: BATCH,
                            repeat: CHUNK,
                            once: false,
                            cpu,
                        };
                        generate(gen_prog, sender, frame, calls, stop, tid)
                    })
                })
                .collect();
            let generators_started = Instant::now();
            let measured = (|| {
                std::thread::sleep(plan.warmup);
                let before = read()?;
                let handled_before = handled(&counters)?;
                let coarse_before: u64 = counters(Counter::CoarseDrops)?.iter().sum();
                let dropped_before: u64 = counters(Counter::Dropped)?.iter().sum();
                std::thread::sleep(plan.window);
                let after = read()?;
                let handled_after = handled(&counters)?;
                let coarse: u64 =
                    counters(Counter::CoarseDrops)?.iter().sum::<u64>() - coarse_before;
                let dropped: u64 = counters(Counter::Dropped)?.iter().sum::<u64>() - dropped_before;
                anyhow::Ok((
                    before,
                    after,
                    handled_before,
                    handled_after,
                    coarse,
                    dropped,
                ))
            })();
            for (generator, tid) in generators.iter().zip(&tids) {
                stop_generator(&stop, tid, generator);
            }
            let generators_stopped = Instant::now();
            for generator in generators {
                generator
                    .join()
                    .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
            }
            Ok((measured?, generators_started, generators_stopped))
        });
        let checked = result.and_then(|(measured, started, stopped)| {
            let (before, after, handled_before, handled_after, coarse, dropped) = measured;
            let secs = (after.0 - before.0).as_secs_f64();
            let processed = (after.1 - before.1) as f64;
            let ring_full = (after.2 - before.2) as f64;
            let per_cpu: Vec<f64> = handled_after
                .iter()
                .zip(&handled_before)
                .map(|(a, b)| (a - b) as f64)
                .collect();
            let handled_total: f64 = per_cpu.iter().sum();
            let mut sample = Sample {
                processed_pps: processed / secs,
                ns_per_packet: (after.3 - before.3) as f64 / processed.max(1.0),
                ring_full_share: ring_full / (ring_full + processed).max(1.0),
                cpu_shares: per_cpu
                    .iter()
                    .take(row.queues)
                    .map(|n| n / handled_total.max(1.0))
                    .collect(),
                coarse_share: coarse as f64 / dropped.max(1) as f64,
                contention_drops: 0,
            };
            if let Filter::Limiter(limiter) = &filter {
                sample.contention_drops = limiter.counter(Counter::ContentionDrops)?;
                check_limit(
                    checks,
                    &row,
                    limiter.counter(Counter::Passed)?,
                    stopped - started,
                    stopped.saturating_duration_since(limiter.configured_at()),
                );
                if sample.contention_drops != 0 {
                    checks.push(format!(
                        "(d) {}: {} packets dropped for contention",
                        row.name(),
                        sample.contention_drops
                    ));
                }
            }
            Ok(sample)
        });
        let teardown = filter.tear_down(self.rig);
        let sample = checked?;
        teardown?;
        Ok(sample)
    }
}

/// Packets of limited keys each CPU charged (passed and dropped).
fn handled(counters: &dyn Fn(Counter) -> anyhow::Result<Vec<u64>>) -> anyhow::Result<Vec<u64>> {
    let passed = counters(Counter::Passed)?;
    let dropped = counters(Counter::Dropped)?;
    Ok(passed.iter().zip(&dropped).map(|(p, d)| p + d).collect())
}

/// The keys passed no more than `burst + rate·t` each over the whole flood (`outer`: from the
/// limiter's configuration to the generators' end), and no fewer than 99% of it over the time
/// the generators ran (`inner`): exact from two queues, no packet dropped while its bucket had
/// tokens.
fn check_limit(checks: &mut Vec<String>, row: &Row, passed: u64, inner: Duration, outer: Duration) {
    let keys = f64::from(row.keys);
    let allowed = |t: Duration| keys * (BURST as f64 + RATE as f64 * t.as_secs_f64());
    let high = allowed(outer).floor() as u64 + row.keys as u64;
    let low = (0.99 * allowed(inner)).ceil() as u64;
    if !(low..=high).contains(&passed) {
        checks.push(format!(
            "(d) {}: {passed} passed, not within {low}..={high} (burst + rate·t per key)",
            row.name()
        ));
    }
}

/// (d)'s aim: the limiter on one key over two queues against the two-queue floor, by receiver
/// capacity (median ns per packet); the contention drops of every limiter row; and the same
/// ratio on one queue.
pub(super) fn aim(result: &QueuesResult) -> (f64, u64, f64) {
    let median_ns = |arm: Arm, keys: u32, queues: usize| {
        ROWS.iter()
            .position(|r| r.arm == arm && r.keys == keys && r.queues == queues)
            .map_or(f64::NAN, |i| {
                spread(result.samples[i].iter().map(|s| s.ns_per_packet)).0
            })
    };
    let contention = result
        .samples
        .iter()
        .flatten()
        .map(|s| s.contention_drops)
        .sum();
    (
        median_ns(Arm::ReadDrop, 1, 2) / median_ns(Arm::Limiter, 1, 2),
        contention,
        median_ns(Arm::ReadDrop, 1, 1) / median_ns(Arm::Limiter, 1, 1),
    )
}

/// Section (d) of the flood report.
pub(super) fn report(result: &QueuesResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### (d) one key from two queues\n");
    let _ = writeln!(
        out,
        "A flood from one source whose packets' ports vary is spread over a NIC's queues by RSS, \
         and every CPU then charges the same bucket. The test bed of (a)–(c) with two queues: a \
         veth pair of two queues each, a generator on each CPU (a veth puts a frame on the \
         receiving queue of the CPU that sends it), the receiving veth's NAPI threads ({}) \
         pinned one per CPU beside the generator that feeds its queue, as a queue's interrupt \
         is affine to one CPU. Rate {RATE}/s and burst {BURST} per key. With two CPUs each CPU \
         alternates between its generator and its receiver (the generators are not paced): \
         the two receivers charge the key at the same moment for part of the time only. \
         Receiver ns/packet: the NAPI threads' CPU time over the packets processed. {} rounds; \
         medians and min–max.\n",
        result.napi.join(", "),
        result.samples.first().map_or(0, Vec::len),
    );
    let _ = writeln!(
        out,
        "| row | receiver ns/packet | min–max | capacity, Mpps/CPU | × the floor | Mpps \
         processed | ring full | charged per CPU | drops on the jiffies |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    );
    let summaries: Vec<(f64, f64, f64)> = result
        .samples
        .iter()
        .map(|s| spread(s.iter().map(|s| s.ns_per_packet)))
        .collect();
    let floor = |queues: usize| {
        ROWS.iter()
            .position(|r| r.arm == Arm::ReadDrop && r.queues == queues)
            .map(|i| summaries[i].0)
    };
    for (i, row) in ROWS.iter().enumerate() {
        let samples = &result.samples[i];
        let (ns, lo, hi) = summaries[i];
        let vs_floor = floor(row.queues).map_or(f64::NAN, |f| f / ns);
        let mpps = spread(samples.iter().map(|s| s.processed_pps / 1e6)).0;
        let ring = spread(samples.iter().map(|s| s.ring_full_share)).0;
        let (shares, coarse) = if row.arm == Arm::Limiter {
            let shares: Vec<String> = (0..row.queues)
                .map(|cpu| {
                    let share = spread(
                        samples
                            .iter()
                            .map(|s| s.cpu_shares.get(cpu).copied().unwrap_or(0.0)),
                    )
                    .0;
                    format!("{:.0}%", 100.0 * share)
                })
                .collect();
            (
                shares.join(" / "),
                format!(
                    "{:.0}%",
                    100.0 * spread(samples.iter().map(|s| s.coarse_share)).0
                ),
            )
        } else {
            ("—".to_owned(), "—".to_owned())
        };
        let _ = writeln!(
            out,
            "| {} | {ns:.0} | {lo:.0}–{hi:.0} | {:.1} | {} | {mpps:.2} | {:.0}% | {shares} | \
             {coarse} |",
            row.name(),
            1000.0 / ns,
            super::report::times(vs_floor),
            100.0 * ring,
        );
    }
    let at = |arm: Arm, keys: u32, queues: usize| {
        ROWS.iter()
            .position(|r| r.arm == arm && r.keys == keys && r.queues == queues)
            .map_or(f64::NAN, |i| summaries[i].0)
    };
    let (one_1, one_2) = (at(Arm::Limiter, 1, 1), at(Arm::Limiter, 1, 2));
    let (floor_1, floor_2) = (at(Arm::ReadDrop, 1, 1), at(Arm::ReadDrop, 1, 2));
    let many_2 = at(Arm::Limiter, 256, 2);
    let _ = writeln!(
        out,
        "\nThe second queue adds {:+.0} ns per packet to the limiter on one key ({one_1:.0} → \
         {one_2:.0}) and {:+.0} ns to the floor ({floor_1:.0} → {floor_2:.0}); on 256 keys from \
         two queues the limiter costs {many_2:.0} ns. Every limiter row passed exactly what its \
         limit allows (checked below) and dropped nothing for contention.\n",
        one_2 - one_1,
        floor_2 - floor_1,
    );
    let _ = writeln!(
        out,
        "**With 16 and 64 queues** (on paper, from what was measured). What every CPU writes on \
         a packet of one key is what limits a key flooded through many queues: a write takes the \
         cache line from the CPU that wrote it last, one transfer per packet, and the transfers \
         of one line are serial. The count of a drop used to be such a write; the part \
         \"two CPUs at once\" of the per-packet section measured what it cost — the hot key \
         from both CPUs twice the price of a key per CPU, about 90 ns more a packet, the \
         line's round trip between two cores here. With 16 or 64 CPUs writing it, every packet \
         pays that transfer or more (further cores, other dies), and the key as a whole is \
         capped at one transfer at a time, ~11 M packets/s whatever the queues: below 0.7 Mpps \
         per queue at 16. Drops are now counted per CPU (`DROP_TALLIES`), and a drop of a key \
         over its limit writes nothing shared: its bucket's line is only read and stays in \
         every core's cache, and the two-CPU measurement shows one key from both CPUs at the \
         cost of a key per CPU. What is still written is a pass (one compare-and-swap per \
         pass: the key's rate, 100 to 1000 a second here, not the flood's) and the exhaustion \
         flag (once per exhaustion). So with 16 or 64 queues a flooded key's packets cost \
         about the one-queue figure of this table on every queue ({one_1:.0} ns here), and \
         the receivers' capacity grows with the queues — 16 × and 64 × {:.1} Mpps on cores \
         like these — instead of meeting the single line's ceiling. The test bed cannot show it \
         beyond two CPUs; the aim's ratio to the floor is then the one-queue ratio.\n",
        1000.0 / one_1
    );
    let _ = writeln!(out, "({:.0} s.)", result.secs);
    out
}
