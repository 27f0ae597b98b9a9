//! `[agent] new_keys_per_sec` with real traffic: a flood from thousands of new sources gets at
//! most the allowance of new keys while a client tracked before it keeps passing everything; what
//! is refused never reaches the gateway and is counted (status, metrics); a reload with a bad
//! value changes nothing, and one without the key lifts the bound. The agent logs the refused
//! first packets and, with no bound, warns when the table turns over within 10 s.

use limiter_tests::agent::Agent;
use limiter_tests::netns::{ip, Netns, TestNet};
use limiter_tests::traffic::{ipv4_udp_frame, RawSender, Receiver, PORT};
use limiter_tests::u64_of;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const NEW_KEYS_PER_SEC: u64 = 50;
/// Not the default port (nor metrics.rs's), in the gateway namespace's own loopback.
const METRICS_ADDR: &str = "127.0.0.1:19849";
const ESTABLISHED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

/// Per-key limits far above what the test sends, so only the bound on new keys drops anything;
/// fewer keys than the flood has sources, so without the bound the flood would evict.
fn config(new_keys: Option<&str>) -> String {
    let mut text =
        "[limits]\nrate = 100000\nburst = 100000\n\n[agent]\nmax_keys = 1024\n".to_owned();
    if let Some(value) = new_keys {
        text.push_str(&format!("new_keys_per_sec = {value}\n"));
    }
    text
}

/// Counters of `status --json` that a flood moves.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    tracked: u64,
    refused: u64,
    passed: u64,
    dropped: u64,
}

fn snapshot(agent: &Agent) -> Snapshot {
    let status = agent.json(&["status"]);
    assert_eq!(u64_of(&status, "evicted_keys"), 0, "keys evicted: {status}");
    Snapshot {
        tracked: u64_of(&status, "tracked_keys"),
        refused: u64_of(&status, "new_keys_refused"),
        passed: u64_of(&status, "passed"),
        dropped: u64_of(&status, "dropped"),
    }
}

/// The `n`th flood source: distinct for every `n` below 65536, all in 198.19.0.0/16.
fn flood_source(n: u32) -> Ipv4Addr {
    assert!(n < 65_536);
    Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8)
}

/// What one flood did, as the agent counted it.
struct Flood {
    /// Flood frames the kernel took (one per new source).
    sent: u64,
    /// Frames of the established client sent among them.
    established_sent: u64,
    /// Keys created and first packets refused, from `status --json`.
    created: u64,
    refused: u64,
    /// Packets passed and dropped, from `status --json`.
    passed: u64,
    dropped: u64,
    /// From the first frame sent until the status showing every frame accounted for was read:
    /// no key of the flood can have been created outside it.
    elapsed: Duration,
}

