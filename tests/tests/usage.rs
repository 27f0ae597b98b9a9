//! Usage history end to end: the real agent on the gateway's veth with a real nginx behind it,
//! keyed requests from the clients' namespace. `limiter usage` shows what the kernel counted —
//! per key, passed and rejected — also after the agent restarts; a history file that cannot be
//! read is moved aside and the agent runs on; bad input is refused with the usual exit codes.

use limiter_tests::agent::Agent;
use limiter_tests::gateway::{get_once, ClientPass, Nginx};
use limiter_tests::netns::TestNet;
use limiter_tests::u64_of;
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Source limits far above anything here; API keys at 1/s, burst 3.
const CONFIG: &str = r#"
[limits]
rate = 100000
burst = 100000

[http]
ports = [8080]
rate = 1
burst = 3

[usage]
keys = 100
"#;

const ACME_TOKEN: &str = "tok-usage-acme-5e1d";
const STRANGER_TOKEN: &str = "tok-usage-stranger-90af";

struct Bed {
    agent: Agent,
    _nginx: Nginx,
    _pass: ClientPass,
    net: TestNet,
}

fn bed() -> Bed {
    let net = TestNet::new(2, 1);
    let pass = ClientPass::attach(&net);
    let nginx = Nginx::start(&net);
    let agent = Agent::start(&net, Some(CONFIG));
    Bed {
        agent,
        _nginx: nginx,
        _pass: pass,
        net,
    }
}

