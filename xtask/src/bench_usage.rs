//! `cargo xtask bench --only usage`: what `limiter usage` costs over a full history — 7 days of
//! minutes in which 10 000 keys had traffic, the 1 000 busiest of each minute kept
//! (`[usage] keys = 1000`) — answered by the real agent from its `usage.redb`.
//!
//! The history is written by `limiter usage-fill` (a hidden command for this benchmark) through
//! the agent's own recording path — each minute as the agent writes it, with the hour sums and
//! the pruning — into the state directory of a real agent, stopped for it and started again on
//! it. 1 000 of the 10 000 keys have traffic in each minute, a different thousand every minute,
//! so every key has rows every ten minutes and every hour holds all 10 000. Each command is a
//! process of its own, as an operator runs it, its output read through a pipe as fast as it
//! comes; rounds interleaved, median and min–max of the wall time. Nothing is asserted.

use crate::bench::{self, median, INTERRUPTED};
use crate::bench_scale::{run_counted, size_text};
use anyhow::{bail, ensure, Context};
use limiter_tests::agent::Agent;
use limiter_tests::netns::TestNet;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(crate) const SECTION: &str = "## Usage history";

/// Keys with traffic over the days, of which this many in each minute.
const KEYS: u32 = 10_000;
const PER_MINUTE: u32 = 1000;
/// A key `usage KEY` looks at: key 3 of the synthetic ones (a source).
const ONE_KEY: &str = "198.18.0.1";

struct Timing {
    label: String,
    what: &'static str,
    argv: Vec<String>,
    secs: Vec<f64>,
    bytes: u64,
    /// Series in the answer (JSON), or none for a chart.
    series: Option<u64>,
}

