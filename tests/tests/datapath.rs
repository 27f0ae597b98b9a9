//! The datapath with real traffic: IPv6 grouping, rules, dry run, neighbour discovery under a
//! flood, and a random-source flood far beyond `max_keys`.

use limiter_tests::agent::Agent;
use limiter_tests::netns::{ip, TestNet};
use limiter_tests::traffic::{ipv4_udp_frame, BackgroundFlood, Client, RawSender, Receiver};
use limiter_tests::u64_of;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn addr(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Sends `count` datagrams from each source back to back; returns what reached the gateway.
fn send_from(
    net: &TestNet,
    sources: &[&str],
    count: u64,
) -> std::collections::HashMap<IpAddr, u64> {
    let v4 = Receiver::start(&net.gateway, net.gateway_ip());
    let v6 = Receiver::start(&net.gateway, net.gateway_ip6());
    for source in sources {
        let source = addr(source);
        let client = Client::new(&net.clients, source);
        let to = if source.is_ipv4() { v4.addr } else { v6.addr };
        assert_eq!(
            client.burst(to, count),
            count,
            "{source}: the kernel refused datagrams"
        );
    }
    let mut received = v4.finish();
    received.extend(v6.finish());
    received
}

#[test]
fn ipv6_sources_are_grouped_by_prefix() {
    let net = TestNet::new(0, 1);
    for a in ["2001:2:0:1::10", "2001:2:0:1::11", "2001:2:0:2::10"] {
        net.add_client_addr(addr(a));
    }
    let agent = Agent::start(
        &net,
        Some("[limits]\nrate = 1\nburst = 5\nipv6_prefix = 64\n"),
    );
    let received = send_from(
        &net,
        &["2001:2:0:1::10", "2001:2:0:1::11", "2001:2:0:2::10"],
        50,
    );
    // One bucket for the first /64, shared by its two sources; another for the second /64.
    let same_64 = received.get(&addr("2001:2:0:1::10")).copied().unwrap_or(0)
        + received.get(&addr("2001:2:0:1::11")).copied().unwrap_or(0);
    assert!((5..=6).contains(&same_64), "{received:?}");
    let other = received.get(&addr("2001:2:0:2::10")).copied().unwrap_or(0);
    assert!((5..=6).contains(&other), "{received:?}");

    let key = agent.json(&["inspect", "2001:2:0:1::11"]);
    assert_eq!(key["key"], "2001:2:0:1::/64");
    assert_eq!(u64_of(&key, "passed"), same_64);
    assert_eq!(u64_of(&key, "dropped"), 100 - same_64);
    assert_eq!(
        agent.json(&["inspect", "2001:2:0:2::/64"])["key"],
        "2001:2:0:2::/64"
    );
    // A prefix covering both keys selects both.
    assert_eq!(agent.json(&["reset", "2001:2::/48"])["reset"], 2);
}

const RULES: &str = r#"
[limits]
rate = 1
burst = 5

[[rules]]
name = "office"
cidr = "198.18.0.10/32"
action = "allow"

[[rules]]
name = "abuser"
cidr = "198.18.0.11/32"
action = "deny"

[[rules]]
name = "partner"
cidr = "198.18.0.12/32"
action = "limit"
rate = 1
burst = 20

[[rules]]
name = "v6-office"
cidr = "2001:2:0:3::/64"
action = "allow"

[[rules]]
name = "v6-abuser"
cidr = "2001:2:0:4::/64"
action = "deny"

[[rules]]
name = "v6-tenant"
cidr = "2001:2:0:10::/60"
action = "limit"
rate = 1
burst = 8
shared = true
"#;

#[test]
fn allow_deny_and_limit_rules_for_ipv4_and_ipv6() {
    let net = TestNet::new(4, 1);
    let v6 = [
        "2001:2:0:3::1",
        "2001:2:0:4::1",
        "2001:2:0:10::1",
        "2001:2:0:11::1",
        "2001:2:0:20::1",
    ];
    for a in v6 {
        net.add_client_addr(addr(a));
    }
    let agent = Agent::start(&net, Some(RULES));
    let mut sources = vec!["198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"];
    sources.extend(v6);
    let received = send_from(&net, &sources, 60);
    let got = |a: &str| received.get(&addr(a)).copied().unwrap_or(0);

    assert_eq!(got("198.18.0.10"), 60, "allow: everything passes");
    assert_eq!(got("198.18.0.11"), 0, "deny: nothing passes");
    assert!(
        (20..=21).contains(&got("198.18.0.12")),
        "limit: its own burst: {received:?}"
    );
    assert!(
        (5..=6).contains(&got("198.18.0.13")),
        "default: {received:?}"
    );
    assert_eq!(got("2001:2:0:3::1"), 60);
    assert_eq!(got("2001:2:0:4::1"), 0);
    // Shared: one bucket of 8 for the whole /60, though the sources are in different /64s.
    let tenant = got("2001:2:0:10::1") + got("2001:2:0:11::1");
    assert!((8..=9).contains(&tenant), "shared: {received:?}");
    assert!(
        (5..=6).contains(&got("2001:2:0:20::1")),
        "v6 default: {received:?}"
    );

    let partner = agent.json(&["inspect", "198.18.0.12"]);
    assert_eq!(
        (partner["rule"].as_str(), u64_of(&partner, "burst")),
        (Some("partner"), 20)
    );
    let tenant_key = agent.json(&["inspect", "2001:2:0:11::1"]);
    assert_eq!(tenant_key["key"], "2001:2:0:10::/60");
    assert_eq!(tenant_key["rule"], "v6-tenant");
    assert_eq!(agent.json(&["inspect", "198.18.0.13"])["rule"], "default");
    let office = agent.cli(&["inspect", "198.18.0.10"]);
    assert_eq!(office.code, 4);
    assert!(
        office.stderr.contains("rule 'office'") && office.stderr.contains("allows"),
        "{}",
        office.stderr
    );

    let status = agent.json(&["status"]);
    assert_eq!(u64_of(&status, "allowed_by_rule"), 120, "{status}");
    assert_eq!(u64_of(&status, "denied_by_rule"), 120, "{status}");
    assert_eq!(u64_of(&status, "rules"), 6);
}

#[test]
fn dry_run_passes_everything_and_counts_what_it_would_drop() {
    let net = TestNet::new(2, 1);
    let config = "[limits]\nrate = 1\nburst = 5\ndry_run = true\n\n\
                  [[rules]]\nname = \"abuser\"\ncidr = \"198.18.0.11/32\"\naction = \"deny\"\n";
    let agent = Agent::start(&net, Some(config));
    let received = send_from(&net, &["198.18.0.10", "198.18.0.11"], 50);
    assert_eq!(
        received.get(&addr("198.18.0.10")),
        Some(&50),
        "dry run dropped packets"
    );
    assert_eq!(
        received.get(&addr("198.18.0.11")),
        Some(&50),
        "dry run dropped a denied source"
    );

    let key = agent.json(&["inspect", "198.18.0.10"]);
    let passed = u64_of(&key, "passed");
    assert!((5..=6).contains(&passed), "{key}");
    assert_eq!(u64_of(&key, "would_drop"), 50 - passed);
    assert_eq!(u64_of(&key, "dropped"), 0);
    assert_eq!(key["exhausted"], true);

    let status = agent.json(&["status"]);
    assert_eq!(status["dry_run"], true);
    assert_eq!(u64_of(&status, "dropped"), 0);
    assert_eq!(u64_of(&status, "would_drop"), 50 - passed + 50, "{status}");
    assert_eq!(u64_of(&status, "denied_by_rule"), 50);
    let table = agent.cli(&["list"]).stdout;
    assert!(table.contains("WOULD DROP"), "{table}");
}

#[test]
fn arp_and_neighbour_discovery_keep_working_while_sources_flood() {
    // The flooders are denied outright. Neighbour solicitations carry the source address of the
    // packets waiting for them — the flood's — so were neighbour discovery judged by its source
    // it would be dropped, the gateway would never be resolved again, and the polite clients
    // behind the same neighbour entry would be cut off with the flooders.
    let net = TestNet::new(2, 1);
    for a in ["2001:2:0:1::10", "2001:2:0:2::10"] {
        net.add_client_addr(addr(a));
    }
    let config = "[limits]\nrate = 1000\nburst = 1000\n\n\
                  [[rules]]\nname = \"flood4\"\ncidr = \"198.18.0.10/32\"\naction = \"deny\"\n\n\
                  [[rules]]\nname = \"flood6\"\ncidr = \"2001:2:0:1::/64\"\naction = \"deny\"\n";
    let agent = Agent::start(&net, Some(config));
    let v4 = Receiver::start(&net.gateway, net.gateway_ip());
    let v6 = Receiver::start(&net.gateway, net.gateway_ip6());
    let flooders = vec![
        Arc::new(Client::new(&net.clients, addr("198.18.0.10"))),
        Arc::new(Client::new(&net.clients, addr("2001:2:0:1::10"))),
    ];
    let polite = [
        (Client::new(&net.clients, addr("198.18.0.11")), v4.addr),
        (Client::new(&net.clients, addr("2001:2:0:2::10")), v6.addr),
    ];
    let flood = BackgroundFlood::start_to(flooders, vec![v4.addr, v6.addr]);
    std::thread::sleep(Duration::from_millis(300));
    for (client, to) in &polite {
        client.send(*to);
    }
    std::thread::sleep(Duration::from_millis(100));
    let not_limited_before = u64_of(&agent.json(&["status"]), "not_limited");
    let passed_before: Vec<u64> = ["198.18.0.11", "2001:2:0:2::10"]
        .iter()
        .map(|a| passed(&agent, a))
        .collect();

    // Forget every neighbour on both sides, while the flood goes on.
    for ns in [&net.clients.name, &net.gateway.name] {
        ip(&["-n", ns, "-4", "neigh", "flush", "all"]);
        ip(&["-n", ns, "-6", "neigh", "flush", "all"]);
    }
    for (family, gateway) in [("-4", "198.18.0.1"), ("-6", "2001:2::1")] {
        ip(&[
            "-n",
            &net.clients.name,
            family,
            "neigh",
            "del",
            gateway,
            "dev",
            &net.client_if,
        ]);
    }
    for _ in 0..20 {
        for (client, to) in &polite {
            client.send(*to);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(flood.stop());
    let passed_after: Vec<u64> = ["198.18.0.11", "2001:2:0:2::10"]
        .iter()
        .map(|a| passed(&agent, a))
        .collect();
    drop((v4.finish(), v6.finish()));

    assert!(
        passed_after[0] > passed_before[0] + 10,
        "IPv4 was not resolved again: {passed_before:?} → {passed_after:?}"
    );
    assert!(
        passed_after[1] > passed_before[1] + 10,
        "IPv6 was not resolved again: {passed_before:?} → {passed_after:?}"
    );
    let status = agent.json(&["status"]);
    assert!(
        u64_of(&status, "not_limited") > not_limited_before,
        "{status}"
    );
    assert!(u64_of(&status, "denied_by_rule") > 1000, "{status}");
}

/// Passed packets of the key holding `source`.
fn passed(agent: &Agent, source: &str) -> u64 {
    u64_of(&agent.json(&["inspect", source]), "passed")
}

#[test]
fn a_random_source_flood_beyond_max_keys_does_not_free_a_heavy_hitter() {
    const RATE: u64 = 10;
    const BURST: u64 = 20;
    let net = TestNet::new(0, 1);
    // Without a bound on new keys: the LRU table alone must keep the heavy hitter.
    let config = format!(
        "[limits]\nrate = {RATE}\nburst = {BURST}\n\n[agent]\nmax_keys = 512\nnew_keys_per_sec = \"off\"\n"
    );
    let agent = Agent::start(&net, Some(&config));
    let sender = RawSender::new(&net.clients, &net.client_if);
    let gateway = Ipv4Addr::new(198, 18, 0, 1);
    let heavy = ipv4_udp_frame(Ipv4Addr::new(198, 18, 0, 10), gateway, 9000);

    // The heavy hitter sends every 4th frame; the rest come from ever new sources in
    // 198.19.0.0/16, 64 times more keys than the map holds.
    let mut state = 0x2545_f491_u32;
    let start = Instant::now();
    let mut heavy_sent = 0u64;
    for i in 0..(32_768 * 4) {
        if i % 4 == 0 {
            heavy_sent += sender.send(&heavy) as u64;
        } else {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let source = Ipv4Addr::new(198, 19, (state >> 8) as u8, state as u8);
            sender.send(&ipv4_udp_frame(source, gateway, 9000));
        }
    }
    let elapsed = start.elapsed();

    let key = agent.json(&["inspect", "198.18.0.10"]);
    let passed = u64_of(&key, "passed");
    let bound = BURST + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        passed <= bound,
        "the heavy hitter passed {passed} > {bound} in {elapsed:?}: evicted and refilled"
    );
    assert!(u64_of(&key, "dropped") + passed <= heavy_sent);
    let status = agent.json(&["status"]);
    assert!(u64_of(&status, "tracked_keys") <= 512, "{status}");
    assert!(
        u64_of(&status, "evicted_keys") > 10_000,
        "evictions not counted: {status}"
    );
    assert_eq!(u64_of(&status, "insert_failed"), 0, "{status}");
    let _ = SocketAddr::new(IpAddr::V4(gateway), 9000);
}
