//! API keys end to end: the real agent on the gateway's veth, a real nginx behind it, real TCP
//! clients (and curl) in the clients' namespace. Over its limit a key gets a complete 429 from
//! the kernel; nginx never sees those requests and keeps no connection of them.

use limiter_tests::agent::Agent;
use limiter_tests::gateway::{
    gateway_connections, get_once, ClientPass, Connection, Nginx, GATEWAY_PORT,
};
use limiter_tests::netns::TestNet;
use limiter_tests::u64_of;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// Source limits far above anything here; keys at 2/s burst 5 by default, plan "pro" 1/s
/// burst 10.
const CONFIG: &str = r#"
[limits]
rate = 100000
burst = 100000

[http]
ports = [8080]
key_headers = ["x-api-key", "authorization"]
rate = 2
burst = 5

[[plans]]
name = "pro"
rate = 1
burst = 10
"#;

const ACME_TOKEN: &str = "tok-acme-3f9a1c";
const OTHER_TOKEN: &str = "tok-other-77e0";

struct Bed {
    nginx: Nginx,
    agent: Agent,
    _pass: ClientPass,
    net: TestNet,
}

fn bed(clients: u8) -> Bed {
    let net = TestNet::new(clients, 1);
    let pass = ClientPass::attach(&net);
    let nginx = Nginx::start(&net);
    let agent = Agent::start(&net, Some(CONFIG));
    Bed {
        nginx,
        agent,
        _pass: pass,
        net,
    }
}

impl Bed {
    fn client(&self, i: usize) -> IpAddr {
        IpAddr::V4(self.net.client_addrs[i])
    }

    /// `limiter keys add NAME [--plan P]` with the token on standard input.
    fn add_key(&self, name: &str, plan: Option<&str>, token: &str) -> (i32, String, String) {
        self.agent.add_key(name, plan, token)
    }

    /// Requests on connections of their own until `count` were sent; the statuses.
    fn burst_of(&self, from: usize, header: &str, count: usize) -> Vec<u16> {
        (0..count)
            .map(|_| get_once(&self.net, self.client(from), Some(header)).status)
            .collect()
    }
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[test]
fn a_key_over_its_plan_gets_a_429_from_the_kernel_and_nginx_never_sees_it() {
    let bed = bed(2);
    let (code, out, err) = bed.add_key("acme", Some("pro"), ACME_TOKEN);
    assert_eq!(code, 0, "keys add: {err}");
    assert!(
        out.contains("key:acme") && out.contains("plan pro"),
        "{out}"
    );

    // Plan pro: 10 at once, then 1/s.
    let header = format!("X-API-Key: {ACME_TOKEN}");
    let started = Instant::now();
    let statuses = bed.burst_of(0, &header, 30);
    let elapsed = started.elapsed().as_secs_f64();
    let passed = count(&statuses, 200);
    let rejected = count(&statuses, 429);
    assert_eq!(passed + rejected, 30, "only 200s and 429s: {statuses:?}");
    assert!(
        (10..=10 + elapsed.ceil() as usize + 1).contains(&passed),
        "{passed} passed in {elapsed:.2} s at burst 10, 1/s: {statuses:?}"
    );
    assert_eq!(&statuses[..10], &[200; 10], "the burst passes first");

    // The 429 as a client reads it.
    let answer = get_once(&bed.net, bed.client(0), Some(&header));
    assert_eq!(answer.status, 429);
    let retry: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.header("ratelimit-policy"), Some("\"pro\";q=10;w=10"));
    let body = answer.json();
    assert_eq!(body["retry_after_s"].as_u64(), Some(retry));
    assert!(body["error"].is_string(), "{body}");

