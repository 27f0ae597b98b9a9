//! `cargo xtask bench --only fleet`: fleet mode (`[fleet]`, docs/fleet.md) measured — how far
//! three hosts sharing one quota through one Redis go over it, what a host costs Redis, and
//! what fleet mode costs a request in the kernel.
//!
//! - **Over-admission.** Three gateways of the test bed (three namespace pairs, each with its
//!   agent, its nginx and its `wrk`), one `redis-server` on a Unix socket, an API key with a
//!   quota of [`QUOTA`] an hour and no rate that binds. `wrk` floods each gateway with the key
//!   at once, as fast as it goes, for longer than a few syncs; what passed is counted in the
//!   nginx access logs (the kernel's 429s never reach nginx). Each run takes a key of its own:
//!   *fresh*, its first requests the flood's (each host counts from zero against the quota
//!   until its first sync), or *leased*, one request through each host and two sync intervals
//!   before the flood (each host holds its lease when the flood starts). `sync_ms` 10, 100,
//!   1000; the agents are started anew for each.
//! - **Redis load.** One agent, [`LOAD_KEYS`] keys with counts in the window now (written into
//!   its `QUOTAS` map, as the tests do), at `sync_ms` 100: first with every key counting one
//!   more request every sync interval (the map's words bumped by this process), then idle.
//!   Redis's `INFO` before and after each phase: scripts, commands and its CPU per second.
//! - **Kernel cost.** The keyed keep-alive request of a key with a quota (the cost benchmark's
//!   arm) for three keys of one limiter, one of which has its count moved by the quota-adjust
//!   program every 100 requests, as a fleet's agent does at each sync; one packet per
//!   `BPF_PROG_TEST_RUN`, interleaved.
//!
//! Nothing is asserted: the numbers are reported.

use crate::bench::{self, median, Limiter, INTERRUPTED};
use crate::bench_keys::{process_cpu_seconds, which, Wrk};
use anyhow::{bail, ensure, Context};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use aya::programs::Xdp;
use limiter_common::bucket::Limit;
use limiter_common::keyhash::KeyHasher;
use limiter_common::maps::{
    ApiKeyEntry, QuotaAdjust, ADJUST_DONE, API_KEYS_MAP, PERIOD_DAY, QUOTAS_MAP, QUOTA_ADJUST_PROG,
};
use limiter_common::quota::{self, Period};
use limiter_tests::agent::{ensure_bpffs, Agent, TEST_BPFFS};
use limiter_tests::gateway::{get_once, ClientPass, Nginx};
use limiter_tests::netns::TestNet;
use limiter_tests::redis::RedisServer;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) const SECTION: &str = "## Fleet";

const HOSTS: usize = 3;
/// The key's quota: requests an hour (an hour, so that no run straddles a window's end).
const QUOTA: u64 = 1000;
const SYNCS_MS: [u64; 3] = [10, 100, 1000];
/// wrk's connections per gateway.
const CONNECTIONS: u32 = 4;
/// The Redis load: keys, and the sync interval.
const LOAD_KEYS: u32 = 10_000;
const LOAD_SYNC_MS: u64 = 100;
/// Requests between two moves of the fleet key's count in the kernel-cost part (a sync).
const REQUESTS_PER_SYNC: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Start {
    /// The key's first requests are the flood's.
    Fresh,
    /// Every host leased the key before the flood.
    Leased,
}

/// One flood through the three gateways.
struct Run {
    /// 200s per gateway.
    passed: [u64; HOSTS],
    /// The fastest gateway's requests per second (200s and 429s).
    rate: f64,
    socket_errors: u64,
}

impl Run {
    fn total(&self) -> u64 {
        self.passed.iter().sum()
    }
}

/// What the Redis load measured over one phase.
struct Load {
    secs: f64,
    scripts: f64,
    commands: f64,
    /// Per second, by command (`INFO commandstats`), the busiest first.
    by_command: Vec<(String, f64)>,
    /// Redis's CPU-seconds per second (user + sys).
    redis_cpu: f64,
    agent_cpu: f64,
    /// The agent's sync lag (`limiter fleet --json`), sampled: median and max, ms.
    lag_ms: (f64, f64),
    /// Keys the agent reported at its last sync.
    keys: u64,
}

