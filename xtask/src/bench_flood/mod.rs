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
//!
//! The parts, each depending only on those listed before it: [`model`] (the scenarios, the
//! arms, what a run measures), [`ns`] (work inside a namespace), [`generator`] (the traffic),
//! [`receiver`] (its XDP link, its NAPI thread, its counters), [`pacer`], [`arms`] (each arm
//! set up on the receiver), [`run`](mod@run) (the rounds, the measurements and their checks);
//! then, from the results alone, [`summary`], [`chart`], [`report`](mod@report) and
//! [`aims`](mod@aims).
//!
//! [`Load::SameForAll`]: model::Load::SameForAll
//! [`Pacer`]: pacer::Pacer
//! [`FixedRate`]: pacer::FixedRate

mod aims;
mod arms;
mod chart;
mod generator;
mod model;
mod ns;
mod pacer;
mod queues;
mod receiver;
mod report;
mod run;
mod summary;

use crate::bench;
use aims::{aims, AIMS_SECTION};
use anyhow::{ensure, Context};
use chart::{draw_chart, CHART};
use model::Plan;
use report::{print_samples, report, SECTION};
use run::run;
use std::path::Path;
use std::time::Instant;

/// The parts of `cargo xtask bench`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    /// Per-packet program cost (BPF_PROG_TEST_RUN).
    Cost,
    /// Flood throughput on a veth pair, next to nftables and iptables.
    Flood,
    /// Management at scale: 1M keys, next to bpftool.
    Scale,
    /// A keyed flood against nginx: limiter, nginx limit_req, HAProxy.
    Keys,
    /// `limiter usage` over 7 days of history of 10 000 keys.
    Usage,
    /// Fleet mode: over-admission of 3 hosts on one Redis, Redis's load per host, the
    /// kernel's cost per request.
    Fleet,
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
        let mut result = run(&plan)?;
        let queues = queues::run(&plan)?;
        result.checks.extend(queues.checks.iter().cloned());
        result.queues = Some(queues);
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
    let mut keys = None;
    if wants(Part::Keys) {
        let (section, result) = crate::bench_keys::run(quick)?;
        println!("\n{section}");
        bench::write_named_section(&path, crate::bench_keys::SECTION, &section)?;
        keys = Some(result);
    }
    if wants(Part::Usage) {
        let section = crate::bench_usage::run(quick)?;
        println!("\n{section}");
        bench::write_named_section(&path, crate::bench_usage::SECTION, &section)?;
    }
    if wants(Part::Fleet) {
        let section = crate::bench_fleet::run(quick)?;
        println!("\n{section}");
        bench::write_named_section(&path, crate::bench_fleet::SECTION, &section)?;
    }
    if only.is_none() {
        let section = aims(
            quick,
            flood.as_ref(),
            scale.as_ref(),
            keys.as_ref(),
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
            crate::bench_keys::SECTION,
            crate::bench_scale::SECTION,
            crate::bench_usage::SECTION,
            crate::bench_fleet::SECTION,
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
