//! `cargo xtask bench`, management at scale: the real agent tracking a million keys, and what
//! the operator's commands cost then — `limiter list --json`, `inspect`, `status`,
//! `reset --exhausted` — next to `bpftool map dump` of the same pinned map; the agent's memory
//! and the kernel's per key.
//!
//! The agent runs in a network namespace of the test bed (its own veth, no traffic); its bucket
//! map is filled through its pin with `BPF_MAP_UPDATE_BATCH`, a tenth of the keys exhausted.
//! Every command runs as a separate process, as an operator would run it, its output read
//! through a pipe (and counted) as fast as it comes. Rounds are interleaved; medians with
//! min–max.

use crate::bench::{self, median, INTERRUPTED};
use anyhow::{bail, ensure, Context};
use aya::maps::MapData;
use limiter_common::maps::{BucketKey, BucketState, BUCKETS_MAP};
use limiter_tests::agent::Agent;
use limiter_tests::netns::TestNet;
use std::fmt::Write as _;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(crate) const SECTION: &str = "## Management at scale";

/// Keys tracked, and one in `EXHAUSTED_EVERY` of them exhausted.
const KEYS: u32 = 1_000_000;
/// `max_keys`: room for them with a margin — an LRU map filled to the last entry evicts a few
/// (its free entries are spread over per-CPU lists).
const MAX_KEYS: u32 = 1 << 20;
const EXHAUSTED_EVERY: u32 = 10;
const RATE: u64 = 1000;
const BURST: u64 = 2000;
/// IPv4 keys: the sources of 198.18.0.0/16; the rest are IPv6 /128 keys of 2001:2::/96.
const V4_KEYS: u32 = 1 << 16;
/// The key `inspect` looks at.
const INSPECTED: &str = "198.18.1.7";

/// What one command did, over the rounds.
pub(crate) struct Timing {
    pub(crate) label: String,
    pub(crate) what: &'static str,
    pub(crate) secs: Vec<f64>,
    /// Bytes it printed and entries in them (last round).
    pub(crate) bytes: u64,
    pub(crate) entries: Option<u64>,
    /// Its peak resident memory, kB (the largest of the rounds).
    pub(crate) max_rss_kb: u64,
}

impl Timing {
    pub(crate) fn median(&self) -> f64 {
        median(&mut self.secs.clone())
    }

    fn range(&self) -> (f64, f64) {
        let mut v = self.secs.clone();
        v.sort_by(f64::total_cmp);
        (
            v.first().copied().unwrap_or(f64::NAN),
            v.last().copied().unwrap_or(f64::NAN),
        )
    }
}

pub(crate) struct ScaleResult {
    pub(crate) rounds: usize,
    pub(crate) keys: u32,
    pub(crate) tracked: u64,
    pub(crate) exhausted: u64,
    pub(crate) fill_secs: f64,
    pub(crate) timings: Vec<Timing>,
    pub(crate) reset: Timing,
    pub(crate) reset_counts: Vec<u64>,
    /// The agent's resident memory, kB: idle with the keys, after the rounds, and its peak.
    pub(crate) agent_rss_idle_kb: u64,
    pub(crate) agent_rss_after_kb: u64,
    pub(crate) agent_hwm_kb: u64,
    /// The bucket map as the kernel accounts it.
    pub(crate) map_bytes: u64,
    pub(crate) map_entries: u64,
    pub(crate) key_size: u64,
    pub(crate) value_size: u64,
    pub(crate) secs: f64,
    pub(crate) bpftool_version: String,
}

impl ScaleResult {
    /// Kernel memory per tracked key, bytes.
    pub(crate) fn bytes_per_key(&self) -> f64 {
        self.map_bytes as f64 / self.map_entries.max(1) as f64
    }

    pub(crate) fn timing(&self, label_start: &str) -> Option<&Timing> {
        self.timings
            .iter()
            .find(|t| t.label.starts_with(label_start))
    }
}

