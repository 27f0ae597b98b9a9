//! Quotas end to end: the real agent on the gateway's veth with a plan of so many requests a
//! minute, a real nginx behind it. Within the window the key's requests reach nginx up to the
//! quota; the next one gets a 429 from the kernel whose `Retry-After` is the window's end and
//! whose `RateLimit-Policy` is the quota.

use limiter_tests::agent::{limiter, Agent};
use limiter_tests::gateway::{get_once, ClientPass, Nginx, Response};
use limiter_tests::netns::TestNet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Source and rate limits far above anything here; plan "metered": 5 requests a minute.
const CONFIG: &str = r#"
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
quota = 5
period = "minute"
"#;

const TOKEN: &str = "tok-metered-51c2";

/// A gateway with nginx behind the agent on CONFIG, and the key "meter" on plan "metered".
struct Bed {
    // Dropped in this order: the agent, nginx, then the namespaces.
    agent: Agent,
    nginx: Nginx,
    _pass: ClientPass,
    net: TestNet,
}

impl Bed {
    fn start() -> Bed {
        let net = TestNet::new(1, 1);
        let _pass = ClientPass::attach(&net);
        let nginx = Nginx::start(&net);
        let agent = Agent::start(&net, Some(CONFIG));
        let (code, _, err) = agent.add_key("meter", Some("metered"), TOKEN);
        assert_eq!(code, 0, "keys add: {err}");
        Bed {
            agent,
            nginx,
            _pass,
            net,
        }
    }

    /// One request of the key "meter", on a connection of its own.
    fn get(&self) -> Response {
        let client = IpAddr::V4(self.net.client_addrs[0]);
        get_once(&self.net, client, Some(&format!("X-API-Key: {TOKEN}")))
    }

    fn status(&self) -> u16 {
        self.get().status
    }
}

/// Waits, if needed, so that a test's requests are all in one minute.
fn early_in_a_minute() {
    limiter_tests::within_one_minute(Duration::from_secs(25));
}

#[test]
fn a_key_over_its_quota_gets_a_429_until_the_minute_ends() {
    let bed = Bed::start();

    early_in_a_minute();
    let statuses: Vec<u16> = (0..5).map(|_| bed.get().status).collect();
    assert_eq!(statuses, [200; 5], "the quota's 5 requests");
    let answer = bed.get();
    assert_eq!(answer.status, 429, "the 6th in the minute");
    let retry: u64 = answer
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    assert!(
        (1..=60).contains(&retry) && retry.abs_diff(60 - into) <= 1,
        "Retry-After {retry}: the minute's end is {} s away",
        60 - into
    );
    assert_eq!(
        answer.header("ratelimit-policy"),
        Some("\"metered-quota\";q=5;w=60")
    );
    let body = answer.json();
    assert_eq!(body["error"].as_str(), Some("quota exceeded"));
    assert_eq!(body["retry_after_s"].as_u64(), Some(retry));
    assert_eq!(
        bed.nginx
            .logged_statuses_once(5)
            .iter()
            .filter(|s| **s == 200)
            .count(),
        5,
        "nginx saw the quota's requests and no more"
    );

    // What an operator sees of it.
    let inspect = bed.agent.json(&["inspect", "key:meter"]);
    let quota = &inspect["quota"];
    assert_eq!(quota["limit"].as_u64(), Some(5), "{inspect}");
    assert_eq!(quota["used"].as_u64(), Some(5), "{inspect}");
    assert_eq!(quota["remaining"].as_u64(), Some(0), "{inspect}");
    assert_eq!(quota["period"].as_str(), Some("minute"));
    let resets_at = quota["resets_at"].as_str().unwrap();
    assert!(
        resets_at.ends_with(":00.000Z"),
        "{resets_at}: a minute's end"
    );
    assert!(quota["exhausts_at"].is_string(), "used up: {inspect}");
    let text = bed.agent.cli(&["inspect", "key:meter"]).stdout;
    assert!(text.contains("5 a minute (UTC)"), "{text}");

    // The quota given back: the key's requests pass again in the same minute, and the agent
    // logs who did it.
    let reset = bed.agent.cli(&["reset", "--quota", "key:meter"]);
    assert_eq!(reset.code, 0, "{}", reset.stderr);
    assert!(
        reset.stdout.contains("gave 1 key the whole quota back"),
        "{}",
        reset.stdout
    );
    assert_eq!(bed.get().status, 200);
    let inspect = bed.agent.json(&["inspect", "key:meter"]);
    assert_eq!(inspect["quota"]["used"].as_u64(), Some(1), "{inspect}");
    let log = bed.agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("reset keys") && l.contains("quota=true") && l.contains("uid=0")),
        "{log}"
    );
}