/// Runs the part; its section of BENCHMARKS.md.
pub(crate) fn run(quick: bool) -> anyhow::Result<String> {
    let started = Instant::now();
    let load_before = bench::loadavg();
    let (days, rounds) = if quick { (1, 2) } else { (7, 5) };
    println!(
        "usage history: {days} days of minutes of {} keys, {} kept per minute; {rounds} rounds",
        bench::thousands(KEYS),
        bench::thousands(PER_MINUTE)
    );
    let net = TestNet::new(0, 1);
    let config = format!("[usage]\nkeys = {PER_MINUTE}\n");
    let mut agent = Agent::start(&net, Some(&config));
    agent.stop();
    let state_dir = agent.state_dir();
    // The one the agent started (empty) makes way for the synthetic one.
    std::fs::remove_file(state_dir.join("usage.redb")).context("removing the empty history")?;
    let limiter = limiter_tests::limiter_bin();
    let fill_started = Instant::now();
    let fill = Command::new(&limiter)
        .args(["usage-fill", "--state-dir"])
        .arg(&state_dir)
        .args(["--keys", &KEYS.to_string()])
        .args(["--per-minute", &PER_MINUTE.to_string()])
        .args(["--days", &days.to_string()])
        .output()
        .context("running limiter usage-fill")?;
    ensure!(
        fill.status.success(),
        "limiter usage-fill: {}",
        String::from_utf8_lossy(&fill.stderr)
    );
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let fill_line = String::from_utf8_lossy(&fill.stdout).trim().to_owned();
    let field = |name: &str| -> f64 {
        fill_line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let file_bytes = field("bytes") as u64;
    println!("{fill_line}");

    let start_started = Instant::now();
    agent.spawn();
    let start_secs = start_started.elapsed().as_secs_f64();

    let socket = agent.socket.to_str().context("socket path")?.to_owned();
    let limiter = limiter.to_str().context("limiter path")?.to_owned();
    let cli = |args: &[&str]| -> Vec<String> {
        let mut all = vec![limiter.clone(), "usage".to_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--api-socket".to_owned(), socket.clone()]);
        all
    };
    let since = format!("{days}d");
    let ops: Vec<(String, &'static str, Vec<String>, bool)> = vec![
        (
            format!("`limiter usage --since {since}`"),
            "the totals by day and the 10 busiest keys, a chart",
            cli(&["--since", &since]),
            false,
        ),
        (
            format!("`limiter usage --since {since} --json`"),
            "the same, as JSON",
            cli(&["--since", &since, "--json"]),
            true,
        ),
        (
            format!("`limiter usage --since {since} --by hour --json`"),
            "the totals and the 10 busiest keys by hour",
            cli(&["--since", &since, "--by", "hour", "--json"]),
            true,
        ),
        (
            format!("`limiter usage --since {since} --by minute --json`"),
            "the totals and the 10 busiest keys by minute, 10 081 points each",
            cli(&["--since", &since, "--by", "minute", "--json"]),
            true,
        ),
        (
            format!("`limiter usage {ONE_KEY} --since {since} --by minute --json`"),
            "one key, every minute",
            cli(&[ONE_KEY, "--since", &since, "--by", "minute", "--json"]),
            true,
        ),
        (
            "`limiter usage --since 24h --by minute --json`".to_owned(),
            "the totals and the 10 busiest keys of the last day, by minute",
            cli(&["--since", "24h", "--by", "minute", "--json"]),
            true,
        ),
    ];
    let mut timings: Vec<Timing> = ops
        .into_iter()
        .map(|(label, what, argv, json)| Timing {
            label,
            what,
            argv,
            secs: Vec::new(),
            bytes: 0,
            series: json.then_some(0),
        })
        .collect();
    for round in 0..rounds {
        for i in 0..timings.len() {
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted; the namespaces and the agent were removed");
            }
            let k = (i + round) % timings.len();
            let t = &mut timings[k];
            let needle = t.series.map(|_| b"\"key\"".as_slice());
            let run = run_counted(&t.argv, needle)?;
            t.secs.push(run.secs);
            t.bytes = run.bytes;
            t.series = needle.map(|_| run.entries);
        }
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();
    // What the history answered: every key of the days, the totals of all of them.
    let check = run_counted(&cli(&["--since", &since, "--json", "--top", "1"]), None)?;
    let answer: serde_json::Value =
        serde_json::from_slice(&check.output).context("usage --json")?;
    let total_passed = answer[0]["passed"].as_u64().unwrap_or(0);
    ensure!(
        answer[0]["key"] == "all" && total_passed > 0,
        "the history answered {answer}"
    );
    drop(agent);
    drop(net);
    let machine = bench::Machine::read(load_before);
    let minutes = field("minutes");
    let mut out = String::new();
    let _ = writeln!(out, "{SECTION}\n");
    let command = format!("{} --only usage", bench::command(quick));
    let _ = writeln!(
        out,
        "{}",
        machine.header(&command, started.elapsed().as_secs_f64())
    );
    let _ = writeln!(
        out,
        "The real agent (release build) with `[usage] keys = {PER_MINUTE}`, on a history of \
         {days} days ({minutes:.0} minutes) in which {} keys had traffic — {} of them in each \
         minute, a different {} every minute, so every hour holds all {} — written through the \
         agent's own recording path by `limiter usage-fill` in {fill_secs:.0} s ({:.1} ms per \
         minute written on average, {:.0} ms the slowest: each one a synced commit, what the \
         agent spends every 5 s). `usage.redb`: {} for {} minute rows, {} hour rows and {} key \
         names ({:.0} bytes per row, names included). The agent started on it in \
         {start_secs:.2} s. Each command is a process of its own, its \
         output read through a pipe; {rounds} rounds, the commands in an order rotated every \
         round; median and min–max of the wall time.\n",
        bench::thousands(KEYS),
        bench::thousands(PER_MINUTE),
        bench::thousands(PER_MINUTE),
        bench::thousands(KEYS),
        field("mean_write_ms"),
        field("slowest_write_ms"),
        size_text(file_bytes),
        bench::thousands(field("minute_rows") as u32),
        bench::thousands(field("hour_rows") as u32),
        bench::thousands(field("names") as u32),
        file_bytes as f64 / (field("minute_rows") + field("hour_rows")),
    );
    let _ = writeln!(
        out,
        "| command | seconds | min–max | output | series | what |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | --- |");
    for t in &timings {
        let mut sorted = t.secs.clone();
        sorted.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3}–{:.3} | {} | {} | {} |",
            t.label,
            median(&mut t.secs.clone()),
            sorted.first().copied().unwrap_or(f64::NAN),
            sorted.last().copied().unwrap_or(f64::NAN),
            size_text(t.bytes),
            t.series.map_or("—".to_owned(), |n| n.to_string()),
            t.what
        );
    }
    Ok(out)
}