pub(crate) fn run(quick: bool) -> anyhow::Result<ScaleResult> {
    let started = Instant::now();
    let rounds = if quick { 1 } else { 5 };
    let reset_rounds = if quick { 1 } else { 3 };
    println!(
        "management at scale: the agent with {} keys, {rounds} rounds",
        bench::thousands(KEYS)
    );
    let net = TestNet::new(0, 1);
    let config = format!(
        "[limits]\nrate = {RATE}\nburst = {BURST}\nipv4_prefix = 32\nipv6_prefix = 128\n\n\
         [agent]\nmax_keys = {MAX_KEYS}\n"
    );
    let agent = Agent::start(&net, Some(&config));
    let map_path = agent.pin_path.join(BUCKETS_MAP);
    let map = MapData::from_pin(&map_path)
        .with_context(|| format!("opening the agent's {}", map_path.display()))?;
    let fd = map.fd().as_fd().as_raw_fd();

    let fill_started = Instant::now();
    fill(fd)?;
    let fill_secs = fill_started.elapsed().as_secs_f64();
    let status = agent.json(&["status"]);
    let tracked = status["tracked_keys"].as_u64().unwrap_or(0);
    let exhausted = status["exhausted_keys"].as_u64().unwrap_or(0);
    println!(
        "filled {} keys in {fill_secs:.2} s: the agent tracks {tracked}, {exhausted} exhausted",
        bench::thousands(KEYS)
    );
    ensure!(
        tracked == u64::from(KEYS),
        "the agent tracks {tracked} keys after {KEYS} were written to its map"
    );
    let agent_pid = agent_pid(&agent.socket)?;
    let agent_rss_idle_kb = proc_status_kb(agent_pid, "VmRSS")?;

    let socket = agent.socket.to_str().context("socket path")?.to_owned();
    let map_arg = map_path.to_str().context("map path")?.to_owned();
    let limiter = limiter_tests::limiter_bin();
    let limiter = limiter.to_str().context("limiter path")?.to_owned();
    type Op = (String, &'static str, Vec<String>, Option<&'static [u8]>);
    let cli = |args: &[&str]| -> Vec<String> {
        let mut all = vec![limiter.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        all.extend(["--api-socket".to_owned(), socket.clone()]);
        all
    };
    let ops: Vec<Op> = vec![
        (
            "`limiter list --json`".into(),
            "every tracked key with its bucket state, as JSON",
            cli(&["list", "--json"]),
            Some(b"\"key\""),
        ),
        (
            "`bpftool map dump pinned …/BUCKETS`".into(),
            "the same map, raw (key and value bytes in hex)",
            vec![
                "bpftool".into(),
                "map".into(),
                "dump".into(),
                "pinned".into(),
                map_arg.clone(),
            ],
            Some(b"key:"),
        ),
        (
            "`bpftool -j map dump pinned …/BUCKETS`".into(),
            "the same, as JSON",
            vec![
                "bpftool".into(),
                "-j".into(),
                "map".into(),
                "dump".into(),
                "pinned".into(),
                map_arg.clone(),
            ],
            Some(b"\"key\""),
        ),
        (
            "`limiter list --sort drops --top 20`".into(),
            "the heaviest droppers, a table",
            cli(&["list", "--sort", "drops", "--top", "20"]),
            None,
        ),
        (
            "`limiter list --exhausted --json`".into(),
            "the exhausted keys, as JSON",
            cli(&["list", "--exhausted", "--json"]),
            Some(b"\"key\""),
        ),
        (
            "`limiter status --json`".into(),
            "interfaces, keys tracked and exhausted, totals",
            cli(&["status", "--json"]),
            None,
        ),
        (
            format!("`limiter inspect {INSPECTED}`"),
            "one key",
            cli(&["inspect", INSPECTED]),
            None,
        ),
    ];
    let mut timings: Vec<Timing> = ops
        .iter()
        .map(|(label, what, _, _)| Timing {
            label: label.clone(),
            what,
            secs: Vec::new(),
            bytes: 0,
            entries: None,
            max_rss_kb: 0,
        })
        .collect();
    for round in 0..rounds {
        for i in 0..ops.len() {
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted; the namespaces and the agent were removed");
            }
            let k = (i + round) % ops.len();
            let (_, _, argv, needle) = &ops[k];
            let run = run_counted(argv, *needle)?;
            let t = &mut timings[k];
            t.secs.push(run.secs);
            t.bytes = run.bytes;
            t.entries = needle.map(|_| run.entries);
            t.max_rss_kb = t.max_rss_kb.max(run.max_rss_kb);
        }
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();
    let agent_rss_after_kb = proc_status_kb(agent_pid, "VmRSS")?;

    // `reset --exhausted`, each round on freshly exhausted keys.
    let mut reset = Timing {
        label: "`limiter reset --exhausted`".into(),
        what: "a full bucket for every exhausted key",
        secs: Vec::new(),
        bytes: 0,
        entries: None,
        max_rss_kb: 0,
    };
    let mut reset_counts = Vec::new();
    for round in 0..reset_rounds {
        if round > 0 {
            fill(fd)?;
        }
        let run = run_counted(&cli(&["reset", "--exhausted", "--json"]), None)?;
        let json: serde_json::Value = serde_json::from_slice(&run.output)
            .with_context(|| format!("reset --json: {}", String::from_utf8_lossy(&run.output)))?;
        reset_counts.push(json["reset"].as_u64().unwrap_or(0));
        reset.secs.push(run.secs);
        reset.bytes = run.bytes;
        reset.max_rss_kb = reset.max_rss_kb.max(run.max_rss_kb);
    }
    let agent_hwm_kb = proc_status_kb(agent_pid, "VmHWM")?;

    let show = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&map_path)
        .output()
        .context("running bpftool map show")?;
    let info: serde_json::Value = serde_json::from_slice(&show.stdout).with_context(|| {
        format!(
            "bpftool map show: {}",
            String::from_utf8_lossy(&show.stderr)
        )
    })?;
    let bpftool_version = Command::new("bpftool")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into());
    drop(agent);
    Ok(ScaleResult {
        rounds,
        keys: KEYS,
        tracked,
        exhausted,
        fill_secs,
        timings,
        reset,
        reset_counts,
        agent_rss_idle_kb,
        agent_rss_after_kb,
        agent_hwm_kb,
        map_bytes: info["bytes_memlock"].as_u64().unwrap_or(0),
        map_entries: info["max_entries"].as_u64().unwrap_or(0),
        key_size: info["bytes_key"].as_u64().unwrap_or(0),
        value_size: info["bytes_value"].as_u64().unwrap_or(0),
        secs: started.elapsed().as_secs_f64(),
        bpftool_version,
    })
}