/// Sends one frame from each of `sources` (all new), and, every tenth, one from the established
/// client when `with_established`; waits until the agent accounts for every flood frame (a key
/// created, or refused).
fn flood(
    agent: &Agent,
    sender: &RawSender,
    sources: std::ops::Range<u32>,
    with_established: bool,
) -> Flood {
    let gateway = Ipv4Addr::new(198, 18, 0, 1);
    let established = ipv4_udp_frame(ESTABLISHED, gateway, PORT);
    let frames: Vec<Vec<u8>> = sources
        .map(|n| ipv4_udp_frame(flood_source(n), gateway, PORT))
        .collect();
    let before = snapshot(agent);
    let (mut sent, mut established_sent) = (0u64, 0u64);
    let start = Instant::now();
    for (i, frame) in frames.iter().enumerate() {
        sent += sender.send(frame) as u64;
        if with_established && i % 10 == 0 {
            assert!(sender.send(&established), "the established client's frame");
            established_sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = snapshot(agent);
        let elapsed = start.elapsed();
        let (created, refused) = (
            after.tracked - before.tracked,
            after.refused - before.refused,
        );
        if created + refused >= sent || Instant::now() > deadline {
            return Flood {
                sent,
                established_sent,
                created,
                refused,
                passed: after.passed - before.passed,
                dropped: after.dropped - before.dropped,
                elapsed,
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks that the flood created no more keys than the allowance (`NEW_KEYS_PER_SEC` at once,
/// plus its rate over the flood) and at least the allowance it found full, and that every other
/// first packet was refused and dropped.
fn assert_bounded(flood: &Flood, what: &str) {
    let report = format!(
        "{what}: {} frames sent, {} keys created, {} refused, in {:?}",
        flood.sent, flood.created, flood.refused, flood.elapsed
    );
    eprintln!("{report}");
    assert_eq!(
        flood.created + flood.refused,
        flood.sent,
        "every new source is created or refused; {report}"
    );
    let bound = NEW_KEYS_PER_SEC
        + (NEW_KEYS_PER_SEC as f64 * flood.elapsed.as_secs_f64()).ceil() as u64
        + 1;
    assert!(
        flood.created <= bound,
        "more keys created than {bound}; {report}"
    );
    assert!(
        flood.created >= NEW_KEYS_PER_SEC,
        "the full allowance was not given; {report}"
    );
    assert!(
        flood.sent > 4 * bound,
        "the flood is too small to test the bound; {report}"
    );
    // Per-key limits are far away: every drop is a refused first packet, every pass a created
    // key's first packet or the established client's.
    assert_eq!(flood.dropped, flood.refused, "{report}");
    assert_eq!(
        flood.passed,
        flood.created + flood.established_sent,
        "{report}"
    );
}

/// The tracked keys inside 198.19.0.0/16.
fn flood_keys(agent: &Agent) -> HashSet<IpAddr> {
    let keys = agent.json(&["list"]);
    keys.as_array()
        .unwrap_or_else(|| panic!("list --json is not an array: {keys}"))
        .iter()
        .map(|k| k["key"].as_str().expect("a key").to_owned())
        .map(|k| k.trim_end_matches("/32").parse::<IpAddr>().unwrap())
        .filter(|a| matches!(a, IpAddr::V4(v4) if v4.octets()[..2] == [198, 19]))
        .collect()
}

/// Flood sources the gateway's receiver got datagrams from.
fn flood_sources_received(received: &std::collections::HashMap<IpAddr, u64>) -> HashSet<IpAddr> {
    received
        .keys()
        .copied()
        .filter(|a| matches!(a, IpAddr::V4(v4) if v4.octets()[..2] == [198, 19]))
        .collect()
}

/// `GET /metrics` over HTTP/1.0 inside `ns`; the body.
fn scrape(ns: &Netns) -> String {
    let addr: SocketAddr = METRICS_ADDR.parse().unwrap();
    ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() >= deadline => panic!("connecting to {addr}: {err}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        assert!(raw.starts_with("HTTP/1.") && raw.contains(" 200 "), "{raw}");
        raw
    })
}

/// The value of the one sample line starting with `series` (name and labels, as exposed).
fn sample(metrics: &str, series: &str) -> u64 {
    let values: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .collect();
    assert_eq!(values.len(), 1, "{series} in:\n{metrics}");
    values[0]
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series} = {:?}: {e}", values[0]))
}

/// The agent's log lines containing `what`, as soon as there is one, or none after `timeout`.
fn wait_for_log_lines(agent: &Agent, what: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<String> = agent
            .log()
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() || Instant::now() >= deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number written just before `what` in `line` (`… INFO …: 1234 first packets …`).
fn number_before(line: &str, what: &str) -> u64 {
    line.split(what)
        .next()
        .and_then(|before| before.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line:?}"))
}

#[test]
fn new_keys_are_bounded_under_a_flood_of_new_sources_and_reload_changes_the_bound() {
    let net = TestNet::new(0, 1);
    // The gateway routes the flood's sources back through the veth, so that reverse-path
    // filtering (strict or loose) lets their datagrams reach the receiver.
    ip(&[
        "-n",
        &net.gateway.name,
        "route",
        "add",
        "198.19.0.0/16",
        "dev",
        &net.gateway_if,
    ]);
    let agent = Agent::start_with_args(
        &net,
        Some(&config(Some(&NEW_KEYS_PER_SEC.to_string()))),
        &["--metrics", METRICS_ADDR],
    );
    let status = agent.json(&["status"]);
    assert_eq!(
        u64_of(&status["config"], "new_keys_per_sec"),
        NEW_KEYS_PER_SEC
    );
    let human = agent.cli(&["status"]).stdout;
    assert!(
        human.contains(&format!("new keys         at most {NEW_KEYS_PER_SEC}/s")),
        "{human}"
    );

    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    let sender = RawSender::new(&net.clients, &net.client_if);
    let gateway = Ipv4Addr::new(198, 18, 0, 1);

    // The established client: tracked before the flood.
    let established = ipv4_udp_frame(ESTABLISHED, gateway, PORT);
    for _ in 0..5 {
        assert!(sender.send(&established));
    }
    std::thread::sleep(Duration::from_millis(200));
    let key = agent.json(&["inspect", &ESTABLISHED.to_string()]);
    assert_eq!(u64_of(&key, "passed"), 5, "{key}");
    // The allowance refills from that creation (and any other) within a second.
    std::thread::sleep(Duration::from_millis(1100));

    // 2000 new sources, one frame each, twice max_keys: without the bound they would evict
    // the established client's key (and `snapshot` asserts nothing was evicted).
    let first = flood(&agent, &sender, 0..2000, true);
    assert_bounded(&first, "flood with new_keys_per_sec = 50");
    let key = agent.json(&["inspect", &ESTABLISHED.to_string()]);
    assert_eq!(
        (u64_of(&key, "passed"), u64_of(&key, "dropped")),
        (5 + first.established_sent, 0),
        "the established client lost packets: {key}"
    );
    // The agent logs the refused first packets within a second or so (one line per 10 s at
    // most; the first flood may straddle two of its polls, hence at most all of them).
    let what = "first packets of new keys refused in the last";
    let lines = wait_for_log_lines(&agent, what, Duration::from_secs(3));
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no line on refused new keys:\n{}", agent.log()));
    let logged = number_before(line, what);
    assert!(
        (1..=first.refused).contains(&logged)
            && line.contains(&format!("(over new_keys_per_sec = {NEW_KEYS_PER_SEC})")),
        "{} refused, logged: {line}",
        first.refused
    );

    // What reached the gateway: all of the established client's, and exactly the first packets
    // of the keys created — none of the refused ones.
    let received = receiver.finish();
    assert_eq!(
        received.get(&IpAddr::V4(ESTABLISHED)).copied(),
        Some(5 + first.established_sent),
        "the established client's datagrams at the gateway"
    );
    let created = flood_keys(&agent);
    assert_eq!(created.len() as u64, first.created);
    assert_eq!(
        flood_sources_received(&received),
        created,
        "the gateway got datagrams from other flood sources than those whose key was created"
    );

    // Status, human and JSON, and the metric agree.
    let status = agent.json(&["status"]);
    let refused = u64_of(&status, "new_keys_refused");
    assert_eq!(refused, first.refused, "{status}");
    let human = agent.cli(&["status"]).stdout;
    assert!(
        human.contains(&format!("new keys refused {refused} ")),
        "{human}"
    );
    let metrics = scrape(&net.gateway);
    assert!(
        metrics.contains("# TYPE limiter_new_keys_refused_total counter"),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            &format!(
                "limiter_new_keys_refused_total{{interface=\"{}\"}}",
                net.gateway_if
            )
        ),
        refused
    );

    // A reload with new_keys_per_sec = 0 is refused, naming the key and its line, and the bound
    // stays as it was.
    agent.write_config(&config(Some("0")));
    let out = agent.cli(&["reload"]);
    assert_eq!(out.code, 1, "new_keys_per_sec = 0 was not refused: {out:?}");
    assert!(
        out.stderr.contains("new_keys_per_sec") && out.stderr.contains("line 7"),
        "{}",
        out.stderr
    );
    assert_eq!(
        u64_of(&agent.json(&["status"])["config"], "new_keys_per_sec"),
        NEW_KEYS_PER_SEC
    );
    std::thread::sleep(Duration::from_millis(1100));
    let second = flood(&agent, &sender, 2000..2500, false);
    assert_bounded(&second, "flood after the refused reload");

    // A reload without the key brings the default bound back: max_keys / 100 per second, and
    // a tenth of max_keys at once.
    agent.write_config(&config(None));
    assert_eq!(agent.json(&["reload"])["reloaded"], true);
    let status = agent.json(&["status"]);
    assert_eq!(
        (
            status["config"]["new_keys_per_sec"].as_u64(),
            status["config"]["new_keys_burst"].as_u64(),
            status["config"]["new_keys_bound"].as_str()
        ),
        (Some(10), Some(102), Some("default")),
        "{status}"
    );
    let human = agent.cli(&["status"]).stdout;
    assert!(
        human.contains("new keys         at most 10/s, 102 at once (default: max_keys / 100)"),
        "{human}"
    );

    // "off" lifts the bound: every new source gets its key.
    agent.write_config(&config(Some("\"off\"")));
    assert_eq!(agent.json(&["reload"])["reloaded"], true);
    let status = agent.json(&["status"]);
    assert!(status["config"]["new_keys_per_sec"].is_null(), "{status}");
    let human = agent.cli(&["status"]).stdout;
    assert!(human.contains("new keys         no bound"), "{human}");
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    let third = flood(&agent, &sender, 2500..2800, false);
    assert_eq!(
        (third.created, third.refused, third.dropped),
        (third.sent, 0, 0),
        "without the bound every new source gets a key"
    );
    // Under the old bound, 300 sources in less than 4 s could not all have had a key.
    assert!(
        third.sent == 300 && third.elapsed < Duration::from_secs(4),
        "{} sent in {:?}: too few or too slow to tell a bound from none",
        third.sent,
        third.elapsed
    );
    let received = flood_sources_received(&receiver.finish());
    assert_eq!(received.len(), 300, "datagrams of the unbounded flood");
}

#[test]
fn a_table_turning_over_without_a_bound_is_warned_about_once() {
    const MAX_KEYS: u64 = 256;
    let net = TestNet::new(0, 1);
    let agent = Agent::start(
        &net,
        Some(&format!(
            "[limits]\nrate = 100000\nburst = 100000\n\n[agent]\nmax_keys = {MAX_KEYS}\n\
             new_keys_per_sec = \"off\"\n"
        )),
    );
    let what = "keys created in the last 10 s";
    assert!(!agent.log().contains(what), "warned before any flood");

    // 2000 new sources, one frame each: the table of 256 keys turns over several times.
    let sender = RawSender::new(&net.clients, &net.client_if);
    let gateway = Ipv4Addr::new(198, 18, 0, 1);
    let sent = (0..2000)
        .filter(|n| sender.send(&ipv4_udp_frame(flood_source(*n), gateway, PORT)))
        .count() as u64;
    assert_eq!(sent, 2000, "flood frames the kernel took");

    let lines = wait_for_log_lines(&agent, what, Duration::from_secs(5));
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("no warning on the table turning over:\n{}", agent.log()));
    let created = number_before(line, what);
    assert!(
        line.contains("WARN")
            && line.contains(&format!("the {MAX_KEYS} the table holds"))
            && line.contains("new_keys_per_sec")
            && (MAX_KEYS..=sent).contains(&created),
        "{line}"
    );
    // The flood stays within the last 10 s, but the warning is not repeated every second.
    std::thread::sleep(Duration::from_millis(2500));
    let lines = wait_for_log_lines(&agent, what, Duration::ZERO);
    assert_eq!(lines.len(), 1, "{lines:#?}");
}
