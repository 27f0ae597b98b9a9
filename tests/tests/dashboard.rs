//! The Grafana dashboard in `dist/grafana/limiter.json` against a real Prometheus: the agent
//! runs with keyed traffic through a real nginx (keys over their rate, a key using its quota),
//! Debian's `prometheus` scrapes its `--metrics` every second in the same namespace, and every
//! query of every panel must return data through Prometheus's HTTP API. (Grafana is not packaged
//! for Debian; its built-in `$__rate_interval` is given the value Grafana would give it for a
//! 1 s scrape.)

use limiter_tests::agent::Agent;
use limiter_tests::gateway::{get_once, ClientPass, Nginx};
use limiter_tests::netns::TestNet;
use limiter_tests::prometheus::Prometheus;
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};

const DASHBOARD: &str = include_str!("../../dist/grafana/limiter.json");
const METRICS_ADDR: &str = "127.0.0.1:19852";
const PROMETHEUS_PORT: u16 = 19090;
const TOKEN: &str = "tok-dashboard-acme-4d1f";
const STRANGER: &str = "tok-dashboard-unregistered-77a0";

/// API keys: 2 requests a second (burst 3) without a plan; plan "metered" 5 a second and 100 a
/// day; quota alerts at 1 % and 50 %.
const CONFIG: &str = r#"
[limits]
rate = 100000
burst = 100000

[http]
ports = [8080]
rate = 2
burst = 3

[[plans]]
name = "metered"
rate = 5
burst = 5
quota = 100
period = "day"

[alerts]
thresholds = [1, 50]

[metrics]
top_keys = 5
"#;

/// Every panel's queries: (panel title, expr).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "a dashboard without panels");
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a panel title").to_owned();
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no queries");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of {title} without expr: {target}"));
            queries.push((title.clone(), expr.to_owned()));
        }
    }
    queries
}

/// `expr` as Grafana sends it: its built-in range variable filled in (4 scrape intervals and
/// more, as Grafana computes `$__rate_interval`). Any other variable is a dashboard this test
/// cannot check, and refused.
fn as_grafana_sends(expr: &str) -> String {
    let expr = expr.replace("$__rate_interval", "10s");
    assert!(
        !expr.contains('$'),
        "{expr}: a variable the test does not know"
    );
    expr
}

#[test]
fn every_query_of_the_dashboard_returns_data_from_a_real_prometheus() {
    limiter_tests::require_root();
    let queries = dashboard_queries();
    let panels: std::collections::BTreeSet<&str> =
        queries.iter().map(|(title, _)| title.as_str()).collect();
    for wanted in [
        "Traffic by verdict",
        "Exhausted keys",
        "Top keys by rejections",
        "Quota burn",
        "Alerts",
    ] {
        assert!(panels.contains(wanted), "no panel {wanted}: {panels:?}");
    }

    let net = TestNet::new(1, 1);
    let _pass = ClientPass::attach(&net);
    let _nginx = Nginx::start(&net);
    let agent = Agent::start_with_args(&net, Some(CONFIG), &["--metrics", METRICS_ADDR]);
    let (code, _, err) = agent.add_key("acme", Some("metered"), TOKEN);
    assert_eq!(code, 0, "keys add: {err}");
    let prometheus = Prometheus::start(&net.gateway, PROMETHEUS_PORT, METRICS_ADDR);

    // Keyed traffic: both keys over their rate (429s), acme using its quota.
    let client = IpAddr::V4(net.client_addrs[0]);
    let mut statuses = Vec::new();
    for token in [TOKEN, STRANGER] {
        let header = format!("X-API-Key: {token}");
        for _ in 0..12 {
            statuses.push(get_once(&net, client, Some(&header)).status);
        }
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );

    // Every query must come back with data once Prometheus has a few scrapes.
    let deadline = Instant::now() + Duration::from_secs(40);
    let empty = loop {
        let empty: Vec<&(String, String)> = queries
            .iter()
            .filter(|(_, expr)| {
                prometheus
                    .query(&net.gateway, &as_grafana_sends(expr))
                    .is_empty()
            })
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break empty;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        empty.is_empty(),
        "queries of the dashboard without data after 40 s: {empty:#?}\nthe agent's metrics:\n{}",
        limiter_tests::prometheus::metrics_text(&net.gateway, METRICS_ADDR)
    );

    // The per-key series name the keys, never their tokens.
    let burn = prometheus.query(&net.gateway, "limiter_key_quota_used");
    assert!(
        burn.iter().any(|s| s["metric"]["key"] == "key:acme"
            && s["metric"]["plan"] == "metered"
            && s["value"][1].as_str().is_some_and(|v| v != "0")),
        "{burn:?}"
    );
    let rejected = prometheus.query(&net.gateway, "limiter_key_dropped_total");
    let keys: Vec<&str> = rejected
        .iter()
        .filter_map(|s| s["metric"]["key"].as_str())
        .collect();
    assert!(keys.contains(&"key:acme"), "{rejected:?}");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("key:") && *k != "key:acme"),
        "the unregistered key by its fingerprint: {rejected:?}"
    );
    let everything = prometheus.query(&net.gateway, "{__name__=~\"limiter_.+\"}");
    let text = serde_json::to_string(&everything).unwrap();
    assert!(
        !text.contains(TOKEN) && !text.contains(STRANGER),
        "a token in the metrics"
    );
    // acme reached 1 % of its quota: one alert, counted, scraped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alerted = |value: &str| {
        let alerts = prometheus.query(&net.gateway, "limiter_quota_alerts_total{threshold=\"1\"}");
        alerts.first().and_then(|s| s["value"][1].as_str()) == Some(value)
    };
    while !alerted("1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        alerted("1"),
        "no quota alert at 1 % counted:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("quota threshold reached"),
        "{}",
        agent.log()
    );
}