/// Writes the `KEYS` keys with `BPF_MAP_UPDATE_BATCH`: full buckets with some passed packets,
/// and one in `EXHAUSTED_EVERY` exhausted for the next hour, with drops.
fn fill(fd: i32) -> anyhow::Result<()> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let now_ns = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
    let exhausted_tat = now_ns + 3600 * 1_000_000_000;
    let mut keys = Vec::with_capacity(V4_KEYS as usize);
    let mut values = Vec::with_capacity(V4_KEYS as usize);
    for i in 0..KEYS {
        let key: BucketKey = if i < V4_KEYS {
            bench::v4_key([198, 18, (i >> 8) as u8, i as u8])
        } else {
            bench::v6_key(bench::in_v6_net(i - V4_KEYS))
        };
        let exhausted = i % EXHAUSTED_EVERY == EXHAUSTED_EVERY - 1;
        keys.push(key);
        values.push(BucketState {
            tat_ns: if exhausted { exhausted_tat } else { 0 },
            passed: u64::from(i % 1000) + if exhausted { BURST } else { 0 },
            dropped: if exhausted {
                u64::from(i % 5000) + 1
            } else {
                0
            },
            would_drop: 0,
            flags: 0,
        });
        if keys.len() == V4_KEYS as usize || i + 1 == KEYS {
            bench::update_batch(fd, &keys, &values).context("filling the agent's map")?;
            keys.clear();
            values.clear();
        }
    }
    Ok(())
}

pub(crate) struct Counted {
    pub(crate) secs: f64,
    pub(crate) bytes: u64,
    pub(crate) entries: u64,
    pub(crate) max_rss_kb: u64,
    /// The output, when short (kept up to 64 kB).
    pub(crate) output: Vec<u8>,
}

/// Runs `argv`, reads its output as it comes, counting bytes and occurrences of `needle`;
/// fails when it fails. Its wall time, and its peak memory while it wrote.
pub(crate) fn run_counted(argv: &[String], needle: Option<&[u8]>) -> anyhow::Result<Counted> {
    let started = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", argv.join(" ")))?;
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    let mut entries = 0u64;
    let mut carry: Vec<u8> = Vec::new();
    let mut output = Vec::new();
    // Its peak memory, sampled while it writes: the kernel's own figure at exit (`wait4`'s
    // ru_maxrss) is not usable here (it reports this process's size from before the exec).
    let mut max_rss_kb = 0;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Ok(kb) = proc_status_kb(child.id() as i32, "VmHWM") {
            max_rss_kb = max_rss_kb.max(kb);
        }
        bytes += n as u64;
        if output.len() < 65536 {
            output.extend_from_slice(&buf[..n.min(65536 - output.len())]);
        }
        if let Some(needle) = needle {
            carry.extend_from_slice(&buf[..n]);
            entries += carry.windows(needle.len()).filter(|w| w == &needle).count() as u64;
            let keep = carry.len().min(needle.len() - 1);
            carry.drain(..carry.len() - keep);
        }
    }
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr)?;
    let mut status = 0;
    // SAFETY: waits for our own child, whose pid we hold; `Child` is not waited for again.
    let pid = unsafe { libc::waitpid(child.id() as i32, &mut status, 0) };
    let secs = started.elapsed().as_secs_f64();
    ensure!(pid > 0, "waitpid: {}", std::io::Error::last_os_error());
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{} failed ({status}): {}",
        argv.join(" "),
        stderr.trim()
    );
    Ok(Counted {
        secs,
        bytes,
        entries,
        max_rss_kb,
        output,
    })
}

