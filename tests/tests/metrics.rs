//! `limiter agent --metrics`: Prometheus text at `/metrics`, read from the kernel's counters,
//! agreeing with what `limiter status` and `limiter inspect` report.

use limiter_tests::agent::Agent;
use limiter_tests::netns::{Netns, TestNet};
use limiter_tests::traffic::{BackgroundFlood, Receiver};
use limiter_tests::u64_of;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Not the default port, so that the flag is what puts the endpoint there.
const METRICS_ADDR: &str = "127.0.0.1:19848";
const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9848";

/// One HTTP answer.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` over HTTP/1.0 from inside `ns` (the agent's loopback is that namespace's).
/// Retries the connection for a few seconds: the endpoint is bound just after the API socket.
fn http_get(ns: &Netns, addr: &str, path: &str) -> std::io::Result<HttpResponse> {
    let addr: SocketAddr = addr.parse().unwrap();
    let path = path.to_owned();
    ns.run(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Ok(HttpResponse {
            status,
            headers,
            body: body.to_owned(),
        })
    })
}

/// A parsed exposition: every sample by name and label set.
#[derive(Debug, Clone, PartialEq)]
struct Exposition {
    /// (name, sorted labels) → value.
    samples: HashMap<(String, Vec<(String, String)>), f64>,
    /// Metric name → its `# TYPE`.
    types: HashMap<String, String>,
}

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

/// Parses the Prometheus text format (0.0.4) strictly enough to catch a malformed exposition:
/// every sample is `name{label="value",…} value`, comes after its family's `# HELP` and
/// `# TYPE`, and appears once.
fn parse(text: &str) -> Exposition {
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    let mut helps = HashSet::new();
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(_)) => {
                    assert!(is_name(name, true), "bad name in {line:?}");
                    assert!(helps.insert(name.to_owned()), "second HELP for {name}");
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(is_name(name, true), "bad name in {line:?}");
                    assert!(
                        ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                        "bad type in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_owned(), kind.to_owned()).is_none(),
                        "second TYPE for {name}"
                    );
                }
                _ => panic!("unexpected comment line {line:?}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line in the exposition");
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        assert!(is_name(name, true), "bad metric name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            (labels, rest) = parse_labels(inner, line);
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        assert!(
            !value.contains(' '),
            "a timestamp or junk after the value in {line:?}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
        let kind = types
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no # TYPE line before it"));
        assert!(helps.contains(name), "{name} has no # HELP line before it");
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        labels.sort();
        let names: HashSet<_> = labels.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), labels.len(), "repeated label in {line:?}");
        // Keys only in the per-key families, bounded by `[metrics] top_keys` (checked below).
        if !name.starts_with(PER_KEY_PREFIX) {
            for (_, value) in &labels {
                assert!(
                    !value.starts_with("198.18.") && !value.starts_with("2001:2:"),
                    "a per-key label (unbounded label set) in {line:?}"
                );
            }
        }
        assert!(
            samples.insert((name.to_owned(), labels), value).is_none(),
            "duplicate series {line:?}"
        );
    }
    for name in types.keys().filter(|n| n.starts_with(PER_KEY_PREFIX)) {
        let series = samples.keys().filter(|(n, _)| n.starts_with(name)).count();
        assert!(
            series <= DEFAULT_TOP_KEYS,
            "{series} series of {name}: more than [metrics] top_keys"
        );
    }
    Exposition { samples, types }
}

/// The families with a `key` label: at most `[metrics] top_keys` series each.
const PER_KEY_PREFIX: &str = "limiter_key_";
const DEFAULT_TOP_KEYS: usize = 10;

/// Parses `k="v",…}` and returns the labels and what follows the closing brace.
fn parse_labels<'a>(text: &'a str, line: &str) -> (Vec<(String, String)>, &'a str) {
    let mut labels = Vec::new();
    if let Some(after) = text.strip_prefix('}') {
        return (labels, after);
    }
    let mut rest = text;
    loop {
        let eq = rest
            .find('=')
            .unwrap_or_else(|| panic!("label without '=' in {line:?}"));
        let label = &rest[..eq];
        assert!(is_name(label, false), "bad label name in {line:?}");
        let quoted = rest[eq + 1..]
            .strip_prefix('"')
            .unwrap_or_else(|| panic!("unquoted label value in {line:?}"));
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.push((label.to_owned(), value));
        let after = &quoted[end + 1..];
        if let Some(after) = after.strip_prefix('}') {
            return (labels, after);
        }
        rest = after
            .strip_prefix(',')
            .unwrap_or_else(|| panic!("bad label list in {line:?}"));
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
    }
}

