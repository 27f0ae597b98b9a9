//! The agent's HTTP/JSON API on its Unix socket: paths and the shapes both sides exchange.
//! A leaf: the agent and the CLI depend on it, it depends on neither. The JSON field names are
//! the project's contract (`inspect --json`, `status --json` …), documented in docs/api.md.

use limiter_common::maps::{Counter, COUNTER_SLOTS};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest `--ttl` an override takes (longer ones are refused, not wrapped).
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);

/// Where the agent's API listens unless told otherwise.
pub const DEFAULT_API_SOCKET: &str = "/run/limiter/limiter.sock";

pub const STATUS_PATH: &str = "/v1/status";
pub const KEYS_PATH: &str = "/v1/keys";
pub const INSPECT_PATH: &str = "/v1/inspect";
pub const RESET_PATH: &str = "/v1/reset";
pub const QUOTA_PATH: &str = "/v1/quota";
pub const FLEET_PATH: &str = "/v1/fleet";
pub const RELOAD_PATH: &str = "/v1/reload";
pub const OVERRIDES_PATH: &str = "/v1/overrides";
/// Registered API keys: `POST` adds one, `DELETE ?name=` forgets one.
pub const API_KEYS_PATH: &str = "/v1/api-keys";
/// Usage history: `GET ?since_s=&by=&key=&top=`.
pub const USAGE_PATH: &str = "/v1/usage";

/// What a tracked key is kept for.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// A source address or prefix.
    #[default]
    Source,
    /// An HTTP API key (its token's keyed hash).
    ApiKey,
}

/// What an API key's object adds to a source key's.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyFields {
    /// The registered name; null for a key never registered.
    pub name: Option<String>,
    /// 16 hex digits derived from the token's keyed hash (never the token).
    pub fingerprint: String,
    /// The registered key's plan; null: the `[http]` default.
    pub plan: Option<String>,
}

/// One tracked key and its bucket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyInfo {
    /// A source prefix (`198.18.0.7/32`), or `key:NAME` / `key:FINGERPRINT` for an API key.
    pub key: String,
    #[serde(default)]
    pub kind: KeyKind,
    /// With `kind` = `api_key`.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyFields>,
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
    /// An API key whose plan has a quota: its use in this window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaInfo>,
}

/// A key's quota in the window now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuotaInfo {
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// Of `limit`, what `limiter quota KEY --add N` added for this window.
    #[serde(default)]
    pub added: u64,
    /// `minute`, `hour`, `day` or `month`.
    pub period: String,
    /// When the window ends and the quota comes back (RFC 3339, UTC).
    pub resets_at: String,
    /// When the key will have used it up at its recent rate (over the last minute; the window's
    /// average without a recent sample); null when
    /// not this window (now, when used up).
    pub exhausts_at: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InterfaceInfo {
    pub name: String,
    /// "native" or "skb".
    pub mode: String,
    /// False once the program's link is gone (`limiter detach` while the agent runs): packets
    /// on the interface are no longer limited.
    #[serde(default = "attached_default")]
    pub attached: bool,
}

fn attached_default() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub interfaces: Vec<InterfaceInfo>,
    pub tracked_keys: u64,
    pub exhausted_keys: u64,
    pub dry_run: bool,
    /// Keys the LRU map evicted to make room (keys created less keys tracked).
    pub evicted_keys: u64,
    /// Every datapath counter, summed over CPUs and interfaces, by its name (`passed`,
    /// `dropped`, `would_drop`, … — see `Counter`).
    #[serde(flatten)]
    pub counters: Counters,
    pub rules: usize,
    pub config: ConfigInfo,
    /// With `[fleet]`: whether this host is in sync with the fleet's Redis; null without.
    #[serde(default)]
    pub fleet: Option<FleetSync>,
}

/// `status`'s word on the fleet.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FleetSync {
    pub connected: bool,
    /// How long the last sync took (ms); null before the first.
    pub lag_ms: Option<u64>,
}

