//! `cargo xtask bench --only keys`: a keyed flood against a real nginx, and what each way of
//! limiting API keys costs the gateway host.
//!
//! The test bed's two namespaces on a veth pair: nginx (one worker, pinned to CPU 1) serves a
//! small JSON file on 198.18.0.1:8080; `wrk` (pinned to CPU 0) floods it with one abusive API key
//! on 32 keep-alive connections, while 16 well-behaved keys send 5 requests a second each on
//! keep-alive connections of their own. The arms, one after the other, each on a fresh test bed:
//!
//! - **no limit**: nginx alone (the abusive key is served);
//! - **limiter**: the agent on the gateway's veth with `[http]` (10/s, burst 20 per key): the
//!   abusive key's requests are answered with 429 by the kernel, which closes the connection;
//! - **limiter, keep_alive**: the same with `[http] keep_alive = true`: the connection stays;
//! - **nginx `limit_req`** keyed on `$http_x_api_key` (10 r/s, burst 20, `nodelay`, status 429);
//! - **HAProxy** in front of nginx, a stick table on `req.hdr(x-api-key)` denying with 429 over
//!   10 requests a second.
//!
//! What a rejection costs the gateway: its processes' CPU (nginx's workers, HAProxy, the agent,
//! from /proc) plus the XDP program's own run time (`BPF_ENABLE_STATS`). With `keep_alive` that
//! is all the gateway spends on a rejected request (no stack, no process touches it); for the
//! others it is a lower bound — their kernel's TCP work runs in softirq, which one machine
//! cannot tell apart from the clients' (a veth runs the receiving side's XDP and stack on the
//! sending CPU), so the comparison favours them. The whole host's busy time less the load
//! generators' processes is given too, for what it is worth: it moves with where the kernel
//! accounts softirq work done in the generators' system calls. Per rejected request, and
//! the rejections per second one CPU sustains at that cost. A kernel-made 429 closes the
//! connection (as the contract says), so wrk connects again for each one: a fifth arm is nginx
//! `limit_req` with a connection per request, the same churn. nginx listens with `deferred`
//! (TCP_DEFER_ACCEPT, a common production setting) in every arm. Ratios only within this run;
//! nothing is asserted.

use crate::bench;
use anyhow::{bail, ensure, Context};
use limiter_tests::agent::Agent;
use limiter_tests::gateway::{ClientPass, Connection, Nginx, NginxOptions, GATEWAY_PORT};
use limiter_tests::netns::TestNet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const SECTION: &str = "## Keyed flood: API keys against nginx limit_req and HAProxy";

/// Per-key limit of every limiting arm: requests per second, and at once.
const RATE: u64 = 10;
const BURST: u64 = 20;
/// Well-behaved keys, and each one's requests per second.
const POLITE_KEYS: usize = 16;
const POLITE_RATE: u64 = 5;
/// wrk's connections for the abusive key.
const FLOOD_CONNECTIONS: u32 = 32;
const ABUSIVE_KEY: &str = "abuser-0c7d1f";
/// HAProxy's backend: nginx on the gateway's loopback.
const BACKEND_PORT: u16 = 8081;
/// The gateway's CPU and the clients'.
const GATEWAY_CPU: usize = 1;
const CLIENT_CPU: usize = 0;

const LIMITER_CONFIG: &str = "
[limits]
rate = 1000000
burst = 1000000

[http]
ports = [8080]
rate = 10
burst = 20
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arm {
    NoLimit,
    Limiter,
    /// limiter with `[http] keep_alive = true`: the 429 leaves the connection open.
    LimiterKeepAlive,
    NginxLimitReq,
    /// nginx `limit_req`, the flood sending `Connection: close` (a connection per request).
    NginxLimitReqClose,
    Haproxy,
}

impl Arm {
    const ALL: [Arm; 6] = [
        Arm::NoLimit,
        Arm::Limiter,
        Arm::LimiterKeepAlive,
        Arm::NginxLimitReq,
        Arm::NginxLimitReqClose,
        Arm::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            Arm::NoLimit => "no limit (nginx alone)",
            Arm::Limiter => "limiter at the NIC",
            Arm::LimiterKeepAlive => "limiter at the NIC, keep_alive",
            Arm::NginxLimitReq => "nginx limit_req",
            Arm::NginxLimitReqClose => "nginx limit_req, a connection per request",
            Arm::Haproxy => "HAProxy stick table",
        }
    }
}