impl Exposition {
    /// The value of the series `name{labels}`, which must exist and be a whole number.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        let value = *self
            .samples
            .get(&(name.to_owned(), wanted))
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in {:#?}", self.samples));
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{name}{labels:?} = {value}"
        );
        value as u64
    }

    /// Every series of the counters and gauges that come from the datapath (not `info`).
    fn datapath_values(&self) -> Vec<(String, u64)> {
        let mut values: Vec<_> = self
            .samples
            .iter()
            .filter(|((name, _), _)| !name.ends_with("_info"))
            .map(|((name, labels), value)| (format!("{name}{labels:?}"), *value as u64))
            .collect();
        values.sort();
        values
    }
}

/// Scrapes `/metrics`, checking the answer is a well-formed Prometheus text exposition.
fn scrape(net: &TestNet, addr: &str) -> Exposition {
    let response = http_get(&net.gateway, addr, "/metrics")
        .unwrap_or_else(|e| panic!("scraping http://{addr}/metrics in the gateway namespace: {e}"));
    assert_eq!(response.status, 200, "{}", response.body);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content type {content_type:?}"
    );
    parse(&response.body)
}

/// A scrape, `status --json` and a second scrape, retried until nothing changed in between, so
/// that the status can be compared with the metrics exactly.
fn quiet_snapshot(net: &TestNet, agent: &Agent) -> (Exposition, Value) {
    for _ in 0..20 {
        let before = scrape(net, METRICS_ADDR);
        let status = agent.json(&["status"]);
        let after = scrape(net, METRICS_ADDR);
        if before.datapath_values() == after.datapath_values() {
            return (after, status);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the counters kept changing while no test traffic was sent");
}

/// Checks every metric that `status --json` also reports.
fn assert_agrees_with_status(metrics: &Exposition, status: &Value, iface: &str) {
    let packets = |verdict: &str| {
        metrics.get(
            "limiter_packets_total",
            &[("interface", iface), ("verdict", verdict)],
        )
    };
    for (verdict, field) in [
        ("passed", "passed"),
        ("dropped", "dropped"),
        ("would_drop", "would_drop"),
        ("allowed", "allowed_by_rule"),
        ("denied", "denied_by_rule"),
        ("not_limited", "not_limited"),
        ("unparsed", "unparsed"),
    ] {
        assert_eq!(
            packets(verdict),
            u64_of(status, field),
            "{verdict} vs {status}"
        );
    }
    let on_iface = [("interface", iface)];
    assert_eq!(
        metrics.get("limiter_insert_failures_total", &on_iface),
        u64_of(status, "insert_failed")
    );
    assert_eq!(
        metrics.get("limiter_contention_drops_total", &on_iface),
        u64_of(status, "contention_drops")
    );
    assert_eq!(
        metrics.get("limiter_keys_evicted_total", &[]),
        u64_of(status, "evicted_keys")
    );
    assert_eq!(
        metrics.get("limiter_tracked_keys", &[]),
        u64_of(status, "tracked_keys")
    );
    assert_eq!(
        metrics.get("limiter_exhausted_keys", &[]),
        u64_of(status, "exhausted_keys")
    );
    assert_eq!(
        metrics.get("limiter_max_keys", &[]),
        u64_of(&status["config"], "max_keys")
    );
}

#[test]
fn metrics_agree_with_status_and_inspect() {
    let net = TestNet::new(3, 1);
    let iface = net.gateway_if.clone();
    let mut agent = Agent::start_with_args(
        &net,
        Some("[limits]\nrate = 1\nburst = 10\n"),
        &["--metrics", METRICS_ADDR],
    );

    // Before any test traffic: the build and the interface, nothing limited, nothing reset.
    let first = scrape(&net, METRICS_ADDR);
    let status = agent.json(&["status"]);
    assert_eq!(
        first.get("limiter_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1
    );
    let mode = status["interfaces"][0]["mode"].as_str().unwrap();
    assert_eq!(
        first.get(
            "limiter_interface_info",
            &[("interface", &iface), ("mode", mode)]
        ),
        1
    );
    assert_eq!(first.types["limiter_info"], "gauge");
    assert_eq!(first.types["limiter_packets_total"], "counter");
    assert_eq!(first.types["limiter_tracked_keys"], "gauge");
    // (The link's own IPv6 chatter may already have passed.)
    assert_eq!(
        first.get(
            "limiter_packets_total",
            &[("interface", &iface), ("verdict", "dropped")]
        ),
        0,
        "dropped before any traffic"
    );
    assert_eq!(first.get("limiter_resets_total", &[]), 0);
    assert_eq!(first.get("limiter_exhaustion_events_total", &[]), 0);

    // 3 sources × 100 datagrams, burst 10: each passes about 10 and drops about 90.
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    let clients = net.every_client();
    for client in &clients {
        assert_eq!(
            client.burst(receiver.addr, 100),
            100,
            "the kernel refused datagrams"
        );
    }
    let received = receiver.finish();

    let (metrics, status) = quiet_snapshot(&net, &agent);
    assert_agrees_with_status(&metrics, &status, &iface);
    let mut our_passed = 0;
    let mut our_dropped = 0;
    for client in &clients {
        let key = agent.json(&["inspect", &client.addr.to_string()]);
        let passed = u64_of(&key, "passed");
        let dropped = u64_of(&key, "dropped");
        assert_eq!(passed + dropped, 100, "{key}");
        assert_eq!(
            passed,
            received.get(&client.addr).copied().unwrap_or(0),
            "{key}"
        );
        assert!((10..=11).contains(&passed), "{key}");
        our_passed += passed;
        our_dropped += dropped;
    }
    let packets = |m: &Exposition, verdict: &str| {
        m.get(
            "limiter_packets_total",
            &[("interface", &iface), ("verdict", verdict)],
        )
    };
    // Only the test's sources send enough to be dropped; the link's own IPv6 chatter may pass.
    assert_eq!(packets(&metrics, "dropped"), our_dropped);
    assert!(packets(&metrics, "passed") >= our_passed);
    assert!(metrics.get("limiter_tracked_keys", &[]) >= 3);
    println!(
        "after 3 × 100: passed {} dropped {} tracked {} exhausted {}",
        packets(&metrics, "passed"),
        packets(&metrics, "dropped"),
        metrics.get("limiter_tracked_keys", &[]),
        metrics.get("limiter_exhausted_keys", &[])
    );

    // Under a flood the three keys stay exhausted; the counters only grow.
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    let flood = BackgroundFlood::start(clients.clone(), receiver.addr);
    std::thread::sleep(Duration::from_millis(300));
    let during = scrape(&net, METRICS_ADDR);
    let status = agent.json(&["status"]);
    let later = scrape(&net, METRICS_ADDR);
    assert_eq!(during.get("limiter_exhausted_keys", &[]), 3);
    assert_eq!(u64_of(&status, "exhausted_keys"), 3);
    assert_eq!(later.get("limiter_exhausted_keys", &[]), 3);
    for (verdict, field) in [("passed", "passed"), ("dropped", "dropped")] {
        let (a, s, b) = (
            packets(&during, verdict),
            u64_of(&status, field),
            packets(&later, verdict),
        );
        assert!(
            a <= s && s <= b,
            "{verdict}: scrape {a}, status {s}, scrape {b}"
        );
    }
    assert!(packets(&later, "dropped") > packets(&metrics, "dropped"));
    let flood_report = flood.stop();
    drop(receiver);
    // Let the last datagrams through the program before the keys are reset.
    std::thread::sleep(Duration::from_millis(100));
    println!("flood sent {:?}", flood_report.sent);

    // Resets: every key reset through the agent is counted.
    let all = u64_of(&agent.json(&["reset", "--all"]), "reset");
    assert!(all >= 3, "reset --all reset {all}");
    assert_eq!(
        scrape(&net, METRICS_ADDR).get("limiter_resets_total", &[]),
        all
    );
    let one = u64_of(
        &agent.json(&["reset", &clients[0].addr.to_string()]),
        "reset",
    );
    assert_eq!(one, 1);
    let (metrics, status) = quiet_snapshot(&net, &agent);
    assert_eq!(metrics.get("limiter_resets_total", &[]), all + 1);
    assert_eq!(metrics.get("limiter_exhausted_keys", &[]), 0);
    assert_agrees_with_status(&metrics, &status, &iface);
    let before_restart = metrics;

    // The packet counters are the kernel's: a restarted agent reports them as they were.
    agent.stop();
    agent.spawn();
    let (metrics, status) = quiet_snapshot(&net, &agent);
    assert_agrees_with_status(&metrics, &status, &iface);
    for verdict in ["passed", "dropped"] {
        assert!(
            packets(&metrics, verdict) >= packets(&before_restart, verdict),
            "{verdict} went back after the restart"
        );
    }
    assert_eq!(
        packets(&metrics, "dropped"),
        packets(&before_restart, "dropped")
    );
    // Resets are counted by the agent process, from its start.
    assert_eq!(metrics.get("limiter_resets_total", &[]), 0);
}

#[test]
fn metrics_listen_on_loopback_by_default() {
    let net = TestNet::new(1, 1);
    let _agent = Agent::start(&net, None);
    let metrics = scrape(&net, DEFAULT_METRICS_ADDR);
    assert_eq!(
        metrics.get("limiter_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1
    );
    // Only /metrics is served.
    let other = http_get(&net.gateway, DEFAULT_METRICS_ADDR, "/").unwrap();
    assert_eq!(other.status, 404);
    // Not on the interface's address: loopback only.
    let outside = SocketAddr::new(net.gateway_ip(), 9848);
    let refused = net
        .gateway
        .run(move || TcpStream::connect_timeout(&outside, Duration::from_secs(1)));
    assert!(
        refused.is_err(),
        "metrics answered on {outside}: they must stay on loopback by default"
    );
}
