//! Every command of the operator's CLI, with and without `--json`, against the real agent: the
//! table for people, valid JSON of the documented shape for scripts.

use limiter_tests::agent::{limiter, Agent};
use limiter_tests::netns::TestNet;
use serde_json::Value;
use std::net::SocketAddr;

const CONFIG: &str = "[limits]\nrate = 1\nburst = 5\n\n\
                      [[rules]]\nname = \"partner\"\ncidr = \"198.18.0.11/32\"\naction = \"limit\"\nrate = 2\nburst = 10\n";

/// Runs `args` as text and as `--json`; returns the parsed JSON, after checking the text form
/// succeeded and contains `expect`.
fn both(agent: &Agent, args: &[&str], expect: &str) -> Value {
    let text = agent.cli(args);
    assert_eq!(text.code, 0, "limiter {args:?}: {}", text.stderr);
    assert!(
        text.stdout.contains(expect),
        "limiter {args:?} lacks {expect:?}:\n{}",
        text.stdout
    );
    assert!(
        !text.stdout.trim_start().starts_with(['{', '[']),
        "limiter {args:?} printed JSON without --json"
    );
    agent.json(args)
}

#[test]
fn every_command_with_and_without_json() {
    let net = TestNet::new(2, 1);
    let agent = Agent::start(&net, Some(CONFIG));
    for client in net.every_client() {
        client.burst(SocketAddr::new(net.gateway_ip(), 9), 40);
    }

    let status = both(&agent, &["status"], "tracked keys");
    for field in [
        "interfaces",
        "tracked_keys",
        "exhausted_keys",
        "passed",
        "dropped",
        "dry_run",
    ] {
        assert!(
            status.get(field).is_some(),
            "status --json lacks {field}: {status}"
        );
    }
    let list = both(&agent, &["list"], "198.18.0.10/32");
    assert!(
        list.as_array().is_some_and(|keys| keys.len() >= 2),
        "{list}"
    );
    let exhausted = both(
        &agent,
        &["list", "--exhausted", "--sort", "drops", "--top", "1"],
        "EXHAUSTED",
    );
    assert_eq!(exhausted.as_array().map(Vec::len), Some(1), "{exhausted}");
    let inspect = both(&agent, &["inspect", "198.18.0.11"], "partner");
    assert_eq!(inspect["rule"], "partner");
    assert_eq!(inspect["burst"], 10);
    assert_eq!(
        both(&agent, &["reset", "198.18.0.10"], "reset 1 key")["reset"],
        1
    );
    both(&agent, &["reset", "--all"], "keys to a full bucket");
    // Reloading the same file: a no-op that says what it applied.
    assert_eq!(both(&agent, &["reload"], "reloaded")["reloaded"], true);
    let added = both(
        &agent,
        &["deny", "198.18.0.99", "--ttl", "1h"],
        "expires in",
    );
    assert_eq!(added["action"], "deny");
    both(&agent, &["allow", "198.18.0.98"], "until removed");
    both(
        &agent,
        &["limit", "198.18.0.96/30", "--rate", "5", "--burst", "9"],
        "limited to 5/s",
    );
    let overrides = both(&agent, &["overrides"], "198.18.0.99/32");
    assert_eq!(overrides.as_array().map(Vec::len), Some(3), "{overrides}");
    // rm changes state: the text form on one override, --json on another.
    let text = agent.cli(&["overrides", "rm", "198.18.0.99"]);
    assert!(
        text.code == 0 && text.stdout.contains("removed the override"),
        "{text:?}"
    );
    assert_eq!(
        agent.json(&["overrides", "rm", "198.18.0.98"])["removed"],
        1
    );

    // Commands that need no agent.
    let help = limiter(&["--help"]);
    assert!(help.stdout.contains("Exit status"), "{}", help.stdout);
    let man = limiter(&["man"]);
    assert!(
        man.code == 0 && man.stdout.contains(".TH"),
        "{}",
        man.stderr
    );
    let completions = limiter(&["completions", "bash"]);
    assert!(
        completions.code == 0 && completions.stdout.contains("limiter"),
        "{}",
        completions.stderr
    );
}