/// `limiter quota KEY --add N`: a key that used up its quota gets N more requests through
/// nginx for the rest of its window, its quota shows them, the agent logs who added them; a
/// top-up that cannot be is refused with its reason and changes nothing.
#[test]
fn a_top_up_lets_a_used_up_key_through_for_the_rest_of_its_window() {
    let bed = Bed::start();
    let (code, _, err) = bed.agent.add_key("free", None, "tok-free-8a1e");
    assert_eq!(code, 0, "keys add: {err}");

    early_in_a_minute();
    let statuses: Vec<u16> = (0..6).map(|_| bed.status()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);

    // Refused, each with its reason; nothing changes.
    for (args, code, says) in [
        (&["--add", "0"][..], 2, "positive number"),
        (&["--add", "-5"][..], 2, "positive number"),
        (
            &["--add", "99999999999"][..],
            2,
            "more than a quota window counts",
        ),
        (
            &["--add", "4294967295"][..],
            2,
            "can take at most 4294967290 more",
        ),
        (&["--add", "lots"][..], 2, "invalid value"),
    ] {
        let mut full = vec!["quota", "key:meter"];
        full.extend_from_slice(args);
        let out = bed.agent.cli(&full);
        assert_eq!(out.code, code, "{full:?}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{full:?}: {}", out.stderr);
    }
    let out = bed.agent.cli(&["quota", "key:free", "--add", "3"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("key:free has no quota"),
        "{}",
        out.stderr
    );
    let out = bed.agent.cli(&["quota", "198.18.0.10", "--add", "3"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let quota = bed.agent.json(&["quota", "key:meter"])["quota"].clone();
    assert_eq!(
        (quota["limit"].as_u64(), quota["added"].as_u64()),
        (Some(5), Some(0)),
        "{quota}"
    );
    assert_eq!(bed.status(), 429, "still used up");

    // Two more for this minute.
    let out = bed.agent.cli(&["quota", "key:meter", "--add", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("added 2 requests to key:meter's quota for this window"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("7 a minute (UTC), 2 of it added"),
        "{}",
        out.stdout
    );
    let statuses: Vec<u16> = (0..3).map(|_| bed.status()).collect();
    assert_eq!(
        statuses,
        [200, 200, 429],
        "the top-up's two, then used up again"
    );
    let quota = bed.agent.json(&["quota", "key:meter"])["quota"].clone();
    assert_eq!(
        (
            quota["limit"].as_u64(),
            quota["used"].as_u64(),
            quota["remaining"].as_u64(),
            quota["added"].as_u64()
        ),
        (Some(7), Some(7), Some(0), Some(2)),
        "{quota}"
    );
    assert_eq!(
        bed.nginx
            .logged_statuses_once(7)
            .iter()
            .filter(|s| **s == 200)
            .count(),
        7,
        "nginx saw the quota's 5 and the top-up's 2"
    );
    let log = bed.agent.log();
    assert!(
        log.lines().any(|l| l.contains("quota topped up")
            && l.contains("key:meter")
            && l.contains("added=2")
            && l.contains("uid=0")),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the token is never logged");
}

/// A reload that changes a plan's period starts its keys' counts anew in the new period's
/// windows (a count of minutes is not charged to a window of hours, nor the other way).
#[test]
fn a_reload_to_another_period_counts_anew() {
    let bed = Bed::start();

    early_in_a_minute();
    let statuses: Vec<u16> = (0..6).map(|_| bed.status()).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
    for (period, used) in [("hour", 1), ("minute", 1), ("day", 1)] {
        bed.agent.write_config(
            &CONFIG.replace("period = \"minute\"", &format!("period = \"{period}\"")),
        );
        let out = bed.agent.cli(&["reload"]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(bed.status(), 200, "a fresh count of {period}s");
        let quota = bed.agent.json(&["quota", "key:meter"])["quota"].clone();
        assert_eq!(quota["period"].as_str(), Some(period), "{quota}");
        assert_eq!(quota["used"].as_u64(), Some(used), "{quota}");
    }
}

// Quota counts across a reboot: the agent checkpoints the kernel's counts (and top-ups) to its
// state directory every second and brings back what the kernel lost when it starts. A reboot
// is played by killing the agent (no goodbye) and removing the program and its pinned maps
// (`limiter detach`), so the next agent finds fresh maps and only the checkpoint. A checkpoint
// that cannot be read is said so, moved aside, and the agent runs.

/// The machine goes down without warning: the agent is killed and the kernel's state is gone.
fn reboot(agent: &mut Agent) {
    agent.kill();
    let out = limiter(&[
        "detach",
        "--iface",
        agent.iface(),
        "--pin-path",
        agent.pin_path.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !agent.pin_path.join("QUOTAS").exists(),
        "the counts are gone"
    );
}

#[test]
fn quota_counts_and_top_ups_survive_a_reboot() {
    let mut bed = Bed::start();

    early_in_a_minute();
    let statuses: Vec<u16> = (0..5).map(|_| bed.status()).collect();
    assert_eq!(statuses, [200; 5]);
    let out = bed.agent.cli(&["quota", "key:meter", "--add", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(bed.status(), 200, "one of the top-up's two");
    // The checkpoint is written every second.
    std::thread::sleep(Duration::from_millis(1500));
    reboot(&mut bed.agent);

    bed.agent.spawn();
    let log = bed.agent.log();
    assert!(
        log.lines().any(|l| l.contains("quota checkpoint read")
            && l.contains("counts=1")
            && l.contains("top_ups=1")),
        "{log}"
    );
    let quota = bed.agent.json(&["quota", "key:meter"])["quota"].clone();
    assert_eq!(
        (
            quota["limit"].as_u64(),
            quota["used"].as_u64(),
            quota["added"].as_u64()
        ),
        (Some(7), Some(6), Some(2)),
        "the count and the top-up came back: {quota}"
    );
    assert_eq!(bed.status(), 200, "the top-up's second");
    assert_eq!(bed.status(), 429, "used up, as before the reboot");
    assert!(
        !std::fs::read(bed.agent.state_dir().join("quotas.redb"))
            .unwrap()
            .windows(TOKEN.len())
            .any(|w| w == TOKEN.as_bytes()),
        "the checkpoint holds token hashes, never a token"
    );
}

#[test]
fn a_checkpoint_that_cannot_be_read_is_moved_aside_and_the_agent_runs() {
    let mut bed = Bed::start();
    early_in_a_minute();
    assert_eq!(bed.status(), 200);
    std::thread::sleep(Duration::from_millis(1500));
    let file = bed.agent.state_dir().join("quotas.redb");

    type Damage = fn(&mut Vec<u8>);
    let damages: [(&str, Damage); 3] = [
        ("truncated", |bytes| bytes.truncate(100)),
        ("overwritten", |bytes| {
            for (i, b) in bytes.iter_mut().take(4096).enumerate() {
                *b = (i * 7 + 3) as u8;
            }
        }),
        ("emptied", |bytes| bytes.clear()),
    ];
    for (how, damage) in damages {
        reboot(&mut bed.agent);
        let mut bytes = std::fs::read(&file).unwrap();
        damage(&mut bytes);
        std::fs::write(&file, &bytes).unwrap();
        bed.agent.spawn();
        let log = bed.agent.log();
        assert!(
            log.contains("the quota checkpoint cannot be read"),
            "{how}: {log}"
        );
        let aside = std::fs::read_dir(bed.agent.state_dir())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("quotas.redb.unreadable-")
            })
            .count();
        assert!(aside >= 1, "{how}: the unreadable file is kept aside");
        // The agent runs and enforces; the kernel starts the key's count anew.
        assert_eq!(bed.status(), 200, "{how}");
        let quota = bed.agent.json(&["quota", "key:meter"])["quota"].clone();
        assert_eq!(quota["used"].as_u64(), Some(1), "{how}: {quota}");
        assert!(file.exists(), "{how}: a new checkpoint is started");
        std::thread::sleep(Duration::from_millis(1500));
    }
}
