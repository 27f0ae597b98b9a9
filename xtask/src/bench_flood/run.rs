//! The rounds: the test bed set up, every arm measured in turn, each sample checked.

use super::arms::{Filter, Rig};
use super::generator::{
    generate, header_sum, install_stop_signal, load_generator, stop_generator, Calls, GenConfig,
    Generator, Sender, BATCH, BATCH_SAME_LOAD, CHUNK, CHUNK_SAME_LOAD,
};
use super::model::{
    spread, Arm, FloodResult, Load, Plan, Profile, SameLoad, Sample, Scenario, ScenarioResult,
    ALL_ARMS, FLOOD_BASE, FLOOD_PORT, GENERATOR_CPU, NEW_KEYS_PER_SEC, RECEIVER_CPU, SCENARIOS,
    WELL_BASE, WELL_CLIENTS, WELL_PORT, WELL_SHIFT, WELL_WARMUP,
};
use super::ns::{ifindex, ns_command, ns_shell};
use super::pacer::{fixed_interval, FixedRate, Pacer, PACE_HEADROOM, PACE_START};
use super::receiver::{
    net_rx_softirqs, rx_packets_once, NapiThread, Schedstat, StackCounters, StackFiles, XdpLink,
};
use crate::bench::{self, INTERRUPTED};
use anyhow::{bail, ensure, Context};
use aya::maps::{MapData, PerCpuArray};
use aya::programs::Xdp;
use limiter_common::maps::Counter;
use limiter_tests::agent::{ensure_bpffs, TEST_BPFFS};
use limiter_tests::netns::TestNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Runs of the receiver without a filter that set a [`Load::SameForAll`] scenario's rate.
const CALIBRATION_RUNS: usize = 3;

pub(super) fn run(plan: &Plan) -> anyhow::Result<FloodResult> {
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
    quiet_namespaces(&net)?;
    let receiver_ns = &net.gateway;
    let sender_ns = &net.clients;
    let receiver_if = net.gateway_if.clone();
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
                    cpu: GENERATOR_CPU,
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
        rig: Rig {
            receiver_ns,
            receiver_if: &receiver_if,
            link: &link,
            bare_drop: bare_drop_prog,
            read_drop: bench::program(&read_drop, "read_drop")?,
            bare_pass: bare_pass_prog,
            objects: &objects,
            bpffs,
            serial: std::cell::Cell::new(0),
        },
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
        queues: None,
    })
}

/// No IPv6 in the test bed's namespaces (its neighbour and multicast traffic would be keys of
/// their own in the limiter), no reverse-path filter (the flood's sources have no route back).
pub(super) fn quiet_namespaces(net: &TestNet) -> anyhow::Result<()> {
    for ns in [&net.gateway, &net.clients] {
        for sysctl in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ] {
            ns_command(ns, &["sysctl", "-q", "-w", sysctl], None)?;
        }
    }
    Ok(())
}

/// The test bed: the receiver the arms are set up on, the generator and its sender, and what a
/// measurement reads.
struct Bed<'a> {
    plan: &'a Plan,
    rig: Rig<'a>,
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
        self.rig.serial.set(self.rig.serial.get() + 1);
        let filter = Filter::set_up(arm, scenario, &self.rig)
            .with_context(|| format!("setting up {} for ({})", arm.name(), scenario.id))?;
        let sample = measure(self, scenario, &filter, gen_obj, offered, during);
        // Back to the bare XDP_PASS and the rules removed, also when the measurement failed.
        let teardown = filter.tear_down(&self.rig);
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
        rig,
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
            rig.receiver_ns,
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
                cpu: GENERATOR_CPU,
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
            cpu: GENERATOR_CPU,
        },
        Load::SameForAll => Calls {
            batch: BATCH_SAME_LOAD,
            repeat: CHUNK_SAME_LOAD,
            once: false,
            cpu: GENERATOR_CPU,
        },
    };
    config.pace_slack_ns = config.pace_interval_ns * u64::from(calls.batch);
    config_map.set(0, config, 0)?;
    let fixed = offered.map(|rate| FixedRate::new(rate, gen_state));
    let mut pacer = Pacer::new(config_map, config, stack, napi, calls.batch, fixed);

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
        sample.keys_secs = limiter.configured_at().elapsed().as_secs_f64();
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

fn tool_version(tool: &str, args: &[&str]) -> String {
    Command::new(tool)
        .args(args)
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}
