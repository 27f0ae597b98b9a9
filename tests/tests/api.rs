//! The API on the agent's Unix socket, spoken to directly: every error answer is JSON with a
//! message and a machine-readable `code`, a bad request changes nothing, and the CLI's exit
//! status follows the code.

use limiter_common::maps::Counter;
use limiter_tests::agent::Agent;
use limiter_tests::netns::TestNet;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// One HTTP/1.1 request on a connection of its own; the status and the JSON body.
fn request(agent: &Agent, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut stream = UnixStream::connect(&agent.socket).expect("connecting to the API socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: limiter\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let json = serde_json::from_str(body.trim())
        .unwrap_or_else(|err| panic!("the body of {method} {path} is not JSON ({err}): {body:?}"));
    (status, json)
}

/// Asserts an error answer: status, code, and a message for a person.
fn assert_error(answer: (u16, Value), status: u16, code: &str) {
    let (got, body) = answer;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "no message: {body}"
    );
}

#[test]
fn errors_carry_a_code_and_change_nothing() {
    let net = TestNet::new(0, 1);
    let agent = Agent::start(&net, None);

    // Bodies and queries the API cannot read: the same JSON shape as every other error.
    assert_error(
        request(
            &agent,
            "POST",
            "/v1/overrides",
            Some(r#"{"cidr": "198.18.0.0/24", "action": "shrug"}"#),
        ),
        400,
        "bad_request",
    );
    assert_error(
        request(&agent, "POST", "/v1/reset", Some("{not json")),
        400,
        "bad_request",
    );
    assert_error(
        request(
            &agent,
            "POST",
            "/v1/reset",
            Some(r#"{"all": true, "exhausted": true}"#),
        ),
        400,
        "bad_request",
    );
    assert_error(
        request(&agent, "GET", "/v1/inspect", None),
        400,
        "bad_request",
    );
    assert_error(
        request(&agent, "GET", "/v1/inspect?key=nonsense", None),
        400,
        "bad_request",
    );
    assert_error(
        request(&agent, "GET", "/v1/inspect?key=198.18.0.77", None),
        404,
        "not_tracked",
    );
    assert_error(
        request(&agent, "DELETE", "/v1/overrides?cidr=198.18.9.0/24", None),
        404,
        "no_such_override",
    );
    // The agent runs on the embedded default: nothing to re-read.
    assert_error(
        request(&agent, "POST", "/v1/reload", None),
        422,
        "reload_refused",
    );
    let (status, overrides) = request(&agent, "GET", "/v1/overrides", None);
    assert_eq!(
        (status, overrides.as_array().map(Vec::len)),
        (200, Some(0)),
        "a refused override was kept: {overrides}"
    );

    // The CLI's exit status follows the code.
    for (args, code) in [
        (&["inspect", "198.18.0.77"][..], 4),
        (&["overrides", "rm", "198.18.9.0/24"][..], 5),
        (&["reload"][..], 1),
    ] {
        let out = agent.cli(args);
        assert_eq!(out.code, code, "limiter {args:?}: {out:?}");
        assert!(out.stderr.starts_with("error: "), "{out:?}");
    }
}

#[test]
fn status_carries_every_counter_by_name() {
    let net = TestNet::new(0, 1);
    let agent = Agent::start(&net, None);
    let (code, status) = request(&agent, "GET", "/v1/status", None);
    assert_eq!(code, 200, "{status}");
    for counter in Counter::ALL {
        assert!(
            status[counter.name()].is_u64(),
            "status lacks the counter {}: {status}",
            counter.name()
        );
    }
    let text = agent.cli(&["status"]);
    for counter in Counter::ALL {
        assert!(
            text.stdout.contains(counter.label()),
            "status lacks a row for {}:\n{}",
            counter.label(),
            text.stdout
        );
    }
}