/// Answer of `GET /v1/fleet`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FleetInfo {
    /// The Redis URL, without its password.
    pub redis: String,
    /// This host's name in the fleet.
    pub host: String,
    pub connected: bool,
    /// Why this host does not share, when it refuses to (another format under the prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    pub lag_ms: Option<u64>,
    pub hosts: Vec<FleetHost>,
}

/// A host of the fleet as Redis last said.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FleetHost {
    pub host: String,
    pub last_sync_ms_ago: u64,
    /// Keys it reported at its last sync.
    pub keys: u64,
    /// The requests of keys with a quota it reported since its agent started: what it
    /// consumed of the fleet's quotas.
    pub requests: u64,
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
    /// Keys created at once at most; `null`: no bound.
    #[serde(default)]
    pub new_keys_burst: Option<u64>,
    /// Where the bound comes from: "default" (derived from max_keys), "config", or "off".
    #[serde(default)]
    pub new_keys_bound: String,
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
    /// Only keys of this kind.
    pub kind: Option<KeyKind>,
}

/// Body of `POST /v1/api-keys`. The token travels only over the agent's socket, is hashed at
/// once, and is never logged, stored or answered.
#[derive(Clone, Serialize, Deserialize)]
pub struct AddApiKey {
    pub name: String,
    pub plan: Option<String>,
    pub token: String,
}

impl fmt::Debug for AddApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddApiKey")
            .field("name", &self.name)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// A registered key, as `POST /v1/api-keys` answers it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiKeyAdded {
    pub name: String,
    pub plan: Option<String>,
    pub fingerprint: String,
}

/// Query of `DELETE /v1/api-keys`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKeyQuery {
    pub name: String,
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ResetRequest {
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub exhausted: bool,
    #[serde(default)]
    pub all: bool,
    /// Give the selected API keys their whole quota back for this window, instead of a full
    /// bucket (keys without a quota are left alone).
    #[serde(default)]
    pub quota: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ResetResponse {
    /// How many tracked keys got a full bucket.
    pub reset: u64,
    /// KEYs of the request that selected no tracked key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_tracked: Vec<String>,
}

/// Body of `POST /v1/quota`: add `add` requests to the quota of the API key `key` (`key:NAME`,
/// `key:FINGERPRINT`) for the window now.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuotaTopUpRequest {
    pub key: String,
    pub add: u64,
}

/// Answer of `GET /v1/quota?key=KEY` and `POST /v1/quota`: the key and its quota (after the
/// top-up).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuotaResponse {
    pub key: String,
    pub quota: QuotaInfo,
}

/// Body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// For a person.
    pub error: String,
    /// For a script (absent in answers of agents older than the code).
    #[serde(default)]
    pub code: Option<ErrorCode>,
}

/// What kind of error an answer is, machine-readable; the CLI picks its exit status from it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed KEY or CIDR, a bad body or query, a reset without exactly one selection.
    BadRequest,
    /// `inspect` of a KEY that selects several tracked keys.
    AmbiguousKey,
    /// The KEY selects no tracked key.
    NotTracked,
    /// `overrides rm` of a CIDR that has no override.
    NoSuchOverride,
    /// `keys rm` of a name that is not registered.
    NoSuchKey,
    /// `reload`: the config file is refused, or the agent has none.
    ReloadRefused,
    /// The datapath cannot hold more (rules or overrides of a family).
    Capacity,
    /// Anything else: the agent could not do it (the message says why).
    Internal,
    /// A code this build does not know (from a newer agent).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The HTTP status of an answer with this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::AmbiguousKey => 400,
            ErrorCode::NotTracked | ErrorCode::NoSuchOverride | ErrorCode::NoSuchKey => 404,
            ErrorCode::ReloadRefused => 422,
            ErrorCode::Capacity => 507,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