/// The kernel-cost part's keys: 0 (the cost benchmark's) and 2 without a fleet, FLEET's count
/// moved as a fleet's agent does.
const FLEET: usize = 1;
const ARMS: usize = 3;
const FLEET_TOKEN: &[u8] = b"k-fleet-leased-5c1e";
const SECOND_TOKEN: &[u8] = b"k-fleet-alone-9d04a";

/// The kernel-cost part's result: ns per request, the median of each round.
struct Cost {
    alone: Vec<f64>,
    fleet: Vec<f64>,
    /// A second key without a fleet.
    second: Vec<f64>,
    adjusts: u64,
    checks: Vec<String>,
}

/// Runs the part; its section of BENCHMARKS.md.
pub(crate) fn run(quick: bool) -> anyhow::Result<String> {
    for tool in ["nginx", "wrk", limiter_tests::redis::REDIS_SERVER_BIN] {
        ensure!(
            which(tool),
            "the fleet benchmark needs {tool} (Debian nginx-light, wrk, redis-server; `cargo \
             xtask setup` installs them)"
        );
    }
    let started = Instant::now();
    let load_before = bench::loadavg();
    let reps = if quick { 1 } else { 5 };
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n")?;

    println!("fleet: {HOSTS} hosts, quota {QUOTA} an hour, sync_ms {SYNCS_MS:?}, {reps} runs each");
    let redis = RedisServer::start();
    let runs = over_admission(&redis, &secret, reps)?;
    drop(redis);

    println!(
        "fleet: Redis load of one host with {} keys at sync_ms {LOAD_SYNC_MS}",
        bench::thousands(LOAD_KEYS)
    );
    let redis = RedisServer::start();
    let loads = redis_load(&redis, &secret, quick)?;
    drop(redis);

    println!("fleet: the kernel's cost of a keyed request, with and without a fleet");
    let cost = kernel_cost(quick)?;

    let machine = bench::Machine::read(load_before);
    Ok(report(
        quick,
        &machine,
        started.elapsed().as_secs_f64(),
        &runs,
        &loads,
        &cost,
    ))
}

fn config(redis: &str, host: &str, sync_ms: u64, secret: &Path, quota: u64) -> String {
    format!(
        r#"
[limits]
rate = 100000000
burst = 100000000

[http]
ports = [8080]
rate = 100000000
burst = 100000000
keep_alive = true
secret_file = "{}"
quota = {quota}
period = "hour"

[fleet]
redis = "{redis}"
host = "{host}"
sync_ms = {sync_ms}
"#,
        secret.display()
    )
}

/// A gateway of the test bed: its namespaces, nginx, and the clients' bare `XDP_PASS` (the
/// kernel's 429s are `XDP_TX` frames).
struct Gateway {
    net: TestNet,
    _pass: ClientPass,
    nginx: Nginx,
}

impl Gateway {
    fn passed(&self) -> u64 {
        self.nginx
            .logged_statuses()
            .iter()
            .filter(|s| **s == 200)
            .count() as u64
    }
}

/// Waits, if needed, until `needed` of wall-clock time fits in one UTC hour: a run's key must
/// not change windows in the middle.
fn within_one_hour(needed: Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let into = now % 3600.0;
    if into + needed.as_secs_f64() > 3600.0 {
        std::thread::sleep(Duration::from_secs_f64(3600.0 - into + 0.5));
    }
}

