//! Quota counts across a reboot: the agent checkpoints the kernel's counts (and top-ups) to its
//! state directory every second and brings back what the kernel lost when it starts. A reboot
//! is played by killing the agent (no goodbye) and removing the program and its pinned maps
//! (`limiter detach`), so the next agent finds fresh maps and only the checkpoint. A checkpoint
//! that cannot be read is said so, moved aside, and the agent runs.

use limiter_tests::agent::{limiter, Agent};
use limiter_tests::gateway::{get_once, ClientPass, Nginx};
use limiter_tests::netns::TestNet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Plan "metered": 5 requests a minute; rates far above anything here.
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

const TOKEN: &str = "tok-checkpoint-77d0";

/// Waits, if needed, so that the next 25 seconds are in one minute.
fn early_in_a_minute() {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let into = secs % 60.0;
    if into > 30.0 {
        std::thread::sleep(Duration::from_secs_f64(60.0 - into + 0.5));
    }
}

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
    let net = TestNet::new(1, 1);
    let _pass = ClientPass::attach(&net);
    let _nginx = Nginx::start(&net);
    let mut agent = Agent::start(&net, Some(CONFIG));
    let (code, _, err) = agent.add_key("meter", Some("metered"), TOKEN);
    assert_eq!(code, 0, "keys add: {err}");
    let client = IpAddr::V4(net.client_addrs[0]);
    let header = format!("X-API-Key: {TOKEN}");
    let status = || get_once(&net, client, Some(&header)).status;

    early_in_a_minute();
    let statuses: Vec<u16> = (0..5).map(|_| status()).collect();
    assert_eq!(statuses, [200; 5]);
    let out = agent.cli(&["quota", "key:meter", "--add", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(status(), 200, "one of the top-up's two");
    // The checkpoint is written every second.
    std::thread::sleep(Duration::from_millis(1500));
    reboot(&mut agent);

    agent.spawn();
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("quota checkpoint read")
            && l.contains("counts=1")
            && l.contains("top_ups=1")),
        "{log}"
    );
    let quota = agent.json(&["quota", "key:meter"])["quota"].clone();
    assert_eq!(
        (
            quota["limit"].as_u64(),
            quota["used"].as_u64(),
            quota["added"].as_u64()
        ),
        (Some(7), Some(6), Some(2)),
        "the count and the top-up came back: {quota}"
    );
    assert_eq!(status(), 200, "the top-up's second");
    assert_eq!(status(), 429, "used up, as before the reboot");
    assert!(
        !std::fs::read(agent.state_dir().join("quotas.redb"))
            .unwrap()
            .windows(TOKEN.len())
            .any(|w| w == TOKEN.as_bytes()),
        "the checkpoint holds token hashes, never a token"
    );
}

#[test]
fn a_checkpoint_that_cannot_be_read_is_moved_aside_and_the_agent_runs() {
    let net = TestNet::new(1, 1);
    let _pass = ClientPass::attach(&net);
    let _nginx = Nginx::start(&net);
    let mut agent = Agent::start(&net, Some(CONFIG));
    let (code, _, err) = agent.add_key("meter", Some("metered"), TOKEN);
    assert_eq!(code, 0, "keys add: {err}");
    let client = IpAddr::V4(net.client_addrs[0]);
    let header = format!("X-API-Key: {TOKEN}");
    let status = || get_once(&net, client, Some(&header)).status;
    early_in_a_minute();
    assert_eq!(status(), 200);
    std::thread::sleep(Duration::from_millis(1500));
    let file = agent.state_dir().join("quotas.redb");

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
        reboot(&mut agent);
        let mut bytes = std::fs::read(&file).unwrap();
        damage(&mut bytes);
        std::fs::write(&file, &bytes).unwrap();
        agent.spawn();
        let log = agent.log();
        assert!(
            log.contains("the quota checkpoint cannot be read"),
            "{how}: {log}"
        );
        let aside = std::fs::read_dir(agent.state_dir())
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
        assert_eq!(status(), 200, "{how}");
        let quota = agent.json(&["quota", "key:meter"])["quota"].clone();
        assert_eq!(quota["used"].as_u64(), Some(1), "{how}: {quota}");
        assert!(file.exists(), "{how}: a new checkpoint is started");
        std::thread::sleep(Duration::from_millis(1500));
    }
}