/// The agent's pid: the peer of a connection to its API socket.
fn agent_pid(socket: &Path) -> anyhow::Result<i32> {
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let creds = nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(creds.pid())
}

/// A `kB` line of `/proc/PID/status`.
fn proc_status_kb(pid: i32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub(crate) fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} kB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

pub(crate) fn report(quick: bool, machine: &bench::Machine, result: &ScaleResult) -> String {
    let mut out = String::new();
    let command = bench::command(quick);
    let _ = writeln!(out, "{SECTION}\n");
    let _ = writeln!(
        out,
        "`{command}` — {}, {:.0} s for this part. Machine: {} CPUs, {}; kernel {}; {}; load \
         average {} before, {} after.\n",
        machine.date,
        result.secs,
        machine.nproc,
        machine.cpu,
        machine.kernel,
        result.bpftool_version,
        machine.load_before,
        machine.load_after,
    );
    let _ = writeln!(
        out,
        "The real agent (`limiter agent`, release build) on a veth of its own in a network \
         namespace, `max_keys = {}` (filled to the last entry, an LRU map evicts a few: its \
         free entries are spread over per-CPU lists), `ipv6_prefix = 128`; its pinned bucket \
         map filled with {} \
         keys through `BPF_MAP_UPDATE_BATCH` in {:.1} s — the 65 536 IPv4 sources of \
         198.18.0.0/16 and IPv6 /128 sources of 2001:2::/96, one in {EXHAUSTED_EVERY} of them \
         exhausted for the next hour. The agent then reported {} keys tracked, {} exhausted. \
         Each command is a process of its own, as an operator runs it; its output is read \
         through a pipe as fast as it comes (and counted). {} rounds, the commands in an order \
         rotated every round; median and min–max of the wall time.\n",
        bench::thousands(MAX_KEYS),
        bench::thousands(result.keys),
        result.fill_secs,
        result.tracked,
        result.exhausted,
        result.rounds,
    );
    let _ = writeln!(
        out,
        "| command | seconds | min–max | output | entries | its peak memory (while it wrote) | \
         what |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for t in result.timings.iter().chain(std::iter::once(&result.reset)) {
        let (min, max) = t.range();
        let entries = match (t.entries, t.label.contains("reset")) {
            (_, true) => format!(
                "{} reset",
                result
                    .reset_counts
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (Some(n), _) => n.to_string(),
            (None, _) => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3}–{:.3} | {} | {entries} | {:.0} MB | {} |",
            t.label,
            t.median(),
            min,
            max,
            size_text(t.bytes),
            mb(t.max_rss_kb),
            t.what
        );
    }
    let list = result.timing("`limiter list --json`");
    let dump = result.timing("`bpftool map dump");
    let dump_json = result.timing("`bpftool -j");
    if let (Some(list), Some(dump), Some(dump_json)) = (list, dump, dump_json) {
        let _ = writeln!(
            out,
            "\n`limiter list --json` of every key takes {:.2} s, {:.1}× the time of `bpftool map \
             dump` ({:.2} s; {:.2} s with `-j`) — and gives each key's rule, rate, burst, \
             remaining, exhausted, retry-after, passed and dropped, decoded, where bpftool \
             prints bytes. The agent reads the map with `BPF_MAP_LOOKUP_BATCH` (8 192 entries a \
             call); bpftool makes two system calls per entry (`get_next_key`, `lookup`).",
            list.median(),
            list.median() / dump.median(),
            dump.median(),
            dump_json.median(),
        );
    }
    let per_key = result.bytes_per_key();
    let _ = writeln!(
        out,
        "\n**Memory.** The agent's resident memory: {:.0} MB with the keys loaded, {:.0} MB \
         after the rounds, {:.0} MB at its peak (VmHWM): serving a full list, and the usage \
         history, which every 5 s compares every tracked key's counters with the sample before \
         (40 bytes a key kept, twice that while it samples) and holds the current minute's \
         counts of every key with traffic in it (here all of them: about 100 bytes a key) to \
         keep its busiest. The kernel's bucket map: {} bytes for {} entries (`bpftool map show`: the memory the \
         kernel charges for it, preallocated in full), {per_key:.0} bytes per key — the key \
         ({} bytes) and value ({} bytes) make {} bytes, and the LRU hash's element header, \
         its bucket array and the per-CPU free lists make the rest.",
        mb(result.agent_rss_idle_kb),
        mb(result.agent_rss_after_kb),
        mb(result.agent_hwm_kb),
        bench::thousands(result.map_bytes.min(u64::from(u32::MAX)) as u32),
        bench::thousands(result.map_entries.min(u64::from(u32::MAX)) as u32),
        result.key_size,
        result.value_size,
        result.key_size + result.value_size,
    );
    out
}