/// What an override does (and a configured rule: `action = "…"`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Never limited.
    Allow,
    /// Always dropped.
    Deny,
    /// Limited with its own rate and burst.
    Limit,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Limit => "limit",
        })
    }
}

/// Every datapath counter by [`Counter`], in JSON an object of `name: value` in slot order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters([u64; COUNTER_SLOTS as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    pub fn set(&mut self, counter: Counter, value: u64) {
        self.0[counter as usize] = value;
    }

    /// Each counter with its value, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self.get(c)))
    }
}

impl Serialize for Counters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(c, value)| (c.name(), value)))
    }
}

impl<'de> Deserialize<'de> for Counters {
    /// Takes the fields that name a counter; other fields (from a newer agent, or of the
    /// object this is flattened into) are left alone, and a counter not given is 0.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Counters, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Counters;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of counters")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Counters, A::Error> {
                let mut counters = Counters::default();
                while let Some(name) = map.next_key::<String>()? {
                    match Counter::from_name(&name) {
                        Some(counter) => counters.set(counter, map.next_value()?),
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(counters)
            }
        }
        d.deserialize_map(Visitor)
    }
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
    pub action: Action,
    pub rate: Option<u64>,
    pub burst: Option<u64>,
    /// Lapses after this long; none: until removed.
    pub ttl_ms: Option<u64>,
}

/// One override in force (`limiter overrides --json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OverrideInfo {
    pub cidr: String,
    pub action: Action,
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

/// How long the usage history goes back.
pub const USAGE_KEPT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The periods usage is summed over.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UsageBy {
    Minute,
    Hour,
    Day,
}

impl UsageBy {
    /// A period's length, seconds.
    pub fn secs(self) -> u64 {
        match self {
            UsageBy::Minute => 60,
            UsageBy::Hour => 3600,
            UsageBy::Day => 86_400,
        }
    }

    /// What a window of `since` is shown by unless told: at most a few dozen periods, or a
    /// minute's detail for a short one.
    pub fn default_for(since: std::time::Duration) -> UsageBy {
        match since.as_secs() {
            0..=10_800 => UsageBy::Minute,
            10_801..=259_200 => UsageBy::Hour,
            _ => UsageBy::Day,
        }
    }
}

impl fmt::Display for UsageBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UsageBy::Minute => "minute",
            UsageBy::Hour => "hour",
            UsageBy::Day => "day",
        })
    }
}

/// Query of `GET /v1/usage`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UsageQuery {
    /// From this long ago until now, seconds (at most [`USAGE_KEPT`]).
    pub since_s: u64,
    /// Default: [`UsageBy::default_for`] the window.
    pub by: Option<UsageBy>,
    /// One KEY (a prefix selects every recorded key inside it); none: the totals over all keys
    /// and the busiest keys.
    pub key: Option<String>,
    /// How many keys at most besides the totals (default 10).
    pub top: Option<usize>,
}

/// What a usage series is of.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    /// Every key together (`"key": "all"`), whether its own rows are kept or not.
    Total,
    Source,
    ApiKey,
}

/// One key's usage (or all keys'), period by period: `usage --json` is an array of these.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UsageSeries {
    /// As the rest of the CLI names keys (`key:NAME`, `key:FINGERPRINT`, `198.18.0.10/32`), or
    /// `all` for the totals.
    pub key: String,
    pub kind: UsageKind,
    pub by: UsageBy,
    /// Sums over the window.
    pub passed: u64,
    pub dropped: u64,
    /// Every period of the window, oldest first (the last one is still going on).
    pub points: Vec<UsagePoint>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UsagePoint {
    /// The period's start (RFC 3339, UTC).
    pub at: String,
    pub passed: u64,
    /// Dropped, or for an API key answered with 429.
    pub dropped: u64,
}

/// `at` as RFC 3339 in UTC with milliseconds, as the API's and the webhook's times are:
/// `2025-01-31T23:59:59.123Z`.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
        assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }
}
