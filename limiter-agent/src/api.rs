//! The agent's HTTP/JSON API on its Unix socket: paths and the shapes both sides exchange.
//! The JSON field names are the contract of PRODUCT.md (`inspect --json`, `status --json` …).

use serde::{Deserialize, Serialize};

pub const STATUS_PATH: &str = "/v1/status";
pub const KEYS_PATH: &str = "/v1/keys";
pub const INSPECT_PATH: &str = "/v1/inspect";
pub const RESET_PATH: &str = "/v1/reset";
pub const RELOAD_PATH: &str = "/v1/reload";
pub const OVERRIDES_PATH: &str = "/v1/overrides";

/// One tracked key and its bucket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyInfo {
    pub key: String,
    pub rule: String,
    pub rate: u64,
    pub burst: u64,
    pub remaining: u64,
    pub exhausted: bool,
    pub retry_after_ms: u64,
    pub passed: u64,
    pub dropped: u64,
    /// Over the limit but let through by dry run.
    pub would_drop: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InterfaceInfo {
    pub name: String,
    /// "native" or "skb".
    pub mode: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub interfaces: Vec<InterfaceInfo>,
    pub tracked_keys: u64,
    pub exhausted_keys: u64,
    pub passed: u64,
    pub dropped: u64,
    pub dry_run: bool,
    /// Over a limit (or denied) but let through by dry run.
    pub would_drop: u64,
    /// Passed by an allow rule, without a bucket.
    pub allowed_by_rule: u64,
    /// Matched a deny rule.
    pub denied_by_rule: u64,
    /// Never limited: non-IP (ARP …), IPv6 neighbour and router discovery.
    pub not_limited: u64,
    /// Could not be parsed (truncated, malformed, too many IPv6 extension headers): passed.
    pub unparsed: u64,
    /// New keys the datapath could not track (map full and nothing evictable): passed.
    pub insert_failed: u64,
    /// Keys the LRU map evicted to make room (keys created less keys tracked).
    pub evicted_keys: u64,
    /// Packets dropped because their bucket's update lost to other CPUs every retry.
    pub contention_drops: u64,
    /// First packets of new keys refused over `[agent] new_keys_per_sec`: dropped (counted in
    /// `dropped`, or in `would_drop` in dry run) and no key created.
    #[serde(default)]
    pub new_keys_refused: u64,
    pub rules: usize,
    pub config: ConfigInfo,
}

/// The configuration in force, as `status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigInfo {
    /// A file path, or "embedded default".
    pub source: String,
    pub rate: u64,
    pub burst: u64,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_keys: u32,
    /// `[agent] new_keys_per_sec`: keys created per second at most; `null`: no bound.
    #[serde(default)]
    pub new_keys_per_sec: Option<u64>,
    pub pin_path: String,
}

/// Query of `GET /v1/keys`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub exhausted: bool,
    pub top: Option<usize>,
    pub sort: Option<SortBy>,
    /// Only keys that overlap this address or prefix (applied before sorting and `top`).
    pub prefix: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SortBy {
    /// Most dropped first.
    Drops,
    /// Most passed first.
    Passed,
}

/// Query of `GET /v1/inspect`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InspectQuery {
    pub key: String,
}

/// Body of `POST /v1/reset`: exactly one of the three selections.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResetRequest {
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub exhausted: bool,
    #[serde(default)]
    pub all: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResetResponse {
    /// How many tracked keys got a full bucket.
    pub reset: u64,
    /// KEYs of the request that selected no tracked key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_tracked: Vec<String>,
}

/// Body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Answer of `POST /v1/reload`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReloadResponse {
    pub reloaded: bool,
    /// The file that was applied.
    pub config: String,
    pub rules: usize,
}

/// Body of `POST /v1/overrides`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OverrideRequest {
    pub cidr: String,
    /// "allow", "deny" or "limit".
    pub action: String,
    pub rate: Option<u64>,
    pub burst: Option<u64>,
    /// Lapses after this long; none: until removed.
    pub ttl_ms: Option<u64>,
}

/// One override in force (`limiter overrides --json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OverrideInfo {
    pub cidr: String,
    pub action: String,
    pub rate: Option<u64>,
    pub burst: Option<u64>,
    /// None: until removed.
    pub expires_in_ms: Option<u64>,
    /// The rule name keys under it show.
    pub rule: String,
}

/// Query of `DELETE /v1/overrides`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OverrideQuery {
    pub cidr: String,
}

/// Answer of `DELETE /v1/overrides`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OverrideRemoved {
    pub removed: u64,
}
