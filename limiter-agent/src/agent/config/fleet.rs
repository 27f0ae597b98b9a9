//! `[fleet]`: several gateways holding one limit through a Redis — where it is, what this host
//! is called there, and how often it syncs. Checked when the configuration is read.

use serde::{Deserialize, Serialize};

/// How often a host syncs with the Redis unless told: every 100 ms.
pub const DEFAULT_SYNC_MS: u64 = 100;
/// `sync_ms` bounds: more often than every 10 ms costs Redis more than it gains; less often
/// than every 10 s, a reset or a deny typed on another host takes too long to arrive.
pub const SYNC_MS: std::ops::RangeInclusive<u64> = 10..=10_000;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// `redis://[:PASSWORD@]HOST:PORT/DB`, `rediss://…` (TLS), or `unix:///path/redis.sock`.
    pub redis: String,
    /// This host's name in the fleet (default: the hostname).
    pub host: Option<String>,
    #[serde(default = "default_sync_ms")]
    pub sync_ms: i64,
}

fn default_sync_ms() -> i64 {
    DEFAULT_SYNC_MS as i64
}

impl FleetSection {
    /// Why it cannot be used, if it cannot: (the key at fault, what is wrong).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        redis_url(&self.redis).map_err(|why| ("redis", why))?;
        if let Some(host) = &self.host {
            check_host(host).map_err(|why| ("host", why))?;
        }
        if !SYNC_MS.contains(&(self.sync_ms as u64)) || self.sync_ms < 0 {
            return Err((
                "sync_ms",
                format!(
                    "sync_ms = {}: give a number of milliseconds from {} to {}",
                    self.sync_ms,
                    SYNC_MS.start(),
                    SYNC_MS.end()
                ),
            ));
        }
        Ok(())
    }

    /// This host's name in the fleet: `host`, else the machine's hostname.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| check_host(h).is_ok())
                .unwrap_or_else(|| "localhost".to_owned())
        })
    }

    /// The Redis URL as shown and logged: without its password.
    pub fn shown_url(&self) -> String {
        redact(&self.redis)
    }
}

/// The Redis URL, parsed by the client crate; the error says what is wrong, without the
/// password the URL may carry.
pub fn redis_url(text: &str) -> Result<redis::ConnectionInfo, String> {
    use redis::IntoConnectionInfo;
    let shown = redact(text);
    let scheme = text.split("://").next().unwrap_or("");
    if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") || !text.contains("://") {
        return Err(format!(
            "{shown:?}: expected redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or \
             unix:///path/to/redis.sock"
        ));
    }
    if scheme == "rediss" {
        return Err(format!(
            "{shown:?}: rediss:// (TLS) is not supported by this build; use redis:// on a \
             trusted network or a unix:// socket"
        ));
    }
    text.into_connection_info()
        .map_err(|err| format!("{shown:?} is not a Redis URL: {}", redact(&err.to_string())))
}

/// A fleet host name: 1 to 64 letters, digits, `.`, `-`, `_`.
fn check_host(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 64
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host = {host:?}: give 1 to 64 letters, digits, '.', '-' or '_'"
        ))
    }
}

/// `text` with the password of any `://user:password@` in it replaced by `***`.
fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(redis: &str, host: Option<&str>, sync_ms: i64) -> FleetSection {
        FleetSection {
            redis: redis.to_owned(),
            host: host.map(str::to_owned),
            sync_ms,
        }
    }

    #[test]
    fn urls_of_the_three_kinds_are_taken_and_others_refused_without_their_password() {
        for ok in [
            "redis://127.0.0.1:6379/0",
            "redis://:s3cret@redis.internal:6380/2",
            "unix:///run/redis/redis.sock",
        ] {
            assert_eq!(fleet(ok, None, 100).check(), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("127.0.0.1:6379", "expected redis://"),
            ("http://127.0.0.1:6379", "expected redis://"),
            ("redis://:s3cret@", "is not a Redis URL"),
            ("rediss://:s3cret@h:6380/0", "TLS"),
        ] {
            let (key, why) = fleet(bad, None, 100).check().unwrap_err();
            assert_eq!(key, "redis");
            assert!(why.contains(says), "{bad}: {why}");
            assert!(!why.contains("s3cret"), "{bad}: the password shown: {why}");
        }
        assert_eq!(
            fleet("redis://user:s3cret@h:1/0", None, 100).shown_url(),
            "redis://user:***@h:1/0"
        );
    }

    #[test]
    fn hosts_and_sync_intervals_out_of_bounds_are_refused() {
        assert_eq!(fleet("redis://h:1/0", Some("gw-1.eu"), 10).check(), Ok(()));
        assert_eq!(fleet("redis://h:1/0", Some("gw"), 10_000).check(), Ok(()));
        for (host, sync) in [
            (Some("gw 1"), 100),
            (Some(""), 100),
            (None, 9),
            (None, 10_001),
            (None, -5),
        ] {
            assert!(
                fleet("redis://h:1/0", host, sync).check().is_err(),
                "{host:?} {sync}"
            );
        }
        assert!(!fleet("redis://h:1/0", None, 100).host_name().is_empty());
    }
}