    // With curl too.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.net.clients.name,
            "curl",
            "-sS",
            "-i",
            "-H",
            &header,
        ])
        .arg(format!("http://198.18.0.1:{GATEWAY_PORT}/ok.json"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("HTTP/1.1 429 Too Many Requests"), "{text}");
    assert!(text.contains("\"retry_after_s\":"), "{text}");

    // A key never registered: the [http] default, 5 at once, through Authorization: Bearer.
    let bearer = format!("Authorization: Bearer {OTHER_TOKEN}");
    let other = bed.burst_of(1, &bearer, 5);
    assert_eq!(other, vec![200; 5], "another key is untouched");
    // A request without a key: the source limits alone.
    assert_eq!(get_once(&bed.net, bed.client(0), None).status, 200);

    // nginx saw exactly the requests that got 200 (it writes a request's log line after its
    // response: give the last one a moment).
    let expected = passed + 5 + 1;
    let logged = bed.nginx.logged_statuses_once(expected);
    assert!(logged.iter().all(|s| *s == 200), "nginx logged {logged:?}");
    assert_eq!(logged.len(), expected, "nginx's access log");

    // What the operator sees: names and fingerprints, never a token.
    let keys = bed.agent.json(&["keys"]);
    let keys = keys.as_array().expect("a list");
    let acme = keys
        .iter()
        .find(|k| k["name"] == "acme")
        .unwrap_or_else(|| panic!("acme in {keys:?}"));
    assert_eq!(acme["kind"], "api_key");
    assert_eq!(acme["key"], "key:acme");
    assert_eq!(acme["plan"], "pro");
    assert_eq!(u64_of(acme, "passed"), passed as u64);
    assert_eq!(u64_of(acme, "dropped"), rejected as u64 + 2);
    let unnamed = keys
        .iter()
        .find(|k| k["name"].is_null())
        .unwrap_or_else(|| panic!("the unregistered key in {keys:?}"));
    let fingerprint = unnamed["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 16);
    assert_eq!(unnamed["key"], format!("key:{fingerprint}"));
    assert!(unnamed["plan"].is_null());
    let table = bed.agent.cli(&["keys"]);
    assert!(
        table.stdout.contains("key:acme") && table.stdout.contains("REJECTED"),
        "{}",
        table.stdout
    );
    let inspect = bed
        .agent
        .json(&["inspect", &format!("key:{}", &fingerprint[..8])]);
    assert_eq!(inspect["fingerprint"], fingerprint.as_str());
    let inspect = bed.agent.json(&["inspect", "key:acme"]);
    assert!(inspect["exhausted"].as_bool().unwrap(), "{inspect}");
    let list = bed.agent.json(&["list"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|k| k["kind"] == "source"),
        "list shows both kinds: {list}"
    );

    // A reset gives acme exactly its burst back.
    let reset = bed.agent.json(&["reset", "key:acme"]);
    assert_eq!(u64_of(&reset, "reset"), 1);
    let started = Instant::now();
    let after = bed.burst_of(0, &header, 12);
    let late = started.elapsed().as_secs_f64().ceil() as usize;
    assert_eq!(&after[..10], &[200; 10], "{after:?}");
    assert!(count(&after, 200) <= 10 + late, "{after:?}");

    // Its exhaustion reached the agent (log and alerts name it the same way), by name.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bed.agent.log().lines().any(|l| {
        l.contains("key exhausted") && l.contains("key=key:acme") && l.contains("rule=pro")
    }) {
        assert!(
            Instant::now() < deadline,
            "no exhaustion of key:acme in the log: {}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // No token anywhere: CLI output, the agent's log, its state files.
    let mut seen = bed.agent.log();
    seen.push_str(&table.stdout);
    seen.push_str(&serde_json::to_string(&keys).unwrap());
    for entry in std::fs::read_dir(bed.agent.state_dir()).unwrap() {
        seen.push_str(&String::from_utf8_lossy(
            &std::fs::read(entry.unwrap().path()).unwrap(),
        ));
    }
    for token in [ACME_TOKEN, OTHER_TOKEN] {
        assert!(!seen.contains(token), "the token {token} appears");
    }
}

#[test]
fn keep_alive_several_sources_and_no_leftover_connections() {
    let bed = bed(3);

    // One keep-alive connection crossing the limit: 5 answers from nginx, then the 429, then
    // a clean close.
    let mut conn = Connection::open(&bed.net, bed.client(0));
    let header = "X-API-Key: tok-keepalive";
    let statuses: Vec<u16> = (0..6).map(|_| conn.get(Some(header)).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    assert!(conn.closed_by_server(), "the 429 closes the connection");

    // One key from three sources and connections at once: held to burst + rate·t (+1).
    let started = Instant::now();
    let sources: Vec<IpAddr> = (0..3).map(|i| bed.client(i)).collect();
    let header = "X-API-Key: tok-shared";
    let results: Vec<Vec<u16>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|from| {
                let net = &bed.net;
                scope.spawn(move || {
                    let mut statuses = Vec::new();
                    let until = Instant::now() + Duration::from_millis(1500);
                    while Instant::now() < until {
                        statuses.push(get_once(net, *from, Some(header)).status);
                    }
                    statuses
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let all: Vec<u16> = results.concat();
    let passed = count(&all, 200);
    assert_eq!(passed + count(&all, 429), all.len(), "only 200s and 429s");
    assert!(
        (5..=5 + (2.0 * elapsed).ceil() as usize + 1).contains(&passed),
        "{passed} of {} passed in {elapsed:.2} s at burst 5, 2/s",
        all.len()
    );
    assert!(all.len() > 50, "the clients sent {} requests", all.len());

    // A thousand rejections leave nothing behind on the gateway.
    let header = "X-API-Key: tok-flood";
    let _ = bed.burst_of(1, header, 5);
    let mut rejected = 0;
    for _ in 0..1000 {
        if get_once(&bed.net, bed.client(1), Some(header)).status == 429 {
            rejected += 1;
        }
    }
    assert!(rejected >= 990, "{rejected} of 1000 rejected");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = gateway_connections(&bed.net);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} sockets left on the gateway after 1000 rejections:\n{}",
            left.len(),
            left.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = bed.agent.json(&["status"]);
    assert!(u64_of(&status, "rejected") > rejected as u64, "{status}");
    assert!(
        u64_of(&status, "gateway_resets") >= rejected as u64,
        "{status}"
    );
}

#[test]
fn over_ipv6_too() {
    let bed = bed(1);
    let client: IpAddr = "2001:2::10".parse().unwrap();
    bed.net.add_client_addr(client);
    let header = "X-API-Key: tok-v6";
    let statuses: Vec<u16> = (0..7)
        .map(|_| get_once(&bed.net, client, Some(header)).status)
        .collect();
    assert_eq!(&statuses[..5], &[200; 5], "{statuses:?}");
    assert_eq!(statuses[6], 429, "{statuses:?}");
    let answer = get_once(&bed.net, client, Some(header));
    assert_eq!(answer.status, 429);
    assert!(answer.json()["retry_after_s"].as_u64().is_some());
    let keys = bed.agent.json(&["keys"]);
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert!(u64_of(&keys[0], "dropped") >= 2, "{keys}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gateway_connections(&bed.net).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            gateway_connections(&bed.net)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_input_to_keys_changes_nothing() {
    let bed = bed(1);
    assert_eq!(bed.add_key("acme", None, "tok-a").0, 0);
    let cases = [
        ("unknown plan", "b", Some("gold"), "tok-b", "no plan 'gold'"),
        (
            "duplicate name",
            "acme",
            None,
            "tok-c",
            "registered already",
        ),
        (
            "duplicate token",
            "other",
            None,
            "tok-a",
            "registered already, as 'acme'",
        ),
        ("empty token", "empty", None, "", "no token"),
        ("token with spaces", "spaced", None, "a b", "whitespace"),
        ("bad name", "no such/name", None, "tok-d", "letters, digits"),
    ];
    for (what, name, plan, token, says) in cases {
        let (code, _, err) = bed.add_key(name, plan, token);
        assert_eq!(code, 2, "{what}: {err}");
        assert!(err.contains(says), "{what}: {err}");
    }
    // A token on the command line is refused and not echoed.
    let out = bed.agent.cli(&["keys", "add", "argv", "tok-secret-argv"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("standard input"), "{}", out.stderr);
    assert!(!out.stderr.contains("tok-secret-argv"), "{}", out.stderr);
    // Removing what is not there.
    let out = bed.agent.cli(&["keys", "rm", "nobody"]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    // Only acme is registered, and it still works as registered.
    let file = std::fs::read_to_string(bed.agent.state_dir().join("api-keys.json")).unwrap();
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&file).unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["acme"]);
    assert_eq!(
        get_once(&bed.net, bed.client(0), Some("X-API-Key: tok-a")).status,
        200
    );
    let inspect = bed.agent.json(&["inspect", "key:acme"]);
    assert_eq!(u64_of(&inspect, "passed"), 1);
    // TLS on a cleartext port: passed untouched, counted, and the agent says so once.
    let mut tls = Connection::open(&bed.net, bed.client(0));
    tls.send_raw(b"\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !bed.agent.log().contains("TLS handshakes arrive") {
        assert!(
            Instant::now() < deadline,
            "no log line on TLS: {}",
            bed.agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(u64_of(&bed.agent.json(&["status"]), "tls_handshakes"), 1);

    // Forgotten: its requests fall back to the default, under its fingerprint.
    assert_eq!(bed.agent.cli(&["keys", "rm", "acme"]).code, 0);
    let out = bed.agent.cli(&["inspect", "key:acme"]);
    assert_eq!(out.code, 4, "{}", out.stderr);
}

#[test]
fn with_keep_alive_a_429_leaves_the_connection_open() {
    let net = TestNet::new(1, 1);
    let _pass = ClientPass::attach(&net);
    let nginx = Nginx::start(&net);
    let agent = Agent::start(
        &net,
        Some(&CONFIG.replace("burst = 5\n", "burst = 5\nkeep_alive = true\n")),
    );
    let from = IpAddr::V4(net.client_addrs[0]);
    let mut conn = Connection::open(&net, from);
    let header = "X-API-Key: tok-stays";
    let first: Vec<u16> = (0..7).map(|_| conn.get(Some(header)).status).collect();
    assert_eq!(first, [200, 200, 200, 200, 200, 429, 429]);
    let answer = conn.get(Some(header));
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("connection"), Some("keep-alive"));
    // The key refills at 2/s; the same connection goes on, and nginx answers again.
    std::thread::sleep(Duration::from_millis(1100));
    let later: Vec<u16> = (0..2).map(|_| conn.get(Some(header)).status).collect();
    assert_eq!(later, [200, 200], "the connection works after its 429s");
    // Another key on the same connection, and a request without a key.
    assert_eq!(conn.get(Some("X-API-Key: tok-else")).status, 200);
    assert_eq!(conn.get(None).status, 200);
    let logged = nginx.logged_statuses_once(9);
    assert_eq!(logged, vec![200; 9], "nginx saw the 200s only");
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gateway_connections(&net).is_empty() {
        assert!(Instant::now() < deadline, "{:?}", gateway_connections(&net));
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = agent.json(&["status"]);
    assert_eq!(u64_of(&status, "rejected"), 3, "{status}");
    assert_eq!(u64_of(&status, "gateway_resets"), 0, "{status}");
}