/// Waits until every agent says it is connected to Redis.
fn wait_connected(agents: &[Agent]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for agent in agents {
        while agent.json(&["fleet"])["connected"] != true {
            ensure!(
                Instant::now() < deadline,
                "the agent did not connect to Redis in 10 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// The floods: for each `sync_ms`, `reps` runs of each start, alternating.
fn over_admission(
    redis: &RedisServer,
    secret: &Path,
    reps: usize,
) -> anyhow::Result<Vec<(u64, Start, Vec<Run>)>> {
    let gateways: Vec<Gateway> = (0..HOSTS)
        .map(|_| {
            let net = TestNet::new(1, 1);
            let _pass = ClientPass::attach(&net);
            let nginx = Nginx::start(&net);
            Gateway { net, _pass, nginx }
        })
        .collect();
    let mut results = Vec::new();
    for sync_ms in SYNCS_MS {
        let agents: Vec<Agent> = gateways
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let text = config(&redis.url(), &format!("gw-{i}"), sync_ms, secret, QUOTA);
                Agent::start(&g.net, Some(&text))
            })
            .collect();
        wait_connected(&agents)?;
        let mut fresh = Vec::new();
        let mut leased = Vec::new();
        for rep in 0..reps {
            for start in [Start::Fresh, Start::Leased] {
                if INTERRUPTED.load(Ordering::Relaxed) {
                    bail!("interrupted");
                }
                let token = format!("fleet-{sync_ms}-{rep}-{start:?}-{}", std::process::id());
                let run = flood(&gateways, &token, sync_ms, start)?;
                println!(
                    "  sync_ms {sync_ms:>4}, {start:?}: {} passed {:?}, {:.0} requests/s on \
                     the fastest gateway",
                    run.total(),
                    run.passed,
                    run.rate
                );
                match start {
                    Start::Fresh => fresh.push(run),
                    Start::Leased => leased.push(run),
                }
            }
        }
        results.push((sync_ms, Start::Fresh, fresh));
        results.push((sync_ms, Start::Leased, leased));
    }
    Ok(results)
}

/// One flood of a new key through every gateway at once.
fn flood(gateways: &[Gateway], token: &str, sync_ms: u64, start: Start) -> anyhow::Result<Run> {
    // Long enough for a few syncs of every host after the quota is gone.
    let seconds = (3 * sync_ms).div_ceil(1000).max(1);
    // Two syncs of every host after the lease requests: each then holds its share.
    let lease_wait = Duration::from_millis(2 * sync_ms + 200);
    within_one_hour(Duration::from_secs(seconds + 3) + lease_wait);
    let before: Vec<u64> = gateways.iter().map(Gateway::passed).collect();
    if start == Start::Leased {
        let header = format!("X-API-Key: {token}");
        for g in gateways {
            let client = IpAddr::V4(g.net.client_addrs[0]);
            let status = get_once(&g.net, client, Some(&header)).status;
            ensure!(status == 200, "a first request of a new key got {status}");
        }
        std::thread::sleep(lease_wait);
    }
    let floods = gateways
        .iter()
        .map(|g| {
            Wrk::spawn(
                &g.net.clients.name,
                token,
                CONNECTIONS,
                seconds,
                false,
                None,
            )
        })
        .collect::<anyhow::Result<Vec<Wrk>>>()?;
    let mut rate = 0.0f64;
    let mut socket_errors = 0;
    for wrk in floods {
        let (requests, _rejected, errors, _cpu) = wrk.finish()?;
        rate = rate.max(requests as f64 / seconds as f64);
        socket_errors += errors;
    }
    // nginx logs a request after its response.
    std::thread::sleep(Duration::from_millis(300));
    let mut passed = [0; HOSTS];
    for (i, g) in gateways.iter().enumerate() {
        passed[i] = g.passed() - before[i];
    }
    Ok(Run {
        passed,
        rate,
        socket_errors,
    })
}

/// One agent with LOAD_KEYS keys in its QUOTAS map: Redis's work for it, with traffic on every
/// key and idle.
fn redis_load(redis: &RedisServer, secret: &Path, quick: bool) -> anyhow::Result<Vec<Load>> {
    let secs = if quick { 4.0 } else { 10.0 };
    within_one_hour(Duration::from_secs_f64(3.0 * secs + 5.0));
    let net = TestNet::new(0, 1);
    // A quota no key uses up: the leases stay large and every key is reported every sync.
    let text = config(
        &redis.url(),
        "gw-load",
        LOAD_SYNC_MS,
        secret,
        u64::from(u32::MAX),
    );
    let agent = Agent::start(&net, Some(&text));
    wait_connected(std::slice::from_ref(&agent))?;
    let pin = agent.pin_path.join(QUOTAS_MAP);
    let data = MapData::from_pin(&pin).with_context(|| format!("opening {}", pin.display()))?;
    let mut counts: BpfHashMap<MapData, u64, u64> =
        BpfHashMap::try_from(Map::from_map_data(data)?).context("QUOTAS")?;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let tag = quota::window(Period::Hour, now_secs).tag;
    // Token hashes of keys no one holds: the agent reports whatever its map counts.
    let hashes: Vec<u64> = (0..u64::from(LOAD_KEYS))
        .map(|i| (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .collect();
    for &hash in &hashes {
        let word = quota::Usage { tag, used: 1 }.word();
        counts.insert(hash, word, 0).context("writing QUOTAS")?;
    }
    // The first sync of every key (from no lease) before measuring.
    std::thread::sleep(Duration::from_millis(5 * LOAD_SYNC_MS));
    let mut loads = Vec::new();
    // Every key counting one more request each sync interval, then no traffic at all.
    let stop = Arc::new(AtomicBool::new(false));
    let bumper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || bump(&mut counts, &hashes, &stop))
    };
    let with_traffic = measure(redis, &agent, secs);
    stop.store(true, Ordering::Relaxed);
    bumper
        .join()
        .map_err(|_| anyhow::anyhow!("the thread counting requests panicked"))??;
    loads.push(with_traffic?);
    loads.push(measure(redis, &agent, secs)?);
    Ok(loads)
}

/// One more request on every key each sync interval, as traffic would count it, until `stop`.
/// (A plain read and write of each word: when it falls between the agent's reading a word and
/// moving it, the move is lost — the counts then drift, the work asked of Redis is the same.)
fn bump(
    counts: &mut BpfHashMap<MapData, u64, u64>,
    hashes: &[u64],
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for hash in hashes {
            if let Ok(word) = counts.get(hash, 0) {
                let mut usage = quota::Usage::from_word(word);
                usage.used = usage.used.saturating_add(1);
                counts.insert(hash, usage.word(), 0)?;
            }
        }
        tick += Duration::from_millis(LOAD_SYNC_MS);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
    }
    Ok(())
}

/// Redis's `INFO` (stats, CPU, commands) as numbers: `cmdstat_NAME` is the command's calls.
fn redis_info(redis: &RedisServer) -> HashMap<String, f64> {
    redis
        .cli(&["INFO", "stats", "cpu", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (key, value) = line.trim().split_once(':')?;
            let value = if key.starts_with("cmdstat_") {
                value
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?
            } else {
                value.parse().ok()?
            };
            Some((key.to_owned(), value))
        })
        .collect()
}

/// Redis's work and the agent's over `secs`.
fn measure(redis: &RedisServer, agent: &Agent, secs: f64) -> anyhow::Result<Load> {
    let pid = agent.pid().context("the agent is not running")?;
    let before = redis_info(redis);
    let agent_before = process_cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let mut lags = Vec::new();
    let mut keys = 0;
    while started.elapsed().as_secs_f64() < secs {
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let fleet = agent.json(&["fleet"]);
        lags.extend(fleet["lag_ms"].as_f64());
        keys = fleet["hosts"]
            .as_array()
            .and_then(|hosts| hosts.iter().find(|h| h["host"] == "gw-load"))
            .and_then(|h| h["keys"].as_u64())
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(250));
    }
    let after = redis_info(redis);
    let agent_cpu = process_cpu_seconds(pid).unwrap_or(0.0) - agent_before;
    let elapsed = started.elapsed().as_secs_f64();
    let delta = |key: &str| {
        (after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)) / elapsed
    };
    let mut by_command: Vec<(String, f64)> = after
        .keys()
        .filter_map(|key| Some((key.strip_prefix("cmdstat_")?.to_owned(), delta(key))))
        .filter(|(_, per_sec)| *per_sec > 0.0)
        .collect();
    by_command.sort_by(|a, b| b.1.total_cmp(&a.1));
    let max_lag = lags.iter().copied().fold(0.0, f64::max);
    Ok(Load {
        secs: elapsed,
        scripts: delta("cmdstat_evalsha") + delta("cmdstat_eval"),
        commands: delta("total_commands_processed"),
        by_command,
        redis_cpu: delta("used_cpu_user") + delta("used_cpu_sys"),
        agent_cpu: agent_cpu / elapsed,
        lag_ms: (median(&mut lags), max_lag),
        keys,
    })
}

