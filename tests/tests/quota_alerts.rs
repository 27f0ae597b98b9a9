//! Quota alerts end to end: the real agent with a plan of 10 requests a minute and
//! `[alerts] thresholds = [50, 80, 100]`, a real nginx behind it, a webhook receiver beside it.
//! A key's requests crossing 5, 8 and 10 give exactly one alert per threshold — on the webhook
//! with the documented fields and no token, in the log, in `limiter_quota_alerts_total` — and
//! none again on further requests, after the quota is given back and used again, or after the
//! agent restarts in the same minute.

use limiter_tests::agent::Agent;
use limiter_tests::gateway::{get_once, ClientPass, Nginx};
use limiter_tests::netns::TestNet;
use limiter_tests::prometheus::{metrics_text, sample};
use limiter_tests::webhook::{alerts, WebhookReceiver};
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TOKEN: &str = "tok-alerted-9f3e77";
const METRICS_ADDR: &str = "127.0.0.1:19851";

fn config(webhook: &WebhookReceiver) -> String {
    format!(
        r#"
[limits]
rate = 100000
burst = 100000

[http]
ports = [8080]
rate = 1000
burst = 1000

[[plans]]
name = "metered"
rate = 1000
burst = 1000
quota = 10
period = "minute"

[alerts]
webhook = "{}"
thresholds = [50, 80, 100]
"#,
        webhook.url()
    )
}

fn utc_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits, if needed, so that the next 40 seconds are in one minute: the test must not see the
/// window roll over (which re-arms every threshold).
fn early_in_a_minute() {
    limiter_tests::within_one_minute(Duration::from_secs(45));
}

/// The quota alerts the receiver got so far.
fn quota_alerts(webhook: &WebhookReceiver) -> Vec<Value> {
    alerts(&webhook.posts())
        .into_iter()
        .filter(|a| a["kind"] == "quota_threshold")
        .collect()
}

