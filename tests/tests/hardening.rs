//! The agent as an attacker and a tired operator would find it: one agent per pin directory,
//! files that are not its own left alone, what is saved always what is enforced, every change
//! logged with who made it, and no secret in the log.

use limiter_tests::agent::{limiter, Agent};
use limiter_tests::netns::TestNet;
use limiter_tests::traffic::{ipv4_udp_frame, RawSender};
use limiter_tests::u64_of;
use serde_json::Value;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

const CONFIG: &str = "[limits]\nrate = 1\nburst = 5\n";

/// Waits up to 5 s for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts the agent's log says `what`.
fn assert_logged(agent: &Agent, what: &str) {
    let log = agent.log();
    assert!(log.contains(what), "the log does not say {what:?}:\n{log}");
}

fn counter(agent: &Agent, name: &str) -> u64 {
    u64_of(&agent.json(&["status"]), name)
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused_naming_the_first() {
    let net = TestNet::new(0, 1);
    let agent = Agent::start(&net, Some(CONFIG));
    let other_socket = agent.dir.join("other.sock");
    let out = agent.run_other(&agent.pin_path, &other_socket);
    assert_ne!(out.code, 0, "a second agent started: {out:?}");
    let pid = agent.pid().unwrap();
    assert!(
        out.stderr.contains("another limiter agent") && out.stderr.contains(&format!("pid {pid}")),
        "{}",
        out.stderr
    );
    // The first one is untouched.
    assert_eq!(agent.json(&["status"])["interfaces"][0]["attached"], true);
}

#[test]
fn detach_under_a_running_agent_is_noticed_and_said() {
    let net = TestNet::new(0, 1);
    let agent = Agent::start(&net, Some(CONFIG));
    let out = limiter(&[
        "detach",
        "--iface",
        agent.iface(),
        "--pin-path",
        agent.pin_path.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    eventually("status shows the interface detached", || {
        agent.json(&["status"])["interfaces"][0]["attached"] == false
    });
    assert!(
        agent.cli(&["status"]).stdout.contains("DETACHED"),
        "the table does not say it"
    );
    assert_logged(&agent, "no longer attached");
}

#[test]
fn pins_and_files_that_are_not_limiters_are_left_alone() {
    let net = TestNet::new(0, 1);
    let mut agent = Agent::start(&net, Some(CONFIG));
    agent.stop();
    // Another tool's entry in the pin directory: a new agent refuses to share it, and detach
    // removes limiter's pins only.
    let foreign = agent.pin_path.join("other-tool");
    std::fs::create_dir(&foreign).unwrap();
    let out = agent.run_other(&agent.pin_path, &agent.dir.join("a.sock"));
    assert!(
        out.code != 0 && out.stderr.contains("other-tool"),
        "{out:?}"
    );
    let out = limiter(&[
        "detach",
        "--iface",
        agent.iface(),
        "--pin-path",
        agent.pin_path.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(foreign.exists(), "detach removed another tool's pin");
    assert!(
        !agent.pin_path.join("BUCKETS").exists(),
        "detach left limiter's maps pinned"
    );
    assert!(out.stdout.contains("other-tool"), "{}", out.stdout);

    // A pin path that is a directory with files in it, not a bpffs: never mounted over.
    let plain = agent.dir.join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(plain.join("precious"), "state").unwrap();
    let out = agent.run_other(&plain, &agent.dir.join("b.sock"));
    assert!(
        out.code != 0 && out.stderr.contains("not on a BPF filesystem"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_to_string(plain.join("precious")).unwrap(),
        "state"
    );

    // Something at the socket path that is not a socket: refused before any interface is
    // touched, and untouched, even behind a symlink.
    std::fs::remove_dir(&foreign).unwrap();
    let file = agent.dir.join("not-a-socket");
    std::fs::write(&file, "keep").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = agent.dir.join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    for path in [&file, &link] {
        let out = agent.run_other(&agent.pin_path, path);
        assert!(
            out.code != 0 && out.stderr.contains("is not a socket"),
            "{out:?}"
        );
        assert!(
            !agent.pin_path.join("BUCKETS").exists(),
            "the refused agent pinned its maps first"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the file behind the symlink was chmod-ed");
}

#[test]
fn what_is_saved_is_what_is_enforced() {
    let net = TestNet::new(1, 1);
    let mut agent = Agent::start(&net, Some(CONFIG));
    let client = net.client(0);
    let target = SocketAddr::new(net.gateway_ip(), 9);
    let state = agent.state_dir().join("overrides.json");

    // A save that fails (the temporary file's name is taken by a directory): the override is
    // refused, and neither enforced nor listed.
    let blocker = agent.state_dir().join("overrides.json.tmp");
    std::fs::create_dir_all(&blocker).unwrap();
    let out = agent.cli(&["deny", "198.18.0.10"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(agent.json(&["overrides"]).as_array().map(Vec::len), Some(0));
    let denied = counter(&agent, "denied_by_rule");
    client.burst(target, 5);
    eventually("the refused deny is not enforced", || {
        counter(&agent, "passed") + counter(&agent, "dropped") >= 5
    });
    assert_eq!(counter(&agent, "denied_by_rule"), denied);

    // A deny with a TTL lapses on time even when the file cannot be written then.
    std::fs::remove_dir(&blocker).unwrap();
    agent.json(&["deny", "198.18.0.10", "--ttl", "2s"]);
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the overrides file is readable by others");
    std::fs::create_dir_all(&blocker).unwrap();
    eventually("the deny lapses although the file cannot be saved", || {
        agent.json(&["overrides"]).as_array().map(Vec::len) == Some(0)
    });
    let denied = counter(&agent, "denied_by_rule");
    client.burst(target, 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        counter(&agent, "denied_by_rule"),
        denied,
        "the lapsed deny is still enforced"
    );
    std::fs::remove_dir(&blocker).unwrap();
    eventually("the file catches up", || {
        std::fs::read_to_string(&state).is_ok_and(|text| !text.contains("198.18.0.10"))
    });

    // A hand-edited state file the datapath could not enforce as written: refused at start,
    // naming the file, not enforced as something else.
    agent.stop();
    std::fs::write(
        &state,
        r#"[{"cidr": "198.18.0.0/24", "action": "limit", "rate": 10, "burst": 0, "created_at_ms": 1}]"#,
    )
    .unwrap();
    agent.spawn_unchecked();
    let code = agent.wait_exit();
    assert_ne!(code, Some(0));
    assert!(
        agent
            .log()
            .contains("overrides.json is not a valid overrides file")
            && agent.log().contains("198.18.0.0/24"),
        "{}",
        agent.log()
    );
}

#[test]
fn the_overrides_tries_are_full_at_their_capacity_and_a_refusal_changes_nothing() {
    let net = TestNet::new(0, 1);
    let mut agent = Agent::start(&net, Some(CONFIG));
    agent.stop();
    // 16 384 IPv4 overrides: what the trie holds.
    let items: Vec<Value> = (0..16_384u32)
        .map(|i| {
            serde_json::json!({
                "cidr": format!("198.19.{}.{}/32", i / 256, i % 256),
                "action": "deny",
                "created_at_ms": 1,
            })
        })
        .collect();
    let state = agent.state_dir().join("overrides.json");
    std::fs::create_dir_all(agent.state_dir()).unwrap();
    std::fs::write(&state, serde_json::to_vec(&items).unwrap()).unwrap();
    agent.spawn();
    let before = std::fs::read(&state).unwrap();
    let out = agent.cli(&["deny", "198.18.0.10"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("at most 16384"), "{}", out.stderr);
    assert_eq!(std::fs::read(&state).unwrap(), before, "the file changed");
    assert_eq!(
        agent.json(&["overrides"]).as_array().map(Vec::len),
        Some(16_384)
    );
    // Replacing one in place still works: it is not one more.
    agent.json(&["allow", "198.19.0.1"]);
}

#[test]
fn changes_are_logged_with_who_made_them_and_secrets_are_not() {
    let net = TestNet::new(0, 1);
    let config =
        format!("{CONFIG}\n[alerts]\nwebhook = \"http://127.0.0.1:9/hook/s3cr3t?token=t0k3n\"\n");
    let agent = Agent::start(&net, Some(&config));
    agent.json(&["deny", "198.18.0.99", "--ttl", "1h"]);
    agent.json(&["reset", "--all"]);
    agent.json(&["overrides", "rm", "198.18.0.99"]);
    let log = agent.log();
    for what in ["override added", "reset keys", "override removed"] {
        let line = log
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} in the log:\n{log}"));
        assert!(
            line.contains("uid=0") && line.contains("pid="),
            "{what} is logged without its caller: {line}"
        );
    }
    assert!(
        !log.contains("s3cr3t") && !log.contains("t0k3n"),
        "the webhook URL's secret is in the log:\n{log}"
    );
    assert!(log.contains("http://127.0.0.1:9/…"), "{log}");
}

#[test]
fn absurd_values_are_refused_not_wrapped() {
    let net = TestNet::new(0, 1);
    let agent = Agent::start(&net, Some(CONFIG));
    let out = agent.cli(&["deny", "198.18.0.0/24", "--ttl", "1000000years"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--ttl takes at most"), "{}", out.stderr);
    let out = agent.cli(&[
        "limit",
        "198.18.0.0/24",
        "--rate",
        "2000000000",
        "--burst",
        "5",
    ]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("at most 1000000000/s"),
        "{}",
        out.stderr
    );
    assert_eq!(agent.json(&["overrides"]).as_array().map(Vec::len), Some(0));
    agent.write_config("[limits]\nrate = 2000000000\nburst = 5\n");
    let out = agent.cli(&["reload"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("at most 1000000000/s"),
        "{}",
        out.stderr
    );
}

/// Reads from `stream` until the peer closes it (0 bytes); false if it is still open after
/// `within`.
fn closed_by_peer(stream: &mut impl std::io::Read, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_or_stuck_clients_do_not_stall_the_agent_and_the_cli_gives_up() {
    use std::io::{Read, Write};
    let net = TestNet::new(0, 1);
    let mut agent = Agent::start_with_args(&net, Some(CONFIG), &["--metrics", "127.0.0.1:19850"]);

    // Clients that connect and never finish a request: more than the metrics listener serves
    // at once, and one on the API socket. The agent answers others meanwhile, and closes them.
    let idle: Vec<std::net::TcpStream> = net.gateway.run(|| {
        (0..24)
            .map(|_| {
                let stream = std::net::TcpStream::connect("127.0.0.1:19850").unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                stream
            })
            .collect()
    });
    let mut api = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    api.write_all(b"GET /v1/status HTTP/1.1\r\nHost: limiter\r\n")
        .unwrap();
    api.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert_eq!(agent.cli(&["status"]).code, 0, "the API is stalled");
    assert!(
        closed_by_peer(&mut api, Duration::from_secs(10)),
        "an unfinished API request is kept open"
    );
    for mut stream in idle {
        assert!(
            closed_by_peer(&mut stream, Duration::from_secs(10)),
            "an idle metrics connection is kept open"
        );
    }
    let scrape = net.gateway.run(|| {
        let mut stream = std::net::TcpStream::connect("127.0.0.1:19850").unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body
    });
    assert!(scrape.contains("limiter_packets_total"), "{scrape}");

    // An agent that does not answer at all (stopped): the CLI gives up, exit 3.
    agent.pause();
    let started = Instant::now();
    let out = agent.cli(&["status"]);
    agent.resume();
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("did not answer within"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    agent.stop();
}

#[test]
fn alerts_for_an_overrides_bucket_name_the_override() {
    let net = TestNet::new(1, 1);
    let agent = Agent::start(&net, Some(CONFIG));
    agent.json(&["limit", "198.18.0.10", "--rate", "1", "--burst", "2"]);
    net.client(0)
        .burst(SocketAddr::new(net.gateway_ip(), 9), 10);
    eventually("the exhaustion is logged", || {
        agent.log().contains("key exhausted")
    });
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("key exhausted")).unwrap();
    assert!(
        line.contains("override 198.18.0.10/32") && !line.contains("removed rule"),
        "{line}"
    );
}

#[test]
fn pins_of_a_build_with_another_map_layout_are_named_as_such() {
    use aya::maps::{Array, Map, MapData};
    use limiter_common::maps::{DatapathConfig, CONFIG_MAP};
    let net = TestNet::new(0, 1);
    let mut agent = Agent::start(&net, Some(CONFIG));
    agent.stop();
    // What a build with another layout would have left: its version in the pinned CONFIG.
    let data = MapData::from_pin(agent.pin_path.join(CONFIG_MAP)).unwrap();
    let mut config: Array<MapData, DatapathConfig> = Array::try_from(Map::Array(data)).unwrap();
    let mut value = config.get(&0, 0).unwrap();
    value.valid = 7;
    config.set(0, value, 0).unwrap();
    agent.spawn_unchecked();
    assert_ne!(agent.wait_exit(), Some(0));
    assert_logged(&agent, "another map layout (version 7");
}

#[test]
fn raising_a_limit_frees_an_exhausted_key_at_once() {
    let net = TestNet::new(2, 1);
    let agent = Agent::start(&net, Some("[limits]\nrate = 1\nburst = 100\n"));
    let target = SocketAddr::new(net.gateway_ip(), 9);
    let passed = |source: &str| agent.json(&["inspect", source])["passed"].as_u64().unwrap();
    // Exhausted under 1/s with a burst of 100: its TAT is 100 s ahead.
    agent.json(&["limit", "198.18.0.10", "--rate", "1", "--burst", "100"]);
    net.client(0).burst(target, 150);
    net.client(1).burst(target, 150);
    eventually("both keys exhausted", || {
        ["198.18.0.10", "198.18.0.11"]
            .iter()
            .all(|s| agent.json(&["inspect", s])["exhausted"] == true)
    });

    // Raised by an override, and by a reload of [limits]: both pass again within moments,
    // not in 99 s.
    agent.json(&[
        "limit",
        "198.18.0.10",
        "--rate",
        "100000",
        "--burst",
        "100000",
    ]);
    agent.write_config("[limits]\nrate = 100000\nburst = 100000\n");
    assert_eq!(agent.cli(&["reload"]).code, 0);
    std::thread::sleep(Duration::from_millis(100));
    for (i, source) in ["198.18.0.10", "198.18.0.11"].iter().enumerate() {
        let before = passed(source);
        net.client(i).burst(target, 50);
        eventually("the burst is counted", || passed(source) >= before + 50);
        let key = agent.json(&["inspect", source]);
        assert!(
            key["retry_after_ms"].as_u64() == Some(0),
            "{source} still waits: {key}"
        );
    }
}

#[test]
fn the_rate_shown_is_the_rate_configured() {
    let net = TestNet::new(2, 1);
    let agent = Agent::start(
        &net,
        Some(
            "[limits]\nrate = 7\nburst = 9\n\n[[rules]]\nname = \"three\"\n\
             cidr = \"198.18.0.11/32\"\naction = \"limit\"\nrate = 3\nburst = 4\n",
        ),
    );
    let target = SocketAddr::new(net.gateway_ip(), 9);
    net.client(0).burst(target, 2);
    net.client(1).burst(target, 2);
    for (source, rate, burst) in [("198.18.0.10", 7, 9), ("198.18.0.11", 3, 4)] {
        let mut key = Value::Null;
        eventually("the key is tracked", || {
            let out = agent.cli(&["inspect", source, "--json"]);
            key = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            out.code == 0
        });
        assert_eq!(
            (key["rate"].as_u64(), key["burst"].as_u64()),
            (Some(rate), Some(burst)),
            "{key}"
        );
    }
    let list = agent.json(&["list"]);
    let rates: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["rate"].as_u64().unwrap())
        .collect();
    assert_eq!(rates, [7, 3], "{list}");
    agent.json(&["limit", "198.18.0.10", "--rate", "7", "--burst", "2"]);
    net.client(0).burst(target, 1);
    eventually("the override's key is tracked", || {
        agent.json(&["list"]).as_array().is_some_and(|keys| {
            keys.iter()
                .any(|k| k["rule"] == "override 198.18.0.10/32" && k["rate"] == 7)
        })
    });
}

#[test]
fn a_spoofed_flood_neither_passes_nor_evicts_by_default() {
    // No new_keys_per_sec: the default bound (max_keys / 100 per second, max_keys / 10 at once:
    // 10/s and 102 at once for this table of 1024 keys).
    let net = TestNet::new(0, 1);
    let agent = Agent::start(
        &net,
        Some("[limits]\nrate = 100000\nburst = 100000\n\n[agent]\nmax_keys = 1024\n"),
    );
    let sender = RawSender::new(&net.clients, &net.client_if);
    let gateway = Ipv4Addr::new(198, 18, 0, 1);
    let established = Ipv4Addr::new(198, 18, 0, 10);
    for _ in 0..5 {
        assert!(sender.send(&ipv4_udp_frame(established, gateway, 9000)));
    }
    eventually("the established client is tracked", || {
        agent.cli(&["inspect", "198.18.0.10"]).code == 0
    });
    // Three times the table in new (spoofed) sources, as fast as they go.
    let sent = (0..3072u32)
        .filter(|n| {
            let source = Ipv4Addr::new(198, 19, (n >> 8) as u8, *n as u8);
            sender.send(&ipv4_udp_frame(source, gateway, 9000))
        })
        .count();
    assert_eq!(sent, 3072);
    eventually("the flood is counted", || {
        counter(&agent, "keys_created") + counter(&agent, "new_keys_refused") >= 3072
    });
    let status = agent.json(&["status"]);
    assert!(u64_of(&status, "new_keys_refused") > 0, "{status}");
    assert_eq!(u64_of(&status, "evicted_keys"), 0, "{status}");
    let key = agent.json(&["inspect", "198.18.0.10"]);
    assert_eq!(
        u64_of(&key, "passed"),
        5,
        "the established client lost its key: {key}"
    );
    assert!(
        agent
            .cli(&["status"])
            .stdout
            .contains("may lose its first packets"),
        "status does not say what the bound costs"
    );
}

#[test]
fn link_local_neighbours_do_not_share_a_bucket() {
    use limiter_tests::frame::{ethernet, ipv6, udp, ETH_P_IPV6, IPPROTO_UDP};
    // ipv6_prefix = 64: every fe80:: source of the link would fall into one key.
    let net = TestNet::new(0, 1);
    let agent = Agent::start(
        &net,
        Some("[limits]\nrate = 1\nburst = 3\nipv6_prefix = 64\n"),
    );
    let sender = RawSender::new(&net.clients, &net.client_if);
    let neighbour = |last: u8| {
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfe, 0x80]);
        a[15] = last;
        a
    };
    let mut gateway = neighbour(1);
    gateway[14] = 0xff;
    // A flooder and a quiet neighbour, both on the link.
    for (source, frames) in [(neighbour(0x0a), 20), (neighbour(0x0b), 2)] {
        let packet = ipv6(source, gateway, IPPROTO_UDP, 64, &udp(547, 546, b"dhcpv6"));
        let frame = ethernet([0xff; 6], [2, 0, 0, 0, 0, 1], ETH_P_IPV6, &packet);
        for _ in 0..frames {
            assert!(sender.send(&frame));
        }
    }
    eventually("both neighbours are tracked", || {
        agent.cli(&["inspect", "fe80::b"]).code == 0 && agent.cli(&["inspect", "fe80::a"]).code == 0
    });
    let flooder = agent.json(&["inspect", "fe80::a"]);
    let quiet = agent.json(&["inspect", "fe80::b"]);
    assert_eq!(flooder["key"], "fe80::a/128", "{flooder}");
    assert_eq!(quiet["key"], "fe80::b/128", "{quiet}");
    assert_eq!(
        (u64_of(&quiet, "passed"), u64_of(&quiet, "dropped")),
        (2, 0),
        "the quiet neighbour paid for the flooder: {quiet}"
    );
}

#[test]
fn a_client_that_stops_reading_the_key_list_is_let_go_and_wide_keys_stay_bounded() {
    use std::io::Write;
    let net = TestNet::new(0, 1);
    let agent = Agent::start(
        &net,
        Some(
            "[limits]\nrate = 100000\nburst = 100000\n\n[agent]\nmax_keys = 16384\n\
             new_keys_per_sec = \"off\"\n",
        ),
    );
    // 12 000 keys: a list of a few megabytes, more than the socket and the agent's queue hold.
    let sender = RawSender::new(&net.clients, &net.client_if);
    let gateway = Ipv4Addr::new(198, 18, 0, 1);
    for n in 0..12_000u32 {
        let source = Ipv4Addr::new(198, 19, (n >> 8) as u8, n as u8);
        assert!(sender.send(&ipv4_udp_frame(source, gateway, 9000)));
    }
    eventually("the keys are tracked", || {
        counter(&agent, "tracked_keys") >= 12_000
    });
    let mut stalled = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    stalled
        .write_all(b"GET /v1/keys HTTP/1.1\r\nHost: limiter\r\n\r\n")
        .unwrap();
    // It reads nothing; the API answers others meanwhile, and after 5 s the list is dropped.
    assert_eq!(agent.cli(&["status"]).code, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !agent.log().contains("stopped reading the key list") {
        assert!(Instant::now() < deadline, "still sending:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(stalled);

    // A KEY that covers every key: refused with a count, not built into memory.
    let out = agent.cli(&["inspect", "0.0.0.0/0"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("selects 12000 tracked keys"),
        "{}",
        out.stderr
    );
}