/// What one run measured.
#[derive(Debug, Default)]
struct Outcome {
    seconds: f64,
    /// wrk's requests, and those answered other than 2xx/3xx.
    flood_requests: u64,
    flood_rejected: u64,
    flood_errors: u64,
    /// CPU-seconds of the host over the flood, of the load generators, of the gateway's CPU,
    /// and of the XDP program (its own run time).
    host_cpu: f64,
    generator_cpu: f64,
    xdp_cpu: f64,
    /// CPU-seconds of the gateway's processes (nginx's workers, HAProxy, the agent).
    processes_cpu: f64,
    /// The well-behaved keys: sent, answered 200, latencies (µs) of the 200s.
    polite_sent: u64,
    polite_ok: u64,
    latencies_us: Vec<u64>,
}

impl Outcome {
    /// The gateway's processes and the XDP program: all the gateway spends on a rejection
    /// with `keep_alive` (nothing else touches those packets); a lower bound for the others
    /// (their kernel's TCP work in softirq is not in it).
    fn gateway_floor_cpu(&self) -> f64 {
        self.processes_cpu + self.xdp_cpu
    }

    /// Every CPU, less the load generators' processes.
    fn host_cpu(&self) -> f64 {
        (self.host_cpu - self.generator_cpu).max(0.0)
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.latencies_us.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_unstable();
        let at = ((v.len() - 1) as f64 * p).round() as usize;
        v[at] as f64 / 1000.0
    }

    fn success(&self) -> f64 {
        self.polite_ok as f64 / self.polite_sent.max(1) as f64
    }
}

/// What the aims summary takes from this part.
pub struct KeysResult {
    /// Host CPU per rejection, limiter's over nginx `limit_req`'s (keep-alive): the default
    /// (the 429 closes the connection), and with `[http] keep_alive`.
    pub cpu_vs_nginx: Option<f64>,
    pub keep_alive_cpu_vs_nginx: Option<f64>,
    /// Per arm: well-behaved success and p99 over the baseline's.
    pub polite: Vec<(&'static str, f64, f64)>,
}

pub fn run(quick: bool) -> anyhow::Result<(String, KeysResult)> {
    for tool in ["nginx", "wrk", "haproxy", "taskset"] {
        ensure!(
            which(tool),
            "the keyed flood needs {tool} (Debian nginx-light, wrk, haproxy; `cargo xtask bench` \
             installs them)"
        );
    }
    ensure!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "the keyed flood pins the gateway and the load generator to two CPUs"
    );
    let seconds = std::env::var("LIMITER_BENCH_KEYS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 4 } else { 10 });
    let started = Instant::now();
    let load_before = bench::loadavg();
    println!(
        "keyed flood: a no-flood baseline, then {} arms × {seconds} s",
        Arm::ALL.len()
    );
    let baseline = run_arm(Arm::NoLimit, seconds, false)?;
    let mut outcomes = Vec::new();
    // LIMITER_BENCH_KEYS_ARM=limiter (a prefix of an arm's name) runs that arm alone: for
    // profiling one arm with perf.
    let only = std::env::var("LIMITER_BENCH_KEYS_ARM").ok();
    for arm in Arm::ALL {
        if only
            .as_ref()
            .is_some_and(|only| !arm.name().starts_with(only.as_str()))
        {
            continue;
        }
        if bench::INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let outcome = run_arm(arm, seconds, true)?;
        println!(
            "  {}: {} flood requests, {} rejected, gateway CPU {:.2} s",
            arm.name(),
            outcome.flood_requests,
            outcome.flood_rejected,
            outcome.host_cpu()
        );
        outcomes.push((arm, outcome));
    }
    let machine = bench::Machine::read(load_before);
    let cost = |arm: Arm| {
        outcomes
            .iter()
            .find(|(a, _)| *a == arm)
            .filter(|(_, o)| o.flood_rejected > 0)
            .map(|(_, o)| o.gateway_floor_cpu() / o.flood_rejected as f64)
    };
    let result = KeysResult {
        cpu_vs_nginx: cost(Arm::Limiter)
            .zip(cost(Arm::NginxLimitReq))
            .map(|(ours, nginx)| ours / nginx),
        keep_alive_cpu_vs_nginx: cost(Arm::LimiterKeepAlive)
            .zip(cost(Arm::NginxLimitReq))
            .map(|(ours, nginx)| ours / nginx),
        polite: outcomes
            .iter()
            .map(|(arm, o)| {
                (
                    arm.name(),
                    o.success(),
                    o.percentile(0.99) / baseline.percentile(0.99),
                )
            })
            .collect(),
    };
    let section = report(
        quick,
        &machine,
        &baseline,
        &outcomes,
        started.elapsed().as_secs_f64(),
    );
    Ok((section, result))
}

pub(crate) fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What serves the gateway's port in an arm; stopped on drop.
struct Gateway {
    nginx: Nginx,
    haproxy: Option<Haproxy>,
    agent: Option<Agent>,
}

impl Gateway {
    /// The gateway's processes: nginx's workers, HAProxy, the agent.
    fn pids(&self) -> Vec<u32> {
        let mut pids = self.nginx.workers();
        pids.extend(self.haproxy.as_ref().map(|h| h.child.id()));
        pids.extend(self.agent.as_ref().and_then(Agent::pid));
        pids
    }

