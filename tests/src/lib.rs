//! The test bed behind limiter's integration tests and `cargo xtask demo`: a pair of network
//! namespaces joined by a veth pair, the real agent attached to the gateway's end, the real
//! `limiter` CLI, and UDP clients that send from several source addresses.
//!
//! Everything stays inside the namespaces it creates, on 198.18.0.0/15; all of it is removed
//! when the guards are dropped.

pub mod agent;
pub mod frame;
pub mod gateway;
pub mod netns;
pub mod object;
pub mod prometheus;
pub mod redis;
pub mod traffic;
pub mod webhook;

use serde_json::Value;
use std::path::PathBuf;

/// The `limiter` binary under test: `$LIMITER_BIN` (set by `cargo xtask test`), else the release
/// build in this workspace.
pub fn limiter_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LIMITER_BIN") {
        return PathBuf::from(bin);
    }
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/limiter");
    assert!(
        bin.exists(),
        "{} does not exist: run the tests with `cargo xtask test`, or `cargo build --release` first",
        bin.display()
    );
    bin
}

/// Waits, if needed, so that the next `needed` of wall-clock time is in one calendar minute
/// (UTC): tests of minute quotas count on one window.
pub fn within_one_minute(needed: std::time::Duration) {
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        % 60.0;
    if into + needed.as_secs_f64() > 60.0 {
        std::thread::sleep(std::time::Duration::from_secs_f64(60.0 - into + 0.5));
    }
}

/// Fails loudly when the tests cannot do what they need: they must never skip silently.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and load XDP programs: run them as root \
         (`sudo cargo xtask test`)"
    );
}

/// `field` of a JSON object (an answer of the CLI or the API) as a number; panics, with the
/// object, when it is missing or not a whole number.
pub fn u64_of(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} missing or not a number in {value}"))
}
