//! Fleet mode: three agents, each on a gateway of its own (three namespaces, three nginx),
//! sharing one real Redis through its Unix socket. A key with a quota sending through all three
//! passes the quota in total (within the stated bound), not three times it.

use limiter_tests::agent::Agent;
use limiter_tests::gateway::{get_once, ClientPass, Nginx};
use limiter_tests::netns::TestNet;
use limiter_tests::redis::RedisServer;
use limiter_tests::webhook::{alerts, WebhookReceiver};
use std::net::IpAddr;
use std::time::Duration;

const TOKEN: &str = "tok-fleet-3b8e11";
const QUOTA: usize = 30;

fn config(redis: &str, host: &str, secret: &std::path::Path) -> String {
    format!(
        r#"
[limits]
rate = 100000
burst = 100000

[http]
ports = [8080]
rate = 1000
burst = 1000
secret_file = "{}"

[[plans]]
name = "metered"
rate = 1000
burst = 1000
quota = {QUOTA}
period = "minute"

[fleet]
redis = "{redis}"
host = "{host}"
sync_ms = 50
"#,
        secret.display()
    )
}

struct Host {
    agent: Agent,
    _nginx: Nginx,
    _pass: ClientPass,
    net: TestNet,
}

impl Host {
    fn status(&self) -> u16 {
        let client = IpAddr::V4(self.net.client_addrs[0]);
        get_once(&self.net, client, Some(&format!("X-API-Key: {TOKEN}"))).status
    }
}

#[test]
fn a_quota_holds_across_three_hosts() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let hosts = three_hosts(&redis, &secret, |_, c| c);
    limiter_tests::within_one_minute(Duration::from_secs(25));
    let mut passed = 0;
    for round in 0..(2 * QUOTA) {
        let host = &hosts[round % 3];
        if host.status() == 200 {
            passed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs: Vec<String> = hosts.iter().map(|h| h.agent.log()).collect();
    assert!(
        (QUOTA..=QUOTA + 2).contains(&passed),
        "{passed} passed across the fleet, the quota is {QUOTA} (+ at most hosts − 1)\n{}",
        logs.join("\n----\n")
    );
    assert!(
        logs.iter().all(|l| l.contains("fleet: connected")),
        "{logs:?}"
    );
    let counts = redis.cli(&["--scan", "--pattern", "limiter:*:q:*"]);
    assert!(!counts.trim().is_empty(), "the fleet's count is in Redis");
    // What the operator sees.
    let fleet = hosts[0].agent.json(&["fleet"]);
    assert_eq!(fleet["connected"], true, "{fleet}");
    assert_eq!(fleet["host"], "gw-1", "{fleet}");
    let names: Vec<&str> = fleet["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gw-1", "gw-2", "gw-3"], "{fleet}");
    // What each host consumed: together, what passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let fleet = hosts[1].agent.json(&["fleet"]);
        let requests: u64 = fleet["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["requests"].as_u64().unwrap())
            .sum();
        if requests == passed as u64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{requests} ≠ {passed}: {fleet}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hosts[0].agent.cli(&["fleet"]).stdout.contains("REQUESTS"));
    let status = hosts[2].agent.json(&["status"]);
    assert_eq!(status["fleet"]["connected"], true, "{status}");
    assert!(hosts[2].agent.cli(&["status"]).stdout.contains("in sync"));
}

/// Three agents on one Redis, each with a host of its own (`gw-1` … `gw-3`); every key of plan
/// "metered". `edit` changes a host's configuration (it gets the host's namespaces).
fn three_hosts(
    redis: &RedisServer,
    secret: &std::path::Path,
    mut edit: impl FnMut(&TestNet, String) -> String,
) -> Vec<Host> {
    (1..=3)
        .map(|i| {
            let net = TestNet::new(1, 1);
            let _pass = ClientPass::attach(&net);
            let _nginx = Nginx::start(&net);
            let text = edit(&net, config(&redis.url(), &format!("gw-{i}"), secret));
            let agent = Agent::start(&net, Some(&text));
            let (code, _, err) = agent.add_key("acme", Some("metered"), TOKEN);
            assert_eq!(code, 0, "keys add: {err}");
            Host {
                agent,
                _nginx,
                _pass,
                net,
            }
        })
        .collect()
}