/// The keyed keep-alive request of a key with a quota (the cost benchmark's arm) for three
/// keys of one limiter on the same plan, each on a connection of its own: the count of the
/// second one moved by the quota-adjust program every REQUESTS_PER_SYNC requests, as a fleet's
/// agent does; the other two without a fleet (two of them show how far two keys of the same
/// program differ). One program and one map for all three: no difference of JIT image or map
/// between them.
fn kernel_cost(quick: bool) -> anyhow::Result<Cost> {
    let (rounds, per_round) = if quick { (5, 1000) } else { (15, 3000) };
    let bpffs = Path::new(TEST_BPFFS);
    ensure_bpffs(bpffs);
    bench::remove_stale_pin_dirs(bpffs);
    let object = bench::object_dir().join("limiter");
    let mut limiter = Limiter::load(&object, bpffs, "fleet", 1024, bench::http_config())?;
    // TOKEN_QUOTA on plan 1, a quota a day no run uses up.
    limiter.serve_api_keys()?;
    let hash_of = |token: &[u8]| {
        let mut hasher = KeyHasher::new(bench::HTTP_SECRET[0], bench::HTTP_SECRET[1]);
        hasher.write(token);
        hasher.finish()
    };
    let tokens: [&[u8]; ARMS] = [bench::TOKEN_QUOTA, FLEET_TOKEN, SECOND_TOKEN];
    {
        let mut keys: BpfHashMap<_, u64, ApiKeyEntry> = BpfHashMap::try_from(
            limiter
                .ebpf
                .map_mut(API_KEYS_MAP)
                .context("no API_KEYS map")?,
        )?;
        let entry = ApiKeyEntry {
            limit: Limit::new(1_000_000_000, 1_000_000_000),
            plan: 1,
            _pad: 0,
        };
        for token in [FLEET_TOKEN, SECOND_TOKEN] {
            keys.insert(hash_of(token), entry, 0)?;
        }
        let adjust: &mut Xdp = limiter
            .ebpf
            .program_mut(QUOTA_ADJUST_PROG)
            .context("the object has no quota-adjust program")?
            .try_into()?;
        adjust
            .load()
            .map_err(|e| anyhow::anyhow!("loading {QUOTA_ADJUST_PROG} (verifier): {e:#?}"))?;
    }
    let adjust = bench::program(&limiter.ebpf, QUOTA_ADJUST_PROG)?;
    let program = limiter.program()?;
    let fleet_hash = hash_of(FLEET_TOKEN);
    let mut adjusts = 0u64;
    let mut move_count = |delta: i64| -> anyhow::Result<()> {
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        // Plan 1's window: a day (taken at each move: a run may cross midnight UTC).
        let day = quota::window(Period::Day, now_secs).tag;
        debug_assert_eq!(day >> quota::TAG_PERIOD_SHIFT, PERIOD_DAY);
        let request = QuotaAdjust {
            hash: fleet_hash,
            delta,
            tag: day,
            _pad: 0,
        };
        let (answer, _) = bench::test_run(adjust, request.as_bytes(), 1)?;
        ensure!(
            answer == ADJUST_DONE,
            "the quota-adjust program answered {answer}"
        );
        adjusts += 1;
        Ok(())
    };
    let mut requests: Vec<Vec<u8>> = tokens
        .iter()
        .enumerate()
        .map(|(arm, token)| {
            let mut request = bench::http_request(Some(token));
            let at = bench::TCP_SPORT_AT;
            request[at..at + 2].copy_from_slice(&(65_000 + arm as u16).to_be_bytes());
            request
        })
        .collect();
    let mut seqs = [1u32; ARMS];
    let mut runs = [0u64; ARMS];
    let mut passed = [0u64; ARMS];
    let mut send = |arm: usize| -> anyhow::Result<f64> {
        // The connection's next request.
        seqs[arm] = seqs[arm].wrapping_add(bench::HTTP_REQUEST_LEN);
        let at = bench::TCP_SEQ_AT;
        requests[arm][at..at + 4].copy_from_slice(&seqs[arm].to_be_bytes());
        let (verdict, ns) = bench::test_run(program, &requests[arm], 1)?;
        runs[arm] += 1;
        passed[arm] += u64::from(verdict == bench::XDP_PASS);
        Ok(ns as f64)
    };
    // The fleet key's first request makes its count; its lease then leaves it mid-way (a
    // lease of half the plan's quota).
    send(FLEET)?;
    move_count(i64::from(u32::MAX / 2))?;
    let mut result = Cost {
        alone: Vec::new(),
        fleet: Vec::new(),
        second: Vec::new(),
        adjusts: 0,
        checks: Vec::new(),
    };
    for round in 0..rounds {
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for n in 0..per_round {
            for i in 0..ARMS {
                let arm = (i + n + round) % ARMS;
                samples[arm].push(send(arm)?);
            }
            if (n + 1) % REQUESTS_PER_SYNC == 0 {
                // A sync: the count back where the renewed lease puts it.
                move_count(-(REQUESTS_PER_SYNC as i64))?;
            }
        }
        let [alone, fleet, second] = samples.map(|mut s| median(&mut s));
        result.alone.push(alone);
        result.fleet.push(fleet);
        result.second.push(second);
        eprint!("\rround {}/{rounds}", round + 1);
    }
    eprintln!();
    result.adjusts = adjusts;
    if passed != runs {
        result.checks.push(format!(
            "requests passed {passed:?} of {runs:?}: all of them should have"
        ));
    }
    let keyed = limiter.counter(limiter_common::maps::Counter::KeyedRequests)?;
    if keyed != runs.iter().sum::<u64>() {
        result.checks.push(format!(
            "the limiter counted {keyed} keyed requests, {} were sent",
            runs.iter().sum::<u64>()
        ));
    }
    Ok(result)
}