impl Bed {
    fn client(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.net.client_addrs[i])
    }

    /// `count` requests with `token`, each on a connection of its own; the statuses.
    fn requests(&self, from: usize, token: &str, count: usize) -> Vec<u16> {
        let header = format!("X-API-Key: {token}");
        (0..count)
            .map(|_| get_once(&self.net, self.client(from), Some(&header)).status)
            .collect()
    }

    /// `limiter usage ARGS --json`.
    fn usage(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["usage"];
        all.extend(args);
        match self.agent.json(&all) {
            Value::Array(series) => series,
            other => panic!("usage --json is not an array: {other}"),
        }
    }

    /// `inspect KEY --json`: the kernel's passed and dropped of the key.
    fn kernel_counts(&self, key: &str) -> (u64, u64) {
        let info = self.agent.json(&["inspect", key]);
        (u64_of(&info, "passed"), u64_of(&info, "dropped"))
    }

    /// Waits until `usage KEY` over the last hour adds up to what the kernel counted for KEY
    /// (the agent samples every few seconds); the series then.
    fn usage_matching_kernel(&self, key: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let kernel = self.kernel_counts(key);
            let out = self
                .agent
                .cli(&["usage", key, "--since", "1h", "--by", "minute", "--json"]);
            // Exit 4: nothing of the key recorded yet.
            let one = match out.code {
                4 => Value::Null,
                _ => {
                    let series: Vec<Value> = serde_json::from_value(out.json()).unwrap();
                    assert_eq!(series.len(), 1, "{series:?}");
                    let one = series.into_iter().next().unwrap();
                    if sums(&one) == kernel {
                        return one;
                    }
                    one
                }
            };
            assert!(
                Instant::now() < deadline,
                "usage of {key} never matched the kernel's {kernel:?}: {one}\n{}",
                self.agent.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A series' passed and dropped, added up from its points (and checked against its own sums).
fn sums(series: &Value) -> (u64, u64) {
    let points = series["points"].as_array().expect("points");
    let passed = points.iter().map(|p| u64_of(p, "passed")).sum();
    let dropped = points.iter().map(|p| u64_of(p, "dropped")).sum();
    assert_eq!(
        (u64_of(series, "passed"), u64_of(series, "dropped")),
        (passed, dropped),
        "{series}"
    );
    (passed, dropped)
}

fn count(statuses: &[u16], status: u16) -> u64 {
    statuses.iter().filter(|s| **s == status).count() as u64
}

#[test]
fn usage_shows_what_the_kernel_counted_per_key_and_survives_a_restart() {
    let mut bed = bed();
    let (code, _, err) = bed.agent.add_key("acme", None, ACME_TOKEN);
    assert_eq!(code, 0, "keys add: {err}");
    let statuses = bed.requests(0, ACME_TOKEN, 10);
    let (passed, rejected) = (count(&statuses, 200), count(&statuses, 429));
    assert!(passed >= 3 && rejected >= 5, "{statuses:?}");
    bed.requests(1, STRANGER_TOKEN, 2);

    // The API key: its requests passed and answered 429, as the kernel counted them.
    let acme = bed.usage_matching_kernel("key:acme");
    assert_eq!(sums(&acme), (passed, rejected), "{acme}");
    assert_eq!(acme["key"], "key:acme");
    assert_eq!(acme["kind"], "api_key");
    assert_eq!(acme["by"], "minute");
    let points = acme["points"].as_array().unwrap();
    assert!(
        (60..=61).contains(&points.len()),
        "an hour of minutes: {}",
        points.len()
    );
    let at = points[0]["at"].as_str().unwrap();
    assert!(
        at.ends_with(":00.000Z") && at.len() == 24,
        "RFC 3339 minutes: {at}"
    );
    // A source key: every packet the client sent, as the kernel counted them.
    let source = bed.net.client_addrs[0].to_string();
    let client = bed.usage_matching_kernel(&source);
    assert_eq!(client["key"], format!("{source}/32"));
    assert!(sums(&client).0 > passed, "packets, not requests: {client}");

    // Without KEY: the totals over all keys first, then the busiest keys.
    let all = bed.usage(&["--since", "1h"]);
    assert_eq!(all[0]["key"], "all", "{all:?}");
    assert_eq!(all[0]["kind"], "total");
    assert_eq!(all[0]["by"], "minute", "the default for an hour");
    let keys = &all[1..];
    let names: Vec<&str> = keys.iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert!(names.contains(&"key:acme"), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("key:") && *n != "key:acme"),
        "the unregistered key by its fingerprint: {names:?}"
    );
    let added = keys
        .iter()
        .map(sums)
        .fold((0, 0), |(p, d), (kp, kd)| (p + kp, d + kd));
    assert_eq!(
        sums(&all[0]),
        added,
        "every key is kept: the totals are their sum"
    );
    let busiest: Vec<u64> = keys.iter().map(|k| sums(k).0 + sums(k).1).collect();
    assert!(
        busiest.windows(2).all(|w| w[0] >= w[1]),
        "busiest first: {busiest:?}"
    );

    // For a person: a chart that fits 80 columns.
    let text = bed.agent.cli(&["usage", "key:acme", "--since", "30m"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.starts_with("key:acme, the last 30m, by minute"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains('░'),
        "rejected requests are drawn: {}",
        text.stdout
    );
    for line in text.stdout.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    let text = bed.agent.cli(&["usage"]);
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(text.stdout.contains("busiest keys"), "{}", text.stdout);
    assert!(text.stdout.contains("key:acme"), "{}", text.stdout);

    // Restarted: the history is still there, and counts on.
    bed.agent.stop();
    bed.agent.spawn();
    let after = bed.usage(&["key:acme", "--since", "1h", "--by", "minute"]);
    assert_eq!(
        sums(&after[0]),
        (passed, rejected),
        "kept across the restart"
    );
    std::thread::sleep(Duration::from_millis(1500));
    bed.requests(0, ACME_TOKEN, 3);
    let acme = bed.usage_matching_kernel("key:acme");
    assert!(
        sums(&acme).0 + sums(&acme).1 == passed + rejected + 3,
        "{acme}"
    );
    let by_hour = bed.usage(&["key:acme", "--since", "2h", "--by", "hour"]);
    assert_eq!(
        sums(&by_hour[0]),
        sums(&acme),
        "hours add up to their minutes"
    );
    let by_day = bed.usage(&["key:acme", "--since", "2d", "--by", "day"]);
    assert_eq!(sums(&by_day[0]), sums(&acme), "days add up to their hours");

    // The token is nowhere: not in the history file, the output, or the log.
    let file = std::fs::read(bed.agent.state_dir().join("usage.redb")).unwrap();
    for token in [ACME_TOKEN, STRANGER_TOKEN] {
        assert!(
            !file.windows(token.len()).any(|w| w == token.as_bytes()),
            "{token} in usage.redb"
        );
        assert!(!bed.agent.log().contains(token));
        assert!(!format!("{all:?}").contains(token));
    }
}

#[test]
fn a_history_that_cannot_be_read_is_moved_aside_and_the_agent_runs_on() {
    let mut bed = bed();
    bed.agent.stop();
    let path = bed.agent.state_dir().join("usage.redb");
    let garbage = b"this is not a redb file, it only has its name".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    bed.agent.spawn();

    let log = bed.agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("the usage history cannot be read")
                && l.contains("moved aside")
                && l.contains("usage.redb.unreadable-")),
        "{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(bed.agent.state_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("usage.redb.unreadable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        garbage,
        "kept for inspection"
    );

    // Enforcement as ever, and the traffic recorded in the new history.
    let statuses = bed.requests(0, ACME_TOKEN, 6);
    assert_eq!(count(&statuses, 200), 3, "the burst: {statuses:?}");
    assert_eq!(count(&statuses, 429), 3, "{statuses:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = bed.usage(&["--since", "10m"]);
        if sums(&all[0]).1 == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "never recorded: {all:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `chattr` on the history: while the file is immutable every write to it fails (as on a full
/// disk), even through the agent's open descriptor.
fn immutable(path: &std::path::Path, on: bool) {
    let out = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .output()
        .expect("running chattr");
    assert!(
        out.status.success(),
        "chattr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_history_that_cannot_be_written_is_said_once_and_enforcement_goes_on() {
    let bed = bed();
    bed.requests(0, ACME_TOKEN, 1);
    bed.usage_matching_kernel(&bed.net.client_addrs[0].to_string());
    let path = bed.agent.state_dir().join("usage.redb");
    immutable(&path, true);
    let failing = |log: &str| {
        log.lines()
            .filter(|l| l.contains("writing the usage history"))
            .count()
    };
    let statuses = bed.requests(0, ACME_TOKEN, 6);
    let deadline = Instant::now() + Duration::from_secs(20);
    while failing(&bed.agent.log()) == 0 {
        assert!(
            Instant::now() < deadline,
            "no failure said:\n{}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Several samples later, still said once; the kernel went on limiting.
    std::thread::sleep(Duration::from_secs(11));
    immutable(&path, false);
    assert_eq!(failing(&bed.agent.log()), 1, "{}", bed.agent.log());
    assert!(
        count(&statuses, 200) <= 3,
        "at most the burst: {statuses:?}"
    );
    assert!(
        count(&statuses, 429) >= 3,
        "the rest answered 429: {statuses:?}"
    );
    // Writable again: the file is opened again and the history goes on.
    let deadline = Instant::now() + Duration::from_secs(45);
    while !bed
        .agent
        .log()
        .contains("the usage history is written again")
    {
        assert!(
            Instant::now() < deadline,
            "never written again:\n{}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    bed.requests(1, STRANGER_TOKEN, 1);
    bed.usage_matching_kernel(&bed.net.client_addrs[1].to_string());
}

#[test]
fn bad_usage_input_is_refused_with_a_clear_error() {
    let bed = bed();
    let cases: [(&[&str], i32, &str); 7] = [
        (&["--since", "yesterday"], 2, "90m, 24h or 7d"),
        (&["--since", "30d"], 2, "at most 7d"),
        (&["--since", "0m"], 2, "more than 0"),
        (&["--by", "week"], 2, "minute"),
        (&["--top", "0"], 2, "at least 1"),
        (&["not-a-key"], 2, "not a valid key"),
        (&["key:nobody"], 4, "no key is registered as 'nobody'"),
    ];
    for (args, code, says) in cases {
        let mut all = vec!["usage"];
        all.extend(args);
        let out = bed.agent.cli(&all);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    // A key nothing is recorded of.
    let out = bed.agent.cli(&["usage", "198.18.99.99"]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr
            .contains("no usage of 198.18.99.99/32 is recorded in the last 7 days"),
        "{}",
        out.stderr
    );
}