/// A key's rate is the fleet's: three hosts sending it at once, each as fast as it can, pass
/// about what one host alone would (its burst and its rate), within the stated bound — not
/// three times that.
#[test]
fn a_keys_rate_holds_across_three_hosts() {
    const RATE: usize = 10;
    const SECS: usize = 4;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let hosts = three_hosts(&redis, &secret, |_, c| {
        c.replace(
            "rate = 1000\nburst = 1000\nquota = 30",
            "rate = 10\nburst = 10\nquota = 100000",
        )
    });
    let started = std::time::Instant::now();
    let counts: Vec<(usize, usize)> = std::thread::scope(|scope| {
        let senders: Vec<_> = hosts
            .iter()
            .map(|host| {
                scope.spawn(move || {
                    let (mut passed, mut sent) = (0, 0);
                    while started.elapsed() < Duration::from_secs(SECS as u64) {
                        sent += 1;
                        passed += usize::from(host.status() == 200);
                    }
                    (passed, sent)
                })
            })
            .collect();
        senders.into_iter().map(|s| s.join().unwrap()).collect()
    });
    let passed: usize = counts.iter().map(|c| c.0).sum();
    let sent: usize = counts.iter().map(|c| c.1).sum();
    // One host alone passes burst + rate × t; three hosts each alone, three times that.
    let exact = RATE + RATE * SECS;
    // The stated bound: each other host's burst and what the rate lets through before the
    // fleet shares the key (the first sync after a start only takes the counters' baseline:
    // two syncs of 50 ms; a second allowed, for a loaded machine), and the shares' bursts
    // rounded up to whole requests (⌈10/3⌉ = 4 a host). Three hosts alone: 3 × 50.
    let bound = exact + 2 * (RATE + RATE) + 2;
    eprintln!("{passed} of {sent} passed ({counts:?}); alone {exact}, bound {bound}");
    let logs: Vec<String> = hosts.iter().map(|h| h.agent.log()).collect();
    assert!(
        sent >= 3 * 3 * exact,
        "the hosts must be offered far more than three times the limit: {counts:?}"
    );
    assert!(
        (exact - RATE..=bound).contains(&passed),
        "{passed} of {sent} passed across the fleet in {SECS} s ({counts:?}); one host alone \
         would pass {exact}, the bound is {bound}\n{}",
        logs.join("\n----\n")
    );
    assert!(
        redis
            .cli(&["--scan", "--pattern", "limiter:*:r"])
            .contains(":r"),
        "the key's senders are in Redis"
    );
}

/// A key every host holds a lease of, flooded through the three at once from several CPUs:
/// the fleet passes exactly its quota — what the hosts hold and the fleet's count never sum to
/// more than it, also while leases are being moved (the answer on its way back).
#[test]
fn a_leased_key_flooded_through_three_hosts_passes_exactly_its_quota() {
    const BIG: usize = 300;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let hosts = three_hosts(&redis, &secret, |_, c| {
        c.replace(&format!("quota = {QUOTA}"), &format!("quota = {BIG}"))
    });
    limiter_tests::within_one_minute(Duration::from_secs(25));
    for host in &hosts {
        assert_eq!(host.status(), 200);
    }
    // Every host reports and takes its lease.
    std::thread::sleep(Duration::from_millis(400));
    let passed: Vec<usize> = std::thread::scope(|scope| {
        let floods: Vec<_> = hosts
            .iter()
            .map(|host| {
                scope.spawn(move || {
                    let started = std::time::Instant::now();
                    let mut passed = 0;
                    while started.elapsed() < Duration::from_secs(3) {
                        passed += usize::from(host.status() == 200);
                    }
                    passed
                })
            })
            .collect();
        floods.into_iter().map(|f| f.join().unwrap()).collect()
    });
    let total = 3 + passed.iter().sum::<usize>();
    let logs: Vec<String> = hosts.iter().map(|h| h.agent.log()).collect();
    assert_eq!(
        total,
        BIG,
        "passed per host {passed:?}\n{}",
        logs.join("\n----\n")
    );
}

/// Redis down before a key's first sync in a window: each host gives the key the quota
/// divided by the hosts it last saw, so the fleet still passes the quota, not three times it.
#[test]
fn redis_down_before_a_windows_first_sync_shares_by_the_hosts_last_seen() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let hosts = three_hosts(&redis, &secret, |_, c| c);
    limiter_tests::within_one_minute(Duration::from_secs(25));
    // Every host has synced (and seen the other two) before Redis goes.
    std::thread::sleep(Duration::from_millis(500));
    redis.stop();
    std::thread::sleep(Duration::from_millis(300));
    let mut passed = 0;
    for round in 0..(2 * QUOTA) {
        passed += usize::from(hosts[round % 3].status() == 200);
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs: Vec<String> = hosts.iter().map(|h| h.agent.log()).collect();
    // ⌈30 / 3⌉ = 10 on each host; alone each would pass all 20 it got.
    assert_eq!(passed, QUOTA, "{}", logs.join("\n----\n"));
    redis.resume();
}

