//! Runtime overrides with real traffic: above config rules at once, kept across agent restarts,
//! removed with `overrides rm`, lapsing by themselves with `--ttl`.

use limiter_tests::agent::Agent;
use limiter_tests::netns::TestNet;
use limiter_tests::traffic::{Client, Receiver};
use serde_json::Value;
use std::time::{Duration, Instant};

const CONFIG: &str = "[limits]\nrate = 1\nburst = 5\n\n\
                      [[rules]]\nname = \"office\"\ncidr = \"198.18.0.0/24\"\naction = \"allow\"\n";

/// Sends `count` datagrams from `client`; how many reached the gateway.
fn delivered(net: &TestNet, client: &Client, count: u64) -> u64 {
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    client.burst(receiver.addr, count);
    receiver.finish().get(&client.addr).copied().unwrap_or(0)
}

#[test]
fn deny_stops_a_source_at_once_survives_a_restart_and_is_removed() {
    let net = TestNet::new(2, 1);
    let mut agent = Agent::start(&net, Some(CONFIG));
    let target = net.client(0);
    let bystander = net.client(1);
    assert_eq!(
        delivered(&net, &target, 50),
        50,
        "the office rule allows everything"
    );

    let added = agent.json(&["deny", "198.18.0.10"]);
    assert_eq!(
        (added["cidr"].as_str(), added["action"].as_str()),
        (Some("198.18.0.10/32"), Some("deny"))
    );
    assert_eq!(
        delivered(&net, &target, 50),
        0,
        "deny did not apply at once (above the allow rule)"
    );
    assert_eq!(
        delivered(&net, &bystander, 50),
        50,
        "the deny hit another source"
    );
    let listed = agent.json(&["overrides"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(agent.cli(&["overrides"]).stdout.contains("until removed"));

    agent.stop();
    agent.spawn();
    assert_eq!(
        delivered(&net, &target, 50),
        0,
        "the deny did not survive the restart"
    );
    assert_eq!(agent.json(&["overrides"]).as_array().map(Vec::len), Some(1));

    assert_eq!(
        agent.json(&["overrides", "rm", "198.18.0.10"])["removed"],
        1
    );
    assert_eq!(
        delivered(&net, &target, 50),
        50,
        "overrides rm did not lift the deny"
    );
    let again = agent.cli(&["overrides", "rm", "198.18.0.10"]);
    assert_eq!(again.code, 5, "{again:?}");
    assert!(
        again.stderr.contains("no override for 198.18.0.10/32"),
        "{}",
        again.stderr
    );
}

#[test]
fn limit_overrides_and_an_allow_with_a_ttl_that_lapses() {
    let net = TestNet::new(1, 1);
    let agent = Agent::start(&net, Some("[limits]\nrate = 1\nburst = 5\n"));
    let client = net.client(0);
    assert!(delivered(&net, &client, 50) <= 6);

    // A limit override: its own bucket, named after it.
    agent.json(&["limit", "198.18.0.0/24", "--rate", "1", "--burst", "30"]);
    let got = delivered(&net, &client, 100);
    assert!((30..=31).contains(&got), "limit override: {got}");
    let key: Value = agent.json(&["inspect", "198.18.0.10"]);
    assert_eq!(key["rule"], "override 198.18.0.0/24");
    agent.json(&["overrides", "rm", "198.18.0.0/24"]);

    // Allow for 2 s: the limit is lifted, then comes back by itself.
    let started = Instant::now();
    let added = agent.json(&["allow", "198.18.0.10", "--ttl", "2s"]);
    assert!(
        added["expires_in_ms"].as_u64().is_some_and(|ms| ms <= 2000),
        "{added}"
    );
    assert_eq!(
        delivered(&net, &client, 100),
        100,
        "allow did not lift the limit"
    );
    while started.elapsed() < Duration::from_millis(2600) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        agent.json(&["overrides"]).as_array().map(Vec::len),
        Some(0),
        "the allow did not lapse"
    );
    assert!(
        delivered(&net, &client, 100) <= 8,
        "the limit is not back after the TTL"
    );
    assert!(agent.log().contains("override expired"), "{}", agent.log());
}

#[test]
fn bad_overrides_are_refused_with_a_clear_message() {
    let net = TestNet::new(0, 1);
    let agent = Agent::start(&net, Some("[limits]\nrate = 1\nburst = 5\n"));
    let out = agent.cli(&["deny", "198.18.0.300"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("198.18.1.0/24"), "{}", out.stderr);
    let out = agent.cli(&["limit", "198.18.0.0/24", "--rate", "0", "--burst", "5"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = agent.cli(&["allow", "198.18.0.0/24", "--ttl", "soon"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(
        agent.json(&["overrides"]).as_array().map(Vec::len),
        Some(0),
        "a bad override was kept"
    );
}
