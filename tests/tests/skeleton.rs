//! End to end: real UDP traffic through a veth pair into the real XDP program under the real
//! agent, inspected and reset with the real CLI.

use limiter_tests::agent::{limiter, Agent};
use limiter_tests::netns::TestNet;
use limiter_tests::traffic::{flood, BackgroundFlood, Client, Receiver};
use limiter_tests::u64_of;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RATE: u64 = 2;
const BURST: u64 = 20;
const CONFIG: &str = "[limits]\nrate = 2\nburst = 20\n\n[agent]\nmax_keys = 1024\n";

/// `burst + ⌊rate·t⌋` for the shortest and longest plausible t, the upper one +1 for rounding.
fn bucket_bounds(elapsed: Duration, slack: Duration) -> (u64, u64) {
    let passes = |t: Duration| BURST + (RATE as f64 * t.as_secs_f64()).floor() as u64;
    (
        passes(elapsed.saturating_sub(slack)),
        passes(elapsed + slack) + 1,
    )
}

#[test]
fn flooding_sources_get_exactly_their_bucket_and_reset_refills_it() {
    let net = TestNet::new(4, 1);
    let agent = Agent::start(&net, Some(CONFIG));
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    let to = receiver.addr;
    let clients = net.every_client();
    let (flooders, polite) = (&clients[..3], &clients[3]);

    // Three sources flood for 3.25 s (rate·t = 6.5, away from a rounding edge) while a fourth
    // sends one packet every 600 ms, under its rate.
    let polite_sender = {
        let polite = Arc::clone(polite);
        std::thread::spawn(move || {
            (0..5)
                .map(|_| {
                    let sent = polite.send(to) as u64;
                    std::thread::sleep(Duration::from_millis(600));
                    sent
                })
                .sum::<u64>()
        })
    };
    let refs: Vec<&Client> = flooders.iter().map(|c| c.as_ref()).collect();
    let report = flood(
        &refs,
        to,
        Duration::from_millis(3250),
        &AtomicBool::new(false),
    );
    let polite_sent = polite_sender.join().unwrap();
    let received = receiver.finish();

    let (low, high) = bucket_bounds(report.elapsed, Duration::from_millis(20));
    for (client, sent) in flooders.iter().zip(&report.sent) {
        let info = agent.json(&["inspect", &client.addr.to_string()]);
        let (passed, dropped) = (u64_of(&info, "passed"), u64_of(&info, "dropped"));
        assert!(
            (low..=high).contains(&passed),
            "{}: passed {passed}, expected burst + ⌊rate·t⌋ in {low}..={high} (t = {:?})",
            client.addr,
            report.elapsed
        );
        assert!(
            dropped > 10 * passed,
            "{}: only {dropped} dropped of {sent} sent",
            client.addr
        );
        assert!(
            passed + dropped <= *sent,
            "{}: counted more than was sent",
            client.addr
        );
        assert_eq!(
            received.get(&client.addr),
            Some(&passed),
            "{}: what arrived is what passed; status {}",
            client.addr,
            agent.json(&["status"])
        );
    }
    let info = agent.json(&["inspect", &polite.addr.to_string()]);
    assert_eq!(
        u64_of(&info, "passed"),
        polite_sent,
        "the polite client lost packets: {info}"
    );
    assert_eq!(u64_of(&info, "dropped"), 0);
    assert_eq!(info["exhausted"], false);

    // While the flood goes on, the flooders — and only they — are exhausted.
    let background = BackgroundFlood::start(flooders.to_vec(), to);
    std::thread::sleep(Duration::from_millis(300));
    let exhausted: BTreeSet<String> = agent
        .json(&["list", "--exhausted"])
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap().to_owned())
        .collect();
    let flooder_keys: BTreeSet<String> =
        flooders.iter().map(|c| format!("{}/32", c.addr)).collect();
    assert_eq!(exhausted, flooder_keys);

    let info = agent.json(&["inspect", &flooders[0].addr.to_string()]);
    for field in [
        "key",
        "rule",
        "rate",
        "burst",
        "remaining",
        "exhausted",
        "retry_after_ms",
        "passed",
        "dropped",
    ] {
        assert!(
            info.get(field).is_some(),
            "inspect --json lacks {field}: {info}"
        );
    }
    assert_eq!(info["key"], format!("{}/32", flooders[0].addr));
    assert_eq!(info["rule"], "default");
    assert_eq!(
        (u64_of(&info, "rate"), u64_of(&info, "burst")),
        (RATE, BURST)
    );
    assert_eq!(
        (u64_of(&info, "remaining"), &info["exhausted"]),
        (0, &Value::Bool(true))
    );
    assert!(
        (1..=500).contains(&u64_of(&info, "retry_after_ms")),
        "{info}"
    );

    let answer = agent.json(&["reset", "--exhausted"]);
    assert_eq!(answer["reset"], 3, "{answer}");
    drop(background.stop());

    // A reset key gets a full bucket: exactly `burst` packets pass back to back.
    let first = &flooders[0];
    assert_eq!(agent.json(&["reset", &first.addr.to_string()])["reset"], 1);
    let before = agent.json(&["inspect", &first.addr.to_string()]);
    assert_eq!(u64_of(&before, "remaining"), BURST, "{before}");
    assert_eq!(before["exhausted"], false);
    let start = Instant::now();
    first.burst(SocketAddr::new(net.gateway_ip(), to.port()), 200);
    let (_, high) = bucket_bounds(start.elapsed(), Duration::ZERO);
    let after = agent.json(&["inspect", &first.addr.to_string()]);
    let passed = u64_of(&after, "passed") - u64_of(&before, "passed");
    assert!(
        (BURST..=high).contains(&passed),
        "{passed} passed after the reset, expected {BURST}..={high}"
    );

    // Totals are the sums over keys (nothing was evicted), and the tables read well.
    let status = agent.json(&["status"]);
    let keys = agent.json(&["list"]);
    let keys = keys.as_array().unwrap();
    // The clients' four IPv4 keys, and whatever the kernel sent over IPv6 by itself (MLD …).
    assert_eq!(u64_of(&status, "tracked_keys"), keys.len() as u64);
    let v4_keys = keys
        .iter()
        .filter(|k| k["key"].as_str().unwrap().starts_with("198.18."))
        .count();
    assert_eq!(v4_keys, 4, "{keys:?}");
    assert_eq!(
        u64_of(&status, "passed"),
        keys.iter().map(|k| u64_of(k, "passed")).sum::<u64>()
    );
    assert_eq!(
        u64_of(&status, "dropped"),
        keys.iter().map(|k| u64_of(k, "dropped")).sum::<u64>()
    );
    assert_eq!(status["interfaces"][0]["name"], net.gateway_if.as_str());
    assert_eq!(status["interfaces"][0]["mode"], "native");
    assert_eq!(status["dry_run"], false);
    let table = agent.cli(&["list", "--sort", "drops"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("KEY") && table.stdout.contains("DROPPED"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(&format!("{}/32", polite.addr)),
        "{}",
        table.stdout
    );
    let text = agent.cli(&["status"]).stdout;
    assert!(
        text.contains("tracked keys") && text.contains(&net.gateway_if),
        "{text}"
    );
}

#[test]
fn cli_errors_are_clear_and_change_nothing() {
    // A malformed KEY is refused before anything is sent.
    let out = limiter(&[
        "inspect",
        "198.18.1",
        "--api-socket",
        "/nonexistent/limiter.sock",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("198.18.1.0/24"),
        "should show a valid key: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // No agent on the socket.
    let out = limiter(&["status", "--api-socket", "/nonexistent/limiter.sock"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("no agent is listening on /nonexistent/limiter.sock"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("limiter agent --iface"),
        "{}",
        out.stderr
    );

    // reset needs a selection.
    assert_eq!(limiter(&["reset"]).code, 2);

    let net = TestNet::new(1, 1);
    let agent = Agent::start(&net, Some(CONFIG));
    let client = net.client(0);
    let to = SocketAddr::new(net.gateway_ip(), 9);
    client.burst(to, 100);
    let before = agent.json(&["inspect", "198.18.0.10"]);
    assert_eq!(before["exhausted"], true);

    let out = agent.cli(&["inspect", "198.18.0.99"]);
    assert_eq!(out.code, 4, "{out:?}");
    assert!(
        out.stderr.contains("198.18.0.99/32 is not tracked"),
        "{}",
        out.stderr
    );

    // One bad key in a reset: refused, and the good one is not reset either.
    let out = agent.cli(&["reset", "198.18.0.10", "nonsense"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("'nonsense' is not a valid key"),
        "{}",
        out.stderr
    );
    assert_eq!(agent.json(&["inspect", "198.18.0.10"])["remaining"], 0);

    // A prefix selects the keys inside it.
    assert_eq!(agent.json(&["reset", "198.18.0.0/24"])["reset"], 1);
}

#[test]
fn a_bad_config_is_refused_before_the_interface_is_touched() {
    let net = TestNet::new(1, 1);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[limits]\nrate = 100\nburst = 0\n").unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &net.gateway.name])
        .arg(limiter_tests::limiter_bin())
        .args(["agent", "--iface", &net.gateway_if, "--config"])
        .arg(&config)
        .arg("--api-socket")
        .arg(dir.path().join("s.sock"))
        .arg("--pin-path")
        .arg(dir.path().join("pins"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(config.to_str().unwrap()) && stderr.contains("line 3"),
        "{stderr}"
    );
    let link = std::process::Command::new("ip")
        .args([
            "-n",
            &net.gateway.name,
            "-j",
            "link",
            "show",
            "dev",
            &net.gateway_if,
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("\"xdp\""),
        "an XDP program was attached"
    );
}

#[test]
fn without_a_config_the_agent_runs_on_the_embedded_default() {
    let net = TestNet::new(1, 1);
    let agent = Agent::start(&net, None);
    assert!(agent.log().contains("embedded default"), "{}", agent.log());
    let status = agent.json(&["status"]);
    assert_eq!(status["config"]["source"], "embedded default");
    assert_eq!(
        (
            u64_of(&status["config"], "rate"),
            u64_of(&status["config"], "burst")
        ),
        (1000, 2000)
    );
}

#[test]
fn killed_agent_leaves_enforcement_running_and_a_restart_adopts_the_state() {
    let net = TestNet::new(1, 1);
    let mut agent = Agent::start(&net, Some(CONFIG));
    let client = net.client(0);
    let to = SocketAddr::new(net.gateway_ip(), 9);
    client.burst(to, 1000);
    let before = agent.json(&["inspect", "198.18.0.10"]);

    agent.kill();
    let start = Instant::now();
    let sent = client.burst(to, 1000);
    let elapsed = start.elapsed();
    agent.spawn();
    assert!(
        agent.log().contains("took over the pinned link"),
        "{}",
        agent.log()
    );

    let after = agent.json(&["inspect", "198.18.0.10"]);
    let passed = u64_of(&after, "passed") - u64_of(&before, "passed");
    let dropped = u64_of(&after, "dropped") - u64_of(&before, "dropped");
    assert_eq!(
        passed + dropped,
        sent,
        "packets sent while the agent was down were not all counted"
    );
    assert!(
        passed <= 1 + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64,
        "{passed} passed with no agent"
    );
}