/// `[fleet]` follows a reload: added, the host joins the fleet; removed, it counts alone.
#[test]
fn fleet_follows_a_reload() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let with = config(&redis.url(), "gw-1", &secret);
    let without = with.split("[fleet]").next().unwrap().to_owned();
    let net = TestNet::new(1, 1);
    let agent = Agent::start(&net, Some(&without));
    let out = agent.cli(&["fleet"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("no [fleet]"), "{}", out.stderr);
    agent.write_config(&with);
    assert_eq!(agent.cli(&["reload"]).code, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while agent.json(&["fleet"])["connected"] != true {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(redis.cli(&["HGET", "limiter:hosts", "gw-1"]).trim().len() > 1);
    agent.write_config(&without);
    assert_eq!(agent.cli(&["reload"]).code, 0);
    assert_ne!(agent.cli(&["fleet"]).code, 0);
    assert!(agent.json(&["status"])["fleet"].is_null());
    assert!(agent.log().contains("fleet: stopped"), "{}", agent.log());
}

/// Redis killed in the middle of keyed traffic: every host goes on enforcing on the leases it
/// holds, says once that Redis is gone, and when Redis is back reports what it counted
/// meanwhile.
#[test]
fn redis_down_and_back_loses_no_count_and_crashes_nothing() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let mut webhooks = Vec::new();
    let hosts = three_hosts(&redis, &secret, |net, c| {
        let webhook = WebhookReceiver::start(&net.gateway);
        let text = format!(
            "{}\n[alerts]\nwebhook = \"{}\"\n",
            c.replace("quota = 30", "quota = 1000"),
            webhook.url()
        );
        webhooks.push(webhook);
        text
    });
    limiter_tests::within_one_minute(Duration::from_secs(25));
    let send = |n: usize| {
        for i in 0..n {
            assert_eq!(hosts[i % 3].status(), 200);
        }
    };
    send(30);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fleet_count(&redis), 30);

    redis.stop();
    send(30);
    std::thread::sleep(Duration::from_millis(500));
    for host in &hosts {
        let fleet = host.agent.json(&["fleet"]);
        assert_eq!(fleet["connected"], false, "{fleet}");
        let status = host.agent.json(&["status"]);
        assert_eq!(status["fleet"]["connected"], false, "{status}");
    }
    redis.resume();
    // The hosts reconnect with a backoff of at most 5 s. Redis came back empty (it persists
    // nothing here): the fleet count is what the hosts counted while it was gone, nothing of
    // it lost.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while hosts
        .iter()
        .any(|h| h.agent.json(&["fleet"])["connected"] != true)
    {
        assert!(std::time::Instant::now() < deadline, "not reconnected");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fleet_count(&redis), 30);
    for host in &hosts {
        let log = host.agent.log();
        assert_eq!(log.matches("Redis is unreachable").count(), 1, "{log}");
        assert!(log.contains("fleet: reconnected"), "{log}");
        assert_eq!(host.agent.json(&["fleet"])["connected"], true);
    }
    // Alerted once each way, with the host and the Redis named.
    for (webhook, name) in webhooks.iter().zip(["gw-1", "gw-2", "gw-3"]) {
        let posts = webhook.wait_for(Duration::from_secs(3), |posts| {
            alerts(posts)
                .iter()
                .any(|a| a["kind"] == "fleet_reconnected")
        });
        let fleet: Vec<_> = alerts(&posts)
            .into_iter()
            .filter(|a| a["kind"].as_str().is_some_and(|k| k.starts_with("fleet")))
            .collect();
        let kinds: Vec<&str> = fleet.iter().map(|a| a["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["fleet_unreachable", "fleet_reconnected"],
            "{fleet:?}"
        );
        assert_eq!(fleet[0]["host"], name);
        assert_eq!(fleet[0]["redis"], redis.url());
        assert!(fleet[0]["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
}

/// A Redis that holds another format under the prefix, or refuses the agent's password: the
/// agent says so and counts alone — it never crashes and never stops enforcing.
#[test]
fn a_redis_it_cannot_share_is_refused_and_the_host_enforces_alone() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let foreign = RedisServer::start();
    foreign.cli(&["SET", "limiter:meta", "7"]);
    let locked = RedisServer::start_with(&["--requirepass", "s3cret-pass"]);
    for (redis, says) in [
        (foreign.url(), "says format"),
        (locked.url(), "refusing to share"),
    ] {
        let net = TestNet::new(1, 1);
        let _pass = ClientPass::attach(&net);
        let _nginx = Nginx::start(&net);
        let agent = Agent::start(&net, Some(&config(&redis, "gw-x", &secret)));
        let (code, _, err) = agent.add_key("acme", Some("metered"), TOKEN);
        assert_eq!(code, 0, "keys add: {err}");
        let host = Host {
            agent,
            _nginx,
            _pass,
            net,
        };
        limiter_tests::within_one_minute(Duration::from_secs(10));
        let statuses: Vec<u16> = (0..QUOTA + 2).map(|_| host.status()).collect();
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            QUOTA,
            "the host's own quota, enforced alone: {statuses:?}"
        );
        let fleet = host.agent.json(&["fleet"]);
        assert_eq!(fleet["connected"], false, "{fleet}");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while !host.agent.log().contains(says) {
            assert!(std::time::Instant::now() < deadline, "{}", host.agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = host.agent.log();
        assert!(!log.contains("s3cret-pass"), "no password in the log");
    }
    assert_eq!(
        foreign.cli(&["GET", "limiter:meta"]).trim(),
        "7",
        "its data left alone"
    );
}

/// The fleet's count of the (one) key with a quota in Redis.
fn fleet_count(redis: &RedisServer) -> u64 {
    let key = redis.cli(&["--scan", "--pattern", "limiter:*:q:*"]);
    let key = key.trim();
    if key.is_empty() {
        return 0;
    }
    redis.cli(&["GET", key]).trim().parse().unwrap_or(0)
}

/// Whether host's client can open a connection to its gateway now (a deny drops its SYN).
fn connects(host: &Host) -> bool {
    let from = IpAddr::V4(host.net.client_addrs[0]);
    let to = host.net.gateway_ip();
    limiter_tests::netns::run_in(&host.net.clients.name, move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        socket
            .bind(&std::net::SocketAddr::new(from, 0).into())
            .unwrap();
        socket
            .connect_timeout(
                &std::net::SocketAddr::new(to, limiter_tests::gateway::GATEWAY_PORT).into(),
                Duration::from_millis(300),
            )
            .is_ok()
    })
}

/// Waits up to a second for `done`; how long it took.
fn within_a_second(what: &str, done: impl Fn() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: not within a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// A registered key, a deny and a reset typed on host 1 act on host 3 within a second; foreign
/// entries in the stream are skipped, and what comes after them still arrives.
#[test]
fn what_an_operator_changes_on_one_host_acts_on_every_host_within_a_second() {
    const BETA: &str = "tok-fleet-beta-77d1";
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let hosts = three_hosts(&redis, &secret, |_, c| {
        c + "\n[[plans]]\nname = \"tiny\"\nrate = 1\nburst = 2\n"
    });
    let (first, third) = (&hosts[0], &hosts[2]);
    let beta = |host: &Host| {
        let client = IpAddr::V4(host.net.client_addrs[0]);
        get_once(&host.net, client, Some(&format!("X-API-Key: {BETA}"))).status
    };
    // Every host has read the stream's end before the changes are made.
    std::thread::sleep(Duration::from_millis(300));

    // Foreign entries first: skipped, said.
    redis.cli(&["XADD", "limiter:events", "*", "change", "rm -rf /"]);
    redis.cli(&["XADD", "limiter:events", "*", "junk", "1"]);

    // A registered key: on the tiny plan, host 3 answers its third request with a 429.
    assert_eq!(beta(third), 200, "unregistered: the [http] default");
    let (code, _, err) = first.agent.add_key("beta", Some("tiny"), BETA);
    assert_eq!(code, 0, "keys add: {err}");
    let took = within_a_second("the key registered on host 3", || {
        third.agent.log().contains("API key 'beta' registered")
    });
    let statuses: Vec<u16> = (0..4).map(|_| beta(third)).collect();
    assert!(
        statuses.contains(&429),
        "the tiny plan on host 3: {statuses:?} ({took:?})"
    );
    assert!(!third.agent.log().contains(BETA), "no token in the log");
    assert!(
        !redis
            .cli(&["XRANGE", "limiter:events", "-", "+"])
            .contains(BETA),
        "no token in Redis"
    );

    // A reset on host 1 of the key exhausted on host 3: it passes there again.
    first.agent.cli(&["reset", "key:beta"]);
    within_a_second("the reset on host 3", || beta(third) == 200);

    // A deny of host 3's client, typed on host 1, and lifted there.
    assert!(connects(third));
    let denied = third.net.client_addrs[0].to_string();
    let out = first.agent.cli(&["deny", &denied, "--ttl", "1h"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    within_a_second("the deny on host 3", || !connects(third));
    assert!(third.agent.cli(&["overrides"]).stdout.contains(&denied));
    let out = first.agent.cli(&["overrides", "rm", &denied]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    within_a_second("the deny lifted on host 3", || connects(third));

    for host in &hosts[1..] {
        let log = host.agent.log();
        assert_eq!(
            log.matches("is not a change of this build").count(),
            1,
            "the foreign entry said once: {log}"
        );
        assert!(log.contains("without a change"), "{log}");
        assert!(log.contains("from gw-1"), "{log}");
    }
    // Host 1 applied its own changes when they were made, not again from the stream.
    assert!(!first.agent.log().contains("applied from gw-1"));

    // A quota used up across the fleet, given back by a reset typed on host 1: every host
    // passes the key again, and the fleet's count starts anew.
    limiter_tests::within_one_minute(Duration::from_secs(10));
    let passed = (0..2 * QUOTA)
        .filter(|round| {
            std::thread::sleep(Duration::from_millis(20));
            hosts[round % 3].status() == 200
        })
        .count();
    assert!((QUOTA..=QUOTA + 2).contains(&passed), "{passed}");
    assert!(hosts.iter().all(|h| h.status() == 429));
    let out = first.agent.cli(&["reset", "--quota", "key:acme"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    within_a_second("the quota back on every host", || {
        hosts.iter().all(|h| h.status() == 200)
    });
    // Used up again, then topped up by 6 on host 1: the fleet's limit is the quota and the
    // top-up on every host — host 3 alone passes what the fleet has left of it (without the
    // top-up there, nothing).
    for round in 0..2 * QUOTA {
        std::thread::sleep(Duration::from_millis(20));
        hosts[round % 3].status();
    }
    assert!(hosts.iter().all(|h| h.status() == 429));
    let out = first.agent.cli(&["quota", "key:acme", "--add", "6"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    within_a_second("the top-up on host 3", || {
        third.agent.log().contains("topped up by 6")
    });
    std::thread::sleep(Duration::from_millis(300));
    let used = fleet_count(&redis);
    assert!((QUOTA as u64..QUOTA as u64 + 6).contains(&used), "{used}");
    let more = (0..18)
        .filter(|_| {
            std::thread::sleep(Duration::from_millis(30));
            third.status() == 200
        })
        .count();
    // What is left, less a request each the two idle hosts may hold (a lease is at least one).
    let left = QUOTA as u64 + 6 - used;
    assert!(
        (left.saturating_sub(2)..=left).contains(&(more as u64)),
        "the top-up on host 3: {more} of {left} left"
    );
}

/// A host with another `[http] secret_file` refuses the keys the others register (their
/// tokens would not hash the same there) and says so; a `limiter:events` that is not a stream
/// is said once, the quotas are shared all the same, and once it is gone the changes flow.
#[test]
fn another_secret_or_a_foreign_stream_is_said_and_the_rest_goes_on() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "00112233445566778899aabbccddeeff\n").unwrap();
    let other = dir.path().join("other-secret");
    std::fs::write(&other, "ffeeddccbbaa99887766554433221100\n").unwrap();
    redis.cli(&["SET", "limiter:events", "not a stream"]);
    let mut built = 0;
    let hosts = three_hosts(&redis, &secret, |_, c| {
        built += 1;
        match built {
            2 => c.replace(&secret.display().to_string(), &other.display().to_string()),
            _ => c,
        }
    });
    let (first, second, third) = (&hosts[0], &hosts[1], &hosts[2]);
    within_a_second("the foreign stream said", || {
        first.agent.log().contains("limiter:events cannot be used")
    });
    // Quotas are shared all the same.
    assert_eq!(first.agent.json(&["fleet"])["connected"], true);
    let denied = third.net.client_addrs[0].to_string();
    let out = first.agent.cli(&["deny", &denied, "--ttl", "1h"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::thread::sleep(Duration::from_millis(500));
    assert!(connects(third), "the deny cannot travel yet");

    // The foreign data gone: what waited goes, and what comes next.
    redis.cli(&["DEL", "limiter:events"]);
    within_a_second("the waiting deny on host 3", || !connects(third));
    let (code, _, err) = first.agent.add_key("gamma", None, "tok-fleet-gamma-5e0c");
    assert_eq!(code, 0, "keys add: {err}");
    within_a_second("the key registered on host 3", || {
        third.agent.log().contains("API key 'gamma' registered")
    });
    within_a_second("the key refused on host 2", || {
        second.agent.log().contains("hashed under another secret")
    });
    assert!(!second.agent.log().contains("API key 'gamma' registered"));
    for host in &hosts {
        let log = host.agent.log();
        assert_eq!(log.matches("cannot be used").count(), 1, "said once: {log}");
    }
}
