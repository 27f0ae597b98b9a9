//! The agent as a service: reload (API and SIGHUP) that refuses bad files and keeps buckets,
//! detach with no agent, adoption of pinned state that does or does not fit, program
//! replacement on restart, and the API socket's permissions.

use limiter_tests::agent::{limiter, Agent};
use limiter_tests::netns::TestNet;
use limiter_tests::u64_of;
use serde_json::Value;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

fn config(rate: u64, burst: u64) -> String {
    format!("[limits]\nrate = {rate}\nburst = {burst}\n\n[agent]\nmax_keys = 1024\n")
}

/// The id of the XDP program attached to `iface` in `netns`, if any.
fn xdp_prog_id(netns: &str, iface: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", netns, "-j", "link", "show", "dev", iface])
        .output()
        .unwrap();
    let links: Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["xdp"]["prog"]["id"].as_u64()
}

#[test]
fn reload_applies_a_good_file_keeps_buckets_and_refuses_bad_ones() {
    let net = TestNet::new(1, 1);
    let agent = Agent::start(&net, Some(&config(1, 5)));
    let client = net.client(0);
    let to = SocketAddr::new(net.gateway_ip(), 9);
    client.burst(to, 20);
    let before = agent.json(&["inspect", "198.18.0.10"]);
    assert_eq!(u64_of(&before, "passed"), 5, "{before}");

    // A dozen bad files: each refused with the file and the line, and nothing changes.
    let path = agent.config_path().unwrap().display().to_string();
    let bad = [
        ("[limits]\nrate = 1\nburts = 5\n", "line 3"),
        ("[limits]\nrate = 1\nburst = 0\n", "line 3"),
        ("[limits]\nrate = \"many\"\n", "line 2"),
        ("[limits]\nipv4_prefix = 40\n", "line 2"),
        ("[limits]\nipv6_prefix = 129\n", "line 2"),
        ("[limits]\ndry_run = \"yes\"\n", "line 2"),
        ("[limits\nrate = 1\n", "line 1"),
        ("[surprise]\nx = 1\n", "line 1"),
        (
            "[[rules]]\nname = \"a\"\ncidr = \"198.18.0.0/99\"\naction = \"deny\"\n",
            "line 3",
        ),
        (
            "[[rules]]\nname = \"a\"\ncidr = \"198.18.0.0/16\"\naction = \"block\"\n",
            "line 4",
        ),
        (
            "[[rules]]\nname = \"a\"\ncidr = \"198.18.0.0/16\"\naction = \"limit\"\n",
            "line 1",
        ),
        (
            "[[rules]]\nname = \"a\"\ncidr = \"198.18.0.0/16\"\naction = \"deny\"\n\
             [[rules]]\nname = \"a\"\ncidr = \"198.18.1.0/24\"\naction = \"deny\"\n",
            "line 5",
        ),
        ("[agent]\nmax_keys = 2048\n", "max_keys cannot change"),
    ];
    for (text, line) in bad {
        agent.write_config(text);
        let out = agent.cli(&["reload"]);
        assert_eq!(out.code, 1, "{text:?} was not refused: {out:?}");
        assert!(
            out.stderr.contains(&path) && out.stderr.contains(line),
            "{text:?}: {}",
            out.stderr
        );
    }
    let status = agent.json(&["status"]);
    assert_eq!(
        (
            u64_of(&status["config"], "rate"),
            u64_of(&status["config"], "burst")
        ),
        (1, 5)
    );
    // The old limit still holds.
    client.burst(to, 20);
    let after_bad = agent.json(&["inspect", "198.18.0.10"]);
    assert!(u64_of(&after_bad, "passed") <= 5 + 2, "{after_bad}");

    // A good file applies at once; the key keeps its bucket and counters.
    agent.write_config(&config(1, 50));
    let answer = agent.json(&["reload"]);
    assert_eq!(answer["reloaded"], true);
    let reloaded = agent.json(&["inspect", "198.18.0.10"]);
    assert_eq!(u64_of(&reloaded, "burst"), 50);
    assert_eq!(
        u64_of(&reloaded, "passed"),
        u64_of(&after_bad, "passed"),
        "counters lost"
    );
    assert!(
        u64_of(&reloaded, "remaining") < 50,
        "the bucket was reset by the reload: {reloaded}"
    );
    let sent_more = client.burst(to, 100);
    let more =
        u64_of(&agent.json(&["inspect", "198.18.0.10"]), "passed") - u64_of(&reloaded, "passed");
    assert!(
        more >= u64_of(&reloaded, "remaining") && more < sent_more,
        "{more} passed after the reload"
    );

    // SIGHUP does the same.
    agent.write_config(&config(1, 7));
    agent.hangup();
    let mut burst = 0;
    for _ in 0..50 {
        burst = u64_of(&agent.json(&["status"])["config"], "burst");
        if burst == 7 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(burst, 7, "SIGHUP did not reload:\n{}", agent.log());
    assert!(
        agent.log().contains("configuration reloaded"),
        "{}",
        agent.log()
    );
}

#[test]
fn reload_of_an_agent_on_the_embedded_default_says_there_is_no_file() {
    let net = TestNet::new(0, 1);
    let agent = Agent::start(&net, None);
    let out = agent.cli(&["reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("embedded default"), "{}", out.stderr);
}

#[test]
fn restart_replaces_the_program_and_keeps_the_state_and_detach_removes_it() {
    let net = TestNet::new(1, 1);
    let mut agent = Agent::start(&net, Some(&config(1, 5)));
    let client = net.client(0);
    let to = SocketAddr::new(net.gateway_ip(), 9);
    client.burst(to, 30);
    let before = agent.json(&["inspect", "198.18.0.10"]);
    let first_prog = xdp_prog_id(&net.gateway.name, agent.iface()).expect("attached");

    // Stopped, the program stays attached and enforcing.
    agent.stop();
    assert_eq!(
        xdp_prog_id(&net.gateway.name, agent.iface()),
        Some(first_prog)
    );
    client.burst(to, 30);

    // A restart loads the program anew and swaps it in through the pinned link.
    agent.spawn();
    let second_prog = xdp_prog_id(&net.gateway.name, agent.iface()).expect("attached");
    assert_ne!(second_prog, first_prog, "the program was not replaced");
    let after = agent.json(&["inspect", "198.18.0.10"]);
    assert_eq!(
        u64_of(&after, "passed") + u64_of(&after, "dropped"),
        u64_of(&before, "passed") + u64_of(&before, "dropped") + 30,
        "{before} → {after}"
    );
    assert!(
        u64_of(&after, "passed") <= u64_of(&before, "passed") + 2,
        "{after}"
    );

    // Detach, with no agent running: the program is gone and so is the pinned state.
    agent.stop();
    let pin_path = agent.pin_path.display().to_string();
    let out = limiter(&["detach", "--iface", agent.iface(), "--pin-path", &pin_path]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("removed the pinned maps"),
        "{}",
        out.stdout
    );
    assert_eq!(xdp_prog_id(&net.gateway.name, agent.iface()), None);
    assert!(!agent.pin_path.exists());
    // Twice: a clear error.
    let out = limiter(&["detach", "--iface", agent.iface(), "--pin-path", &pin_path]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not attached"), "{}", out.stderr);
}

#[test]
fn pinned_state_that_does_not_fit_is_refused_with_what_differs() {
    let net = TestNet::new(0, 1);
    let mut agent = Agent::start(&net, Some(&config(1, 5)));
    agent.stop();
    agent.write_config("[limits]\nrate = 1\nburst = 5\n\n[agent]\nmax_keys = 4096\n");
    agent.spawn_unchecked();
    assert_ne!(agent.wait_exit(), Some(0));
    let log = agent.log();
    assert!(
        log.contains("BUCKETS") && log.contains("max_entries 1024 (expected 4096"),
        "{log}"
    );
    assert!(log.contains("limiter detach"), "{log}");
    // What was attached is untouched.
    assert!(xdp_prog_id(&net.gateway.name, agent.iface()).is_some());
}

#[test]
fn a_user_without_access_to_the_socket_cannot_reset() {
    let net = TestNet::new(1, 1);
    let agent = Agent::start(&net, Some(&config(1, 5)));
    let client = net.client(0);
    client.burst(SocketAddr::new(net.gateway_ip(), 9), 20);
    let socket = agent.socket.display().to_string();
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(limiter_tests::limiter_bin())
        .args(["reset", "--all", "--api-socket", &socket])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert_eq!(
        agent.json(&["inspect", "198.18.0.10"])["remaining"],
        0,
        "the reset went through"
    );
}

#[test]
fn an_interface_with_a_dot_in_its_name_is_attached_and_detached() {
    // VLAN sub-interfaces are named like eth0.100; bpffs refuses names with a dot.
    let mut net = TestNet::new(1, 1);
    let dotted = format!("{}.7", net.gateway_if);
    for args in [
        vec!["link", "set", &net.gateway_if, "down"],
        vec!["link", "set", &net.gateway_if, "name", &dotted],
        vec!["link", "set", &dotted, "up"],
    ] {
        let mut all = vec!["-n", &net.gateway.name];
        all.extend(args);
        limiter_tests::netns::ip(&all);
    }
    net.gateway_if = dotted.clone();
    let mut agent = Agent::start(&net, Some(&config(1000, 2000)));
    let status = agent.json(&["status"]);
    assert_eq!(status["interfaces"][0]["name"], dotted.as_str(), "{status}");
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");
    net.client(0)
        .burst(SocketAddr::new(net.gateway_ip(), 9000), 5);
    eventually_tracked(&agent);
    agent.stop();
    let pin_path = agent.pin_path.display().to_string();
    let out = limiter(&["detach", "--iface", &dotted, "--pin-path", &pin_path]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(xdp_prog_id(&net.gateway.name, &dotted), None);
    assert!(!agent.pin_path.exists());
}

fn eventually_tracked(agent: &Agent) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while u64_of(&agent.json(&["status"]), "tracked_keys") == 0 {
        assert!(std::time::Instant::now() < deadline, "no key tracked");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