#[test]
fn a_key_crossing_its_thresholds_is_alerted_once_each_per_window() {
    limiter_tests::require_root();
    let net = TestNet::new(1, 1);
    let _pass = ClientPass::attach(&net);
    let _nginx = Nginx::start(&net);
    let webhook = WebhookReceiver::start(&net.gateway);
    let mut agent =
        Agent::start_with_args(&net, Some(&config(&webhook)), &["--metrics", METRICS_ADDR]);
    let (code, _, err) = agent.add_key("meter", Some("metered"), TOKEN);
    assert_eq!(code, 0, "keys add: {err}");
    let client = IpAddr::V4(net.client_addrs[0]);
    let header = format!("X-API-Key: {TOKEN}");
    let send = |n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| get_once(&net, client, Some(&header)).status)
            .collect()
    };

    early_in_a_minute();
    let minute_end = (utc_secs() / 60 + 1) * 60;
    // 4 of 10: below every threshold.
    assert_eq!(send(4), [200; 4]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        quota_alerts(&webhook),
        Vec::<Value>::new(),
        "40 % is below 50 %"
    );

    // 5 to 8 (50 % and 80 %), then 9 and 10 (100 %), then two over the quota.
    assert_eq!(send(4), [200; 4]);
    assert_eq!(send(2), [200; 2]);
    assert_eq!(send(2), [429; 2], "over the quota");
    let posts = webhook.wait_for(Duration::from_secs(10), |_| {
        quota_alerts(&webhook).len() >= 3
    });
    let got = quota_alerts(&webhook);
    let thresholds: Vec<u64> = got
        .iter()
        .map(|a| a["threshold"].as_u64().unwrap())
        .collect();
    assert_eq!(thresholds, [50, 80, 100], "{got:?}");
    let resets_at = rfc3339(minute_end);
    for alert in &got {
        let threshold = alert["threshold"].as_u64().unwrap();
        assert_eq!(alert["key"], "key:meter", "{alert}");
        assert_eq!(alert["plan"], "metered", "{alert}");
        assert_eq!(alert["limit"].as_u64(), Some(10), "{alert}");
        assert_eq!(alert["period"], "minute", "{alert}");
        assert_eq!(
            alert["resets_at"].as_str(),
            Some(resets_at.as_str()),
            "{alert}"
        );
        let used = alert["used"].as_u64().unwrap();
        assert!(
            used * 100 >= threshold * 10 && used <= 10,
            "used {used} at the {threshold} % alert: {alert}"
        );
        assert!(
            alert["exhausts_at"].is_string() || alert["exhausts_at"].is_null(),
            "{alert}"
        );
    }
    let full = &got[2];
    assert_eq!(full["used"].as_u64(), Some(10));
    assert!(full["exhausts_at"].is_string(), "used up: now, {full}");
    for post in &posts {
        assert!(
            !post.body.to_string().contains(TOKEN),
            "the token in an alert: {}",
            post.body
        );
    }
    let log = agent.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("quota threshold reached"))
        .collect();
    assert_eq!(lines.len(), 3, "{log}");
    for (line, threshold) in lines.iter().zip([50, 80, 100]) {
        assert!(
            line.contains("key=key:meter")
                && line.contains(&format!("threshold={threshold}"))
                && line.contains("plan=metered")
                && line.contains("limit=10"),
            "{line}"
        );
    }
    assert!(!log.contains(TOKEN), "the token in the log");
    let metrics = metrics_text(&net.gateway, METRICS_ADDR);
    for threshold in [50, 80, 100] {
        assert_eq!(
            sample(
                &metrics,
                &format!("limiter_quota_alerts_total{{threshold=\"{threshold}\"}}")
            ),
            Some(1.0),
            "{metrics}"
        );
    }
    assert!(!metrics.contains(TOKEN), "the token in the metrics");
    let inspect = agent.json(&["inspect", "key:meter"]);
    assert_eq!(inspect["quota"]["used"].as_u64(), Some(10), "{inspect}");

    // More requests, the quota given back and used again: still the same window, no repeats.
    assert_eq!(send(2), [429; 2]);
    let reset = agent.cli(&["reset", "--quota", "key:meter"]);
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    assert_eq!(send(9), [200; 9]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        quota_alerts(&webhook).len(),
        3,
        "{:?}",
        quota_alerts(&webhook)
    );

    // A restart in the same minute: what was alerted is remembered.
    agent.stop();
    agent.spawn();
    assert_eq!(send(2), [200, 429]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        quota_alerts(&webhook).len(),
        3,
        "{:?}",
        quota_alerts(&webhook)
    );
    let restarted = metrics_text(&net.gateway, METRICS_ADDR);
    assert_eq!(
        sample(&restarted, "limiter_quota_alerts_total{threshold=\"100\"}"),
        Some(0.0),
        "a new agent counts from zero, and has alerted nothing again: {restarted}"
    );
    assert!(
        utc_secs() < minute_end,
        "the minute ended during the test: the checks above are not about one window"
    );

    // Thresholds that are not increasing percents: the reload is refused with the file and
    // line, and the thresholds in force stay (still counted at 0).
    let good = config(&webhook);
    agent.write_config(&good.replace("[50, 80, 100]", "[50, 100, 80]"));
    let reload = agent.cli(&["reload"]);
    assert_ne!(reload.code, 0, "{}", reload.stdout);
    let line = good
        .lines()
        .position(|l| l.starts_with("thresholds"))
        .unwrap()
        + 1;
    assert!(
        reload.stderr.contains("limiter.toml")
            && reload.stderr.contains(&format!("line {line}"))
            && reload.stderr.contains("80 after 100"),
        "{}",
        reload.stderr
    );
    let metrics = metrics_text(&net.gateway, METRICS_ADDR);
    assert!(
        metrics.contains("limiter_quota_alerts_total{threshold=\"50\"}"),
        "{metrics}"
    );
}

/// `secs` as the agent writes times: RFC 3339, UTC, milliseconds.
fn rfc3339(secs: u64) -> String {
    let (year, month, day) = limiter_common::quota::civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