/// Median and min–max of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    let mid = median(&mut sorted);
    (
        mid,
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    )
}

/// The stated bound for a run: the quota, plus on every host but one what the key's first
/// sync interval let through there before its first sync (nothing for a leased key; for a
/// fresh one the host's request rate over one interval, at most the quota).
fn bound(start: Start, sync_ms: u64, rate: f64) -> u64 {
    let first = match start {
        Start::Leased => 0,
        Start::Fresh => ((rate * sync_ms as f64 / 1000.0).ceil() as u64).min(QUOTA),
    };
    QUOTA + (HOSTS as u64 - 1) * first
}

fn report(
    quick: bool,
    machine: &bench::Machine,
    total_secs: f64,
    runs: &[(u64, Start, Vec<Run>)],
    loads: &[Load],
    cost: &Cost,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{SECTION}\n");
    let command = format!("{} --only fleet", bench::command(quick));
    let _ = writeln!(out, "{}", machine.header(&command, total_secs));
    let _ = writeln!(out, "### Over-admission: {HOSTS} hosts, one quota\n");
    let _ = writeln!(
        out,
        "{HOSTS} gateways on one machine, each its own pair of network namespaces with its \
         agent (release build, `[http] keep_alive = true`, no rate that binds), its nginx and \
         its `wrk` (one thread, {CONNECTIONS} keep-alive connections); one `redis-server` on a \
         Unix socket. An API key with a quota of {QUOTA} requests an hour, sent through the \
         three gateways at once as fast as they answer; what passed is the 200s in the nginx \
         access logs. Every run has a key of its own: **fresh** — the flood's requests are the \
         key's first, so every host counts from zero against the quota until its first sync — \
         or **leased** — one request through each gateway, then two sync intervals, so every \
         host holds its lease when the flood starts. The agents are started anew for each \
         `sync_ms`; the runs alternate fresh and leased. The stated bound (docs/fleet.md): \
         Q + (hosts − 1) × min(Q, what a host lets through of the key before its first sync of \
         the window) — Q for a leased key; for a fresh one the first interval's share is taken \
         as the fastest gateway's request rate (200s and the kernel's 429s) × `sync_ms`.\n"
    );
    let _ = writeln!(
        out,
        "| `sync_ms` | key | runs | passed (median) | min–max | passed / Q | over Q (median) \
         | min–max | stated bound | every run within it | requests/s, fastest gateway |"
    );
    let _ = writeln!(
        out,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    );
    let mut errors = 0;
    let mut over_bound = 0;
    for (sync_ms, start, runs) in runs {
        let passed: Vec<f64> = runs.iter().map(|r| r.total() as f64).collect();
        let rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        let (mid, lo, hi) = spread(&passed);
        let (rate, _, _) = spread(&rates);
        errors += runs.iter().map(|r| r.socket_errors).sum::<u64>();
        let q = QUOTA as f64;
        let bound = bound(*start, *sync_ms, rate);
        over_bound += usize::from(hi > bound as f64);
        let _ = writeln!(
            out,
            "| {sync_ms} | {} | {} | {mid:.0} | {lo:.0}–{hi:.0} | {:.2} | {:+.0} | {:+.0}–{:+.0} \
             | ≤ {bound} | {} | {} |",
            match start {
                Start::Fresh => "fresh",
                Start::Leased => "leased",
            },
            runs.len(),
            mid / q,
            mid - q,
            lo - q,
            hi - q,
            if hi <= bound as f64 { "yes" } else { "**no**" },
            bench::thousands(rate as u32),
        );
    }
    let per_host: Vec<String> = runs
        .iter()
        .flat_map(|(sync_ms, start, runs)| {
            runs.iter()
                .map(move |r| format!("{sync_ms}/{start:?}: {:?}", r.passed))
        })
        .collect();
    if over_bound > 0 {
        let _ = writeln!(
            out,
            "\n{over_bound} of {} rows went over the stated bound in at least one run.",
            runs.len()
        );
    }
    let _ = writeln!(
        out,
        "\nPassed per gateway, run by run: {}. wrk's socket errors: {errors}.\n",
        per_host.join("; ")
    );

    let _ = writeln!(
        out,
        "### Redis per host: {} keys at `sync_ms` {LOAD_SYNC_MS}\n",
        bench::thousands(LOAD_KEYS)
    );
    let _ = writeln!(
        out,
        "One agent and its Redis (Unix socket); {} keys with a count in the hour now, written \
         into the agent's `QUOTAS` map (as traffic would leave them; a key's quota no run uses \
         up). With traffic, this process adds a request to every key's count every \
         {LOAD_SYNC_MS} ms (every key active at every sync: the worst case); idle, the counts \
         stay (the agent reports a key without new requests about once a second, to keep its lease \
         reserved). \
         Redis's `INFO` before and after each phase; the sync lag is `limiter fleet --json`'s \
         `lag_ms`, sampled every 250 ms. CPU is CPU-seconds per second (1.00 = one core).\n",
        bench::thousands(LOAD_KEYS)
    );
    let _ = writeln!(
        out,
        "| phase | seconds | keys reported at the last sync | scripts/s | reports a key a second | commands/s (Redis's count) \
         | Redis CPU | agent CPU | sync lag, median (max) |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for (load, phase) in loads.iter().zip(["every key counting", "idle"]) {
        let _ = writeln!(
            out,
            "| {phase} | {:.1} | {} | {} | {:.1} | {} | {:.2} | {:.2} | {:.0} ms ({:.0} ms) |",
            load.secs,
            bench::thousands(load.keys as u32),
            bench::thousands(load.scripts as u32),
            load.scripts / LOAD_KEYS as f64,
            bench::thousands(load.commands as u32),
            load.redis_cpu,
            load.agent_cpu,
            load.lag_ms.0,
            load.lag_ms.1,
        );
    }
    for (load, phase) in loads.iter().zip(["every key counting", "idle"]) {
        let commands: Vec<String> = load
            .by_command
            .iter()
            .take(8)
            .map(|(name, per_sec)| format!("{name} {}", bench::thousands(*per_sec as u32)))
            .collect();
        let _ = writeln!(
            out,
            "\nBy command ({phase}), per second: {}.",
            commands.join(", ")
        );
    }
    let late: Vec<String> = loads
        .iter()
        .zip(["with traffic", "idle"])
        .filter(|(load, _)| load.lag_ms.0 > LOAD_SYNC_MS as f64)
        .map(|(load, phase)| {
            format!(
                "{phase}, {:.1} syncs a second instead of {}",
                load.scripts / LOAD_KEYS as f64,
                1000 / LOAD_SYNC_MS
            )
        })
        .collect();
    if !late.is_empty() {
        let _ = writeln!(
            out,
            "\nA sync of {} keys took the agent longer than `sync_ms` (the next one waits for \
             it): {}.",
            bench::thousands(LOAD_KEYS),
            late.join("; ")
        );
    }
    if let Some(busy) = loads.first() {
        let per_core = 1.0 / busy.redis_cpu.max(1e-6);
        let _ = writeln!(
            out,
            "\n**How many hosts one Redis serves.** Redis runs the scripts on one thread: with \
             every key active, one host of {keys} keys at `sync_ms` {LOAD_SYNC_MS} takes \
             {cpu:.2} of a core for {key_syncs} key-syncs a second, so one Redis core serves \
             about {per_core:.1} such hosts ({per_second} key-syncs a second). \
             Redis's work is one script per active key per host per sync, so it goes with \
             keys × hosts ÷ `sync_ms`: ten times the interval, ten times the hosts or the \
             keys (derived from this measurement, not measured).",
            keys = bench::thousands(LOAD_KEYS),
            cpu = busy.redis_cpu,
            key_syncs = bench::thousands(busy.scripts as u32),
            per_second = bench::thousands((busy.scripts / busy.redis_cpu.max(1e-6)) as u32),
        );
    }

    let _ = writeln!(out, "\n### The kernel's cost per request\n");
    let ratio = |of: &[f64]| -> Vec<f64> {
        of.iter()
            .zip(&cost.alone)
            .map(|(x, alone)| x / alone.max(1.0))
            .collect()
    };
    let _ = writeln!(
        out,
        "The request path is the program without a fleet: fleet mode only moves a key's count \
         word between requests (the quota-adjust program, run by the agent at each sync). \
         Measured as the cost benchmark's arm \"HTTP request with an API key with a quota, \
         keep-alive\" for three keys of one limiter on the same plan, each on a connection of \
         its own: one whose count was moved to mid-way (a lease of half the quota) and is moved \
         back by {REQUESTS_PER_SYNC} every {REQUESTS_PER_SYNC} requests ({} moves), as a \
         fleet's agent does, and two without a fleet (the second shows how far two keys of the \
         same program and map differ). One packet per `BPF_PROG_TEST_RUN` (the kernel's time \
         of the run, harness included), the three interleaved; {} rounds, the median of each \
         round's samples; ratios per round.\n",
        cost.adjusts,
        cost.alone.len()
    );
    let _ = writeln!(
        out,
        "| request: keyed, keep-alive, a quota | ns (median of rounds) | min–max | ratio to \
         without a fleet | min–max |"
    );
    let _ = writeln!(out, "| --- | ---: | ---: | ---: | ---: |");
    for (name, values) in [
        ("without a fleet", &cost.alone),
        ("its count moved as a fleet does", &cost.fleet),
        ("without a fleet, a second key", &cost.second),
    ] {
        let (ns, lo, hi) = spread(values);
        let (r, r_lo, r_hi) = spread(&ratio(values));
        let _ = writeln!(
            out,
            "| {name} | {ns:.0} | {lo:.0}–{hi:.0} | {r:.3} | {r_lo:.3}–{r_hi:.3} |"
        );
    }
    if !cost.checks.is_empty() {
        let _ = writeln!(out, "\n**Checks that failed:** {}.", cost.checks.join("; "));
    }
    out
}
