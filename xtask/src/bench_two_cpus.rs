//! `cargo xtask bench`, per-packet cost, the part on two CPUs: one program run by
//! `BPF_PROG_TEST_RUN` on CPU 0 and CPU 1 at the same time, each thread repeating its own
//! packet, so that the two CPUs charge one key's bucket (or a key each) all the time — what a
//! key flooded through every queue of a NIC does to the cache line its bucket lives on. The
//! veth test bed of the flood benchmark's scenario (d) overlaps its two receivers only part of
//! the time; here they overlap throughout.

use crate::bench::{median, test_run};
use aya::programs::Xdp;
use std::fmt::Write as _;
use std::sync::Barrier;

/// One thing measured on both CPUs at once.
pub(crate) struct TwoCpuArm<'a> {
    pub(crate) name: &'static str,
    pub(crate) program: &'a Xdp,
    /// The packet CPU 0 and CPU 1 repeat.
    pub(crate) packets: [&'a [u8]; 2],
    /// The arm of the one-CPU table to compare with.
    pub(crate) alone: &'static str,
}

/// Per arm: the kernel's ns per run, the mean of the two CPUs, one value per round.
pub(crate) struct TwoCpuResult {
    rounds: Vec<Vec<f64>>,
}

/// Runs every arm once per round, in an order rotated every round.
pub(crate) fn run(arms: &[TwoCpuArm], rounds: usize, repeat: u32) -> anyhow::Result<TwoCpuResult> {
    let mut result = TwoCpuResult {
        rounds: arms.iter().map(|_| Vec::new()).collect(),
    };
    for round in 0..rounds {
        for i in 0..arms.len() {
            let a = (i + round) % arms.len();
            let [cpu0, cpu1] = on_two_cpus(arms[a].program, arms[a].packets, repeat)?;
            result.rounds[a].push((cpu0 + cpu1) as f64 / 2.0);
        }
    }
    Ok(result)
}

/// Runs `program` `repeat` times on CPU 0 and on CPU 1 at once (threads pinned, released
/// together), each on its own packet; the kernel's ns per run on each.
fn on_two_cpus(program: &Xdp, packets: [&[u8]; 2], repeat: u32) -> anyhow::Result<[u64; 2]> {
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|cpu| {
                let (start, packet) = (&start, packets[cpu]);
                s.spawn(move || {
                    limiter_tests::traffic::pin_to_cpu(cpu);
                    start.wait();
                    test_run(program, packet, repeat).map(|(_, ns)| ns)
                })
            })
            .collect();
        let mut ns = [0; 2];
        for (cpu, run) in runs.into_iter().enumerate() {
            ns[cpu] = run
                .join()
                .map_err(|_| anyhow::anyhow!("a test_run thread panicked"))??;
        }
        Ok(ns)
    })
}

/// The part of the report: a table, beside each arm the kernel's figure of its `alone` arm on
/// one CPU (`one_cpu`, by name).
pub(crate) fn report(
    arms: &[TwoCpuArm],
    result: &TwoCpuResult,
    one_cpu: &dyn Fn(&str) -> Option<f64>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n**Two CPUs at once.** The same program run by `BPF_PROG_TEST_RUN` on CPU 0 and CPU 1 \
         at the same time, each repeating its own packet: one key's bucket charged from both \
         CPUs all the time (a key flooded through every queue of a NIC), or a key each. The \
         kernel's ns per run, the mean of the two CPUs, median over {} rounds; beside it the \
         same on one CPU (the kernel's figure of the table above).\n",
        result.rounds.first().map_or(0, Vec::len)
    );
    let _ = writeln!(
        out,
        "| arm | ns/packet, two CPUs | min–max | one CPU | on one CPU |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | --- |");
    for (arm, rounds) in arms.iter().zip(&result.rounds) {
        let mut values = rounds.clone();
        let m = median(&mut values);
        let (lo, hi) = (
            values.first().copied().unwrap_or(f64::NAN),
            values.last().copied().unwrap_or(f64::NAN),
        );
        let one = one_cpu(arm.alone).map_or("—".to_owned(), |ns| format!("{ns:.0}"));
        let _ = writeln!(
            out,
            "| {} | {m:.1} | {lo:.0}–{hi:.0} | {one} | {} |",
            arm.name, arm.alone
        );
    }
    out.push('\n');
    out
}