    /// Their CPU-seconds (every thread), read from /proc.
    fn cpu_seconds(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(process_cpu_seconds)
            .sum()
    }
}

fn start_gateway(net: &TestNet, arm: Arm) -> anyhow::Result<Gateway> {
    let mut options = NginxOptions {
        cpu: Some(GATEWAY_CPU),
        deferred: true,
        ..NginxOptions::default()
    };
    if matches!(arm, Arm::NginxLimitReq | Arm::NginxLimitReqClose) {
        options.http = format!(
            "limit_req_zone $http_x_api_key zone=keys:10m rate={RATE}r/s;\n    limit_req_status 429;"
        );
        options.location = format!("limit_req zone=keys burst={BURST} nodelay;");
    }
    if arm == Arm::Haproxy {
        options.loopback_port = Some(BACKEND_PORT);
    }
    let nginx = Nginx::start_with(net, &options);
    let haproxy = (arm == Arm::Haproxy)
        .then(|| Haproxy::start(net))
        .transpose()?;
    let agent = match arm {
        Arm::Limiter => Some(Agent::start(net, Some(LIMITER_CONFIG))),
        Arm::LimiterKeepAlive => Some(Agent::start(
            net,
            Some(&format!("{LIMITER_CONFIG}keep_alive = true\n")),
        )),
        _ => None,
    };
    if let Some(pid) = agent.as_ref().and_then(Agent::pid) {
        // Every thread of the agent on the gateway's CPU.
        run_ok(Command::new("taskset").args([
            "-a",
            "-p",
            "-c",
            &GATEWAY_CPU.to_string(),
            &pid.to_string(),
        ]))?;
    }
    Ok(Gateway {
        nginx,
        haproxy,
        agent,
    })
}

fn run_arm(arm: Arm, seconds: u64, flood: bool) -> anyhow::Result<Outcome> {
    let net = TestNet::new(POLITE_KEYS as u8 + 1, 1);
    // Frames the limiter answers with (XDP_TX) reach the clients' end only if it has an XDP
    // program; attached in every arm, so that they all pay the same.
    let _pass = ClientPass::attach(&net);
    let gateway = start_gateway(&net, arm)?;
    let stop = Arc::new(AtomicBool::new(false));
    let polite = start_polite(&net, &stop);
    // The well-behaved keys settle in before the flood.
    std::thread::sleep(Duration::from_millis(500));
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run time statistics")?;
    let xdp_before = xdp_run_time();
    let cpu_before = host_cpu_seconds()?;
    let self_before = own_cpu_seconds();
    let processes_before = gateway.cpu_seconds();
    let started = Instant::now();
    let close = arm == Arm::NginxLimitReqClose;
    let wrk = flood
        .then(|| Wrk::start(&net, seconds, close))
        .transpose()?;
    let (flood_requests, flood_rejected, flood_errors, wrk_cpu) = match wrk {
        Some(wrk) => wrk.finish()?,
        None => {
            std::thread::sleep(Duration::from_secs(seconds));
            (0, 0, 0, 0.0)
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let host_cpu = host_cpu_seconds()? - cpu_before;
    let xdp_cpu = xdp_run_time() - xdp_before;
    let own_cpu = own_cpu_seconds() - self_before;
    let processes_cpu = gateway.cpu_seconds() - processes_before;
    stop.store(true, Ordering::Relaxed);
    let mut outcome = Outcome {
        seconds: elapsed,
        flood_requests,
        flood_rejected,
        flood_errors,
        host_cpu,
        generator_cpu: wrk_cpu + own_cpu,
        xdp_cpu,
        processes_cpu,
        ..Outcome::default()
    };
    for handle in polite {
        let (sent, ok, latencies) = handle.join().expect("a polite client panicked");
        outcome.polite_sent += sent;
        outcome.polite_ok += ok;
        outcome.latencies_us.extend(latencies);
    }
    Ok(outcome)
}

/// The well-behaved keys: one thread each, POLITE_RATE requests a second on a keep-alive
/// connection (opened again when the server closes it), until `stop`.
fn start_polite(
    net: &TestNet,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<(u64, u64, Vec<u64>)>> {
    (0..POLITE_KEYS)
        .map(|i| {
            let from = IpAddr::V4(net.client_addrs[i + 1]);
            let stop = Arc::clone(stop);
            // Each thread opens its connections through the namespace's own thread; the test
            // bed is shared by reference only for that, so hand it a connector.
            let connect = Connector::new(net, from);
            std::thread::spawn(move || {
                pin_to(CLIENT_CPU);
                let header = format!("X-API-Key: polite-{i:02}");
                let interval = Duration::from_nanos(1_000_000_000 / POLITE_RATE);
                let mut next = Instant::now() + interval.mul_f64(i as f64 / POLITE_KEYS as f64);
                let (mut sent, mut ok, mut latencies) = (0u64, 0u64, Vec::new());
                let mut conn: Option<Connection> = None;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                        continue;
                    }
                    next += interval;
                    sent += 1;
                    let started = Instant::now();
                    let c = conn.get_or_insert_with(|| connect.open());
                    match c.try_get(Some(&header)) {
                        Some(response) => {
                            if response.status == 200 {
                                ok += 1;
                                latencies.push(started.elapsed().as_micros() as u64);
                            }
                            if response.header("connection") == Some("close") {
                                conn = None;
                            }
                        }
                        None => conn = None,
                    }
                }
                (sent, ok, latencies)
            })
        })
        .collect()
}

/// Opens connections from one client address of a test bed, from any thread.
struct Connector {
    clients_ns: String,
    gateway: IpAddr,
    from: IpAddr,
}

impl Connector {
    fn new(net: &TestNet, from: IpAddr) -> Connector {
        Connector {
            clients_ns: net.clients.name.clone(),
            gateway: net.gateway_ip(),
            from,
        }
    }

    fn open(&self) -> Connection {
        Connection::open_in(&self.clients_ns, self.from, self.gateway)
    }
}

/// wrk flooding with one API key.
pub(crate) struct Wrk {
    child: Child,
    _script: tempfile::NamedTempFile,
}

impl Wrk {
    /// The abusive key on FLOOD_CONNECTIONS connections, pinned to CPU 0; `close`: every
    /// request asks for `Connection: close`.
    fn start(net: &TestNet, seconds: u64, close: bool) -> anyhow::Result<Wrk> {
        Wrk::spawn(
            &net.clients.name,
            ABUSIVE_KEY,
            FLOOD_CONNECTIONS,
            seconds,
            close,
            Some(CLIENT_CPU),
        )
    }

    /// wrk in the namespace `netns`, one thread on `connections` keep-alive connections (unless
    /// `close`), every request with `X-API-Key: key`, for `seconds`, on `cpu` if given.
    pub(crate) fn spawn(
        netns: &str,
        key: &str,
        connections: u32,
        seconds: u64,
        close: bool,
        cpu: Option<usize>,
    ) -> anyhow::Result<Wrk> {
        let script = tempfile::NamedTempFile::new()?;
        let mut lua = format!("wrk.method = \"GET\"\nwrk.headers[\"X-API-Key\"] = \"{key}\"\n");
        if close {
            lua.push_str("wrk.headers[\"Connection\"] = \"close\"\n");
        }
        std::fs::write(script.path(), lua)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]);
        if let Some(cpu) = cpu {
            cmd.args(["taskset", "-c", &cpu.to_string()]);
        }
        let child = cmd
            .args([
                "wrk",
                "-t1",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
            ])
            .arg("-s")
            .arg(script.path())
            .arg(format!("http://198.18.0.1:{GATEWAY_PORT}/ok.json"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running wrk")?;
        Ok(Wrk {
            child,
            _script: script,
        })
    }

    /// Waits for wrk; its requests, non-2xx answers, socket errors, and CPU-seconds.
    pub(crate) fn finish(mut self) -> anyhow::Result<(u64, u64, u64, f64)> {
        let pid = self.child.id();
        // wrk runs under `ip netns exec`, which execs it: same pid. Its CPU, read just before
        // it exits (a zombie's times are still in /proc until it is reaped).
        let mut cpu = 0.0;
        while self.child.try_wait()?.is_none() {
            cpu = process_cpu_seconds(pid).unwrap_or(cpu);
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = self.child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let number_after = |label: &str| -> u64 {
            text.lines()
                .find_map(|l| {
                    let at = l.find(label)?;
                    l[at + label.len()..]
                        .split(|c: char| !c.is_ascii_digit())
                        .find(|s| !s.is_empty())?
                        .parse()
                        .ok()
                })
                .unwrap_or(0)
        };
        let requests = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let rejected = number_after("Non-2xx or 3xx responses:");
        let errors = text
            .lines()
            .find(|l| l.contains("Socket errors:"))
            .map(|l| {
                l.split(',')
                    .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        Ok((requests, rejected, errors, cpu))
    }
}

/// HAProxy on the gateway's port in front of nginx on loopback: a stick table of request rates
/// by API key, denying over RATE a second with 429. One thread, pinned to CPU 1 (beside nginx's
/// worker, as a gateway host would run them).
struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(net: &TestNet) -> anyhow::Result<Haproxy> {
        let dir = tempfile::tempdir()?;
        let conf = format!(
            "global
    nbthread 1
    cpu-map 1/1 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
frontend api
    bind 198.18.0.1:{GATEWAY_PORT}
    stick-table type string len 64 size 100k expire 60s store http_req_rate(1s)
    http-request track-sc0 req.hdr(x-api-key)
    http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {RATE} }}
    default_backend nginx
backend nginx
    server local 127.0.0.1:{BACKEND_PORT}
"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &net.gateway.name, "haproxy", "-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running haproxy")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !net
            .gateway
            .run(|| std::net::TcpStream::connect(("198.18.0.1", GATEWAY_PORT)).is_ok())
        {
            ensure!(
                Instant::now() < deadline,
                "haproxy does not accept connections"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Haproxy { child, _dir: dir })
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// The run time, in seconds, of every loaded `limiter` XDP program (statistics on).
fn xdp_run_time() -> f64 {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some("limiter"))
        .map(|p| p.run_time().as_secs_f64())
        .sum()
}

/// Busy CPU-seconds of every CPU since boot (`/proc/stat`: all but idle and iowait).
fn host_cpu_seconds() -> anyhow::Result<f64> {
    busy_seconds("cpu ")
}

fn busy_seconds(prefix: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(prefix))
        .with_context(|| format!("no {prefix:?} in /proc/stat"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    ensure!(fields.len() >= 8, "unexpected /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    Ok(busy as f64 / ticks_per_second())
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of process `pid`, seconds.
pub(crate) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

/// This process's CPU-seconds (every thread: the well-behaved clients).
fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn report(
    quick: bool,
    machine: &bench::Machine,
    baseline: &Outcome,
    outcomes: &[(Arm, Outcome)],
    total_secs: f64,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{SECTION}\n");
    let _ = writeln!(out, "{}", machine.header(bench::command(quick), total_secs));
    let _ = writeln!(
        out,
        "nginx (one worker, CPU 1) serves a {}-byte JSON file on the test bed's gateway; `wrk` (CPU \
         0, {FLOOD_CONNECTIONS} keep-alive connections, as fast as it can) sends one abusive API \
         key; {POLITE_KEYS} well-behaved keys send {POLITE_RATE} requests a second each on \
         keep-alive connections. Every limiting arm allows {RATE} requests a second per key, \
         {BURST} at once; nginx listens with `deferred`. Each arm runs {:.0} s on a fresh test \
         bed. *Gateway processes + XDP* is the CPU of nginx's worker, HAProxy and the agent \
         (/proc) plus the XDP program's own run time (BPF_ENABLE_STATS), per rejected request: \
         with `keep_alive` all the gateway spends on one (no stack, no process sees it); for \
         the other arms a lower bound, since their kernel's TCP work runs in softirq, which one \
         machine cannot tell apart from the clients' — the comparison favours them, and by \
         default limiter's 429 closes the connection, so the gateway's kernel also handles a \
         handshake per rejection that this column leaves out. *Host CPU* is every CPU's busy \
         time less the load generators' processes: noisy, as it moves with where the kernel \
         accounts the softirq work done in their system calls.\n",
        limiter_tests::gateway::OK_BODY.len(),
        outcomes.first().map_or(0.0, |(_, o)| o.seconds)
    );
    let _ = writeln!(
        out,
        "| arm | flood req/s | rejected/s | gateway processes + XDP per rejection | of which \
         XDP | rejections/s per CPU at that cost | host CPU per rejection | well-behaved \
         success | p50 | p99 | × baseline p99 |"
    );
    let _ = writeln!(
        out,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let base_p99 = baseline.percentile(0.99);
    let _ = writeln!(
        out,
        "| baseline: no flood, no limit | — | — | — | — | — | — | {:.1}% | {:.2} ms | {:.2} ms | ×1.00 |",
        baseline.success() * 100.0,
        baseline.percentile(0.5),
        base_p99
    );
    let per_rejection = |o: &Outcome| {
        (o.flood_rejected > 0).then(|| o.gateway_floor_cpu() / o.flood_rejected as f64 * 1e6)
    };
    let us = |v: Option<f64>| v.map_or("—".to_owned(), |us| format!("{us:.2} µs"));
    for (arm, o) in outcomes {
        let cost = per_rejection(o);
        let rejected = o.flood_rejected.max(1) as f64;
        let xdp = (o.xdp_cpu > 0.0).then(|| o.xdp_cpu / rejected * 1e6);
        let host = (o.flood_rejected > 0).then(|| o.host_cpu() / rejected * 1e6);
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.1}% | {:.2} ms | {:.2} ms | ×{:.2} |",
            arm.name(),
            o.flood_requests as f64 / o.seconds,
            o.flood_rejected as f64 / o.seconds,
            us(cost),
            us(xdp),
            cost.map_or("—".to_owned(), |us| format!("{:.0}", 1e6 / us)),
            us(host),
            o.success() * 100.0,
            o.percentile(0.5),
            o.percentile(0.99),
            o.percentile(0.99) / base_p99
        );
    }
    let cost_of = |arm: Arm| {
        outcomes
            .iter()
            .find(|(a, _)| *a == arm)
            .and_then(|(_, o)| per_rejection(o))
    };
    if let (Some(ours), Some(nginx)) = (cost_of(Arm::Limiter), cost_of(Arm::NginxLimitReq)) {
        let _ = writeln!(
            out,
            "\nPer rejected request (gateway processes + XDP), limiter costs ×{:.2} of what nginx \
             `limit_req` costs on keep-alive connections (aim: at most ×0.20){}{}{}.",
            ours / nginx,
            cost_of(Arm::LimiterKeepAlive).map_or(String::new(), |k| format!(
                "; with `keep_alive` ×{:.2}",
                k / nginx
            )),
            cost_of(Arm::NginxLimitReqClose).map_or(String::new(), |c| format!(
                ", ×{:.2} of it with a connection per request",
                ours / c
            )),
            cost_of(Arm::Haproxy).map_or(String::new(), |h| format!(
                ", ×{:.2} of HAProxy's",
                ours / h
            ))
        );
    }
    let errors: Vec<String> = outcomes
        .iter()
        .filter(|(_, o)| o.flood_errors > 0)
        .map(|(a, o)| format!("{}: {}", a.name(), o.flood_errors))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(
            out,
            "\nwrk's socket errors (connect, read, write, timeout): {}.",
            errors.join("; ")
        );
    }
    out
}
