//! The agent's TOML configuration: parsing, validation with file and line, and the embedded
//! default.

pub mod fleet;
mod http;
mod usage;
mod webhook;

pub use crate::api::Action;
pub use http::{check_plan_name, HttpSection, Plan, Quota};
pub use usage::UsageSection;
pub use webhook::WebhookUrl;

use limiter_common::bucket::{Limit, NANOS_PER_SEC};
use limiter_common::key::Prefix;
use limiter_common::maps::{
    DatapathConfig, RuleEntry, ACTION_ALLOW, ACTION_DENY, ACTION_LIMIT, CONFIG_DRY_RUN,
    CONFIG_HAS_RULES_V4, CONFIG_HAS_RULES_V6, CONFIG_LIMIT_NEW_KEYS, DEFAULT_RULE_ID,
    LAYOUT_VERSION, MAX_RULES, RULE_SHARED,
};
use serde::{Deserialize, Deserializer, Serialize};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

/// The configuration used when the agent gets no `--config`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/default.toml");

/// Where the configuration in force came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum ConfigSource {
    File(PathBuf),
    EmbeddedDefault,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(path) => write!(f, "{}", path.display()),
            ConfigSource::EmbeddedDefault => f.write_str("embedded default"),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub rules: Vec<toml::Spanned<Rule>>,
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub alerts: Alerts,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// API keys: absent, requests are limited by their source only.
    pub http: Option<HttpSection>,
    #[serde(default)]
    pub plans: Vec<toml::Spanned<Plan>>,
    #[serde(default)]
    pub usage: UsageSection,
    /// Several gateways holding one limit through a Redis; absent: this host counts alone.
    pub fleet: Option<fleet::FleetSection>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Packets per second, per key.
    #[serde(default = "default_rate")]
    pub rate: NonZeroU64,
    /// Bucket depth, packets.
    #[serde(default = "default_burst")]
    pub burst: NonZeroU64,
    #[serde(default = "default_ipv4_prefix", deserialize_with = "ipv4_prefix")]
    pub ipv4_prefix: u8,
    #[serde(default = "default_ipv6_prefix", deserialize_with = "ipv6_prefix")]
    pub ipv6_prefix: u8,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: String,
    #[serde(deserialize_with = "cidr", serialize_with = "display")]
    pub cidr: Prefix,
    pub action: Action,
    pub rate: Option<NonZeroU64>,
    pub burst: Option<NonZeroU64>,
    #[serde(default)]
    pub shared: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// Keys tracked at once; the least recently used are evicted beyond it.
    #[serde(default = "default_max_keys", deserialize_with = "max_keys")]
    pub max_keys: u32,
    /// Keys created per second at most, all sources together; absent: derived from
    /// `max_keys`, `"off"`: no bound. Beyond it the first packet of a new key is dropped and no
    /// key is created, so a flood from ever new (spoofed) sources neither passes on fresh
    /// buckets nor evicts the clients already tracked.
    #[serde(default)]
    pub new_keys_per_sec: NewKeys,
}

/// `[agent] new_keys_per_sec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NewKeys {
    /// Not set: [`NewKeys::DEFAULT_SHARE`] of `max_keys` per second.
    #[default]
    Default,
    /// `"off"`: no bound.
    Off,
    /// This many per second, and as many at once.
    PerSec(NonZeroU64),
}

impl NewKeys {
    /// The default bound is `max_keys` / this per second: a flood of new sources cannot turn
    /// the whole table over in less than this many seconds.
    pub const DEFAULT_SHARE: u32 = 100;

    /// Keys created per second at most, and at once, under `max_keys`; `None`: no bound.
    pub fn rate_and_burst(self, max_keys: u32) -> Option<(u64, u64)> {
        match self {
            NewKeys::Off => None,
            NewKeys::PerSec(rate) => Some((rate.get(), rate.get())),
            NewKeys::Default => {
                let rate = (u64::from(max_keys) / u64::from(Self::DEFAULT_SHARE)).max(1);
                // New clients come in bursts (a balancer failing over, a fleet restarting):
                // a tenth of the table at once — no more, or a flood fills the table in one
                // burst (an LRU map starts evicting before it is quite full).
                let burst = (u64::from(max_keys) / 10).max(1);
                Some((rate, burst))
            }
        }
    }

    /// The bound as the datapath applies it.
    pub fn bound(self, max_keys: u32) -> Option<Limit> {
        self.rate_and_burst(max_keys)
            .map(|(rate, burst)| Limit::new(rate, burst))
    }

    /// Where the bound comes from, as `status` says it.
    pub fn source(self) -> &'static str {
        match self {
            NewKeys::Default => "default",
            NewKeys::Off => "off",
            NewKeys::PerSec(_) => "config",
        }
    }
}

impl<'de> Deserialize<'de> for NewKeys {
    /// A whole number of keys per second, at least 1, or "off".
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NewKeys, D::Error> {
        let value = toml::Value::deserialize(d)?;
        if value.as_str() == Some("off") {
            return Ok(NewKeys::Off);
        }
        value
            .as_integer()
            .and_then(|n| u64::try_from(n).ok())
            .and_then(NonZeroU64::new)
            .map(NewKeys::PerSec)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "new_keys_per_sec must be a whole number of keys per second, at least 1, or \
                     \"off\" for no bound (leave it out for the default, max_keys / {}), not \
                     {value}",
                    NewKeys::DEFAULT_SHARE
                ))
            })
    }
}

impl Serialize for NewKeys {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NewKeys::Default => s.serialize_none(),
            NewKeys::Off => s.serialize_str("off"),
            NewKeys::PerSec(rate) => s.serialize_u64(rate.get()),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    pub webhook: Option<String>,
    /// Percents of a key's quota that each raise one alert per key and window, in increasing
    /// order (`[80, 90, 100]`); absent or empty: no threshold alerts.
    pub thresholds: Option<toml::Spanned<Vec<i64>>>,
}

impl Alerts {
    /// The quota thresholds in force, in percent (checked: 1–100, increasing).
    pub fn thresholds(&self) -> Vec<u8> {
        self.thresholds
            .as_ref()
            .map(|t| t.get_ref().iter().map(|&p| p as u8).collect())
            .unwrap_or_default()
    }
}

/// `[metrics]`: what the Prometheus endpoint exports beyond the totals.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Keys exported one by one at most, per family (those nearest to or over their quota, those
    /// with the most rejections): bounds the series a key label can make. 0: none.
    #[serde(default = "default_top_keys", deserialize_with = "top_keys")]
    pub top_keys: u32,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            top_keys: default_top_keys(),
        }
    }
}

/// `[metrics] top_keys` at most: a few hundred series per family stay cheap to scrape and store.
pub const TOP_KEYS_AT_MOST: u32 = 100;

fn default_top_keys() -> u32 {
    10
}

fn top_keys<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = i64::deserialize(d)?;
    u32::try_from(value)
        .ok()
        .filter(|v| *v <= TOP_KEYS_AT_MOST)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "top_keys must be between 0 (no per-key series) and {TOP_KEYS_AT_MOST}, not {value}"
            ))
        })
}

/// Why `[alerts] thresholds` cannot be used, if so: each a percent of the quota from 1 to 100,
/// in increasing order without repeats.
fn check_thresholds(thresholds: &[i64]) -> Result<(), String> {
    if let Some(bad) = thresholds.iter().find(|p| !(1..=100).contains(*p)) {
        return Err(format!(
            "{bad} is not a percent of the quota from 1 to 100 (such as [80, 90, 100])"
        ));
    }
    if let Some(pair) = thresholds.windows(2).find(|pair| pair[0] >= pair[1]) {
        return Err(format!(
            "{} after {}: give them in increasing order, each once (such as [80, 90, 100])",
            pair[1], pair[0]
        ));
    }
    Ok(())
}

fn default_rate() -> NonZeroU64 {
    NonZeroU64::new(1000).unwrap()
}
fn default_burst() -> NonZeroU64 {
    NonZeroU64::new(2000).unwrap()
}
fn default_ipv4_prefix() -> u8 {
    32
}
fn default_ipv6_prefix() -> u8 {
    64
}
fn default_max_keys() -> u32 {
    1_000_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: default_rate(),
            burst: default_burst(),
            ipv4_prefix: default_ipv4_prefix(),
            ipv6_prefix: default_ipv6_prefix(),
            dry_run: false,
        }
    }
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            max_keys: default_max_keys(),
            new_keys_per_sec: NewKeys::Default,
        }
    }
}

fn prefix_in_range<'de, D: Deserializer<'de>>(d: D, max: u8, what: &str) -> Result<u8, D::Error> {
    let value = i64::deserialize(d)?;
    u8::try_from(value)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("{what} must be between 0 and {max}, not {value}"))
        })
}

fn ipv4_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_in_range(d, 32, "ipv4_prefix")
}

fn ipv6_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    prefix_in_range(d, 128, "ipv6_prefix")
}

fn max_keys<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = i64::deserialize(d)?;
    u32::try_from(value)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "max_keys must be between 1 and {}, not {value}",
                u32::MAX
            ))
        })
}

fn cidr<'de, D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn display<S: serde::Serializer, T: std::fmt::Display>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Reads and validates the file at `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        match path {
            None => Ok((
                Config::parse(EMBEDDED_DEFAULT, "(embedded default)")?,
                ConfigSource::EmbeddedDefault,
            )),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let config = Config::parse(&text, &path.display().to_string())?;
                Ok((config, ConfigSource::File(path.to_owned())))
            }
        }
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Invalid {
            origin: origin.to_owned(),
            message: describe_toml_error(text, &err),
        })?;
        config.check(text, origin)?;
        Ok(config)
    }

    /// Checks what the types alone cannot: rules that contradict themselves or each other, and
    /// what this build parses but does not enforce yet (refused rather than ignored).
    fn check(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let invalid = |line: usize, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            message: format!("line {line}: {message}"),
        };
        if let Err(why) = check_limit(self.limits.rate.get(), self.limits.burst.get()) {
            return Err(invalid(line_of(text, "burst"), format!("[limits]: {why}")));
        }
        let mut seen: Vec<(&Rule, usize)> = Vec::new();
        for spanned in &self.rules {
            let rule = spanned.get_ref();
            let line = line_at(text, spanned.span().start);
            if rule.name.trim().is_empty() {
                return Err(invalid(line, "a rule needs a name".into()));
            }
            if let (Some(rate), Some(burst)) = (rule.rate, rule.burst) {
                if let Err(why) = check_limit(rate.get(), burst.get()) {
                    return Err(invalid(line, format!("rule '{}': {why}", rule.name)));
                }
            }
            match rule.action {
                Action::Limit if rule.rate.is_none() || rule.burst.is_none() => {
                    return Err(invalid(
                        line,
                        format!(
                            "rule '{}': action = \"limit\" needs rate and burst",
                            rule.name
                        ),
                    ))
                }
                Action::Allow | Action::Deny
                    if rule.rate.is_some() || rule.burst.is_some() || rule.shared =>
                {
                    return Err(invalid(
                        line,
                        format!(
                            "rule '{}': rate, burst and shared go only with action = \"limit\"",
                            rule.name
                        ),
                    ))
                }
                _ => {}
            }
            for (other, other_line) in &seen {
                if other.name == rule.name {
                    return Err(invalid(
                        line,
                        format!(
                            "the rule name '{}' is used twice (lines {other_line} and {line})",
                            rule.name
                        ),
                    ));
                }
                if other.cidr == rule.cidr {
                    return Err(invalid(
                        line,
                        format!(
                            "rules '{}' and '{}' both have cidr {}",
                            other.name, rule.name, rule.cidr
                        ),
                    ));
                }
                if rule_id(&other.name) == rule_id(&rule.name) {
                    return Err(invalid(
                        line,
                        format!(
                            "the rule names '{}' and '{}' hash alike; rename one",
                            other.name, rule.name
                        ),
                    ));
                }
            }
            seen.push((rule, line));
        }
        for (family, v4) in [("IPv4", true), ("IPv6", false)] {
            let count = self
                .rules
                .iter()
                .filter(|r| r.get_ref().cidr.is_ipv4() == v4)
                .count();
            if count > MAX_RULES as usize {
                return Err(invalid(
                    line_of(text, "[[rules]]"),
                    format!("{count} {family} rules: the datapath holds at most {MAX_RULES}"),
                ));
            }
        }
        if let Some(http) = &self.http {
            if let Err(why) = http.check() {
                return Err(invalid(line_of(text, "[http]"), format!("[http] {why}")));
            }
        }
        for (i, spanned) in self.plans.iter().enumerate() {
            let plan = spanned.get_ref();
            let line = line_at(text, spanned.span().start);
            if self.http.is_none() {
                return Err(invalid(
                    line,
                    "[[plans]] are limits for API keys: they need [http] (its ports and key \
                     headers)"
                        .to_owned(),
                ));
            }
            plan.check().map_err(|why| invalid(line, why))?;
            if self.plans[..i]
                .iter()
                .any(|p| p.get_ref().name == plan.name)
            {
                return Err(invalid(
                    line,
                    format!("the plan name '{}' is used twice", plan.name),
                ));
            }
        }
        if self.plans.len() > http::PLANS_AT_MOST {
            return Err(invalid(
                line_of(text, "[[plans]]"),
                format!(
                    "{} plans: at most {}",
                    self.plans.len(),
                    http::PLANS_AT_MOST
                ),
            ));
        }
        if let Some(fleet) = &self.fleet {
            if let Err((key, why)) = fleet.check() {
                return Err(invalid(line_of(text, key), format!("[fleet] {why}")));
            }
        }
        if let Some(url) = &self.alerts.webhook {
            if let Err(why) = WebhookUrl::parse(url) {
                return Err(invalid(
                    line_of(text, "webhook"),
                    format!("[alerts] webhook: {why}"),
                ));
            }
        }
        if let Some(thresholds) = &self.alerts.thresholds {
            if let Err(why) = check_thresholds(thresholds.get_ref()) {
                return Err(invalid(
                    line_at(text, thresholds.span().start),
                    format!("[alerts] thresholds: {why}"),
                ));
            }
        }
        Ok(())
    }

    /// The rules as the datapath and the API use them.
    pub fn resolved_rules(&self) -> Vec<ResolvedRule> {
        self.rules
            .iter()
            .map(|spanned| {
                let rule = spanned.get_ref();
                let (rate, burst) = match (rule.rate, rule.burst) {
                    (Some(rate), Some(burst)) => (rate.get(), burst.get()),
                    _ => (self.limits.rate.get(), self.limits.burst.get()),
                };
                ResolvedRule {
                    id: rule_id(&rule.name),
                    name: rule.name.clone(),
                    cidr: rule.cidr,
                    action: rule.action,
                    limit: Limit::new(rate, burst),
                    rate,
                    burst,
                    shared: rule.shared,
                }
            })
            .collect()
    }

    /// The plan named `name` and its slot (1 …; 0 is `[http]`'s default), if configured.
    pub fn plan(&self, name: &str) -> Option<(u32, &Plan)> {
        self.plans
            .iter()
            .map(toml::Spanned::get_ref)
            .enumerate()
            .find(|(_, p)| p.name == name)
            .map(|(i, p)| (i as u32 + 1, p))
    }

    /// The plan slots that have a quota, as bits (`HttpConfig::quota_plans`): 0 for `[http]`'s,
    /// a plan's slot for it.
    pub fn quota_plans(&self) -> u64 {
        let http = self
            .http
            .as_ref()
            .is_some_and(|h| matches!(h.quota(), Ok(Some(_))));
        let plans = self.plans.iter().map(toml::Spanned::get_ref);
        plans
            .enumerate()
            .filter(|(_, p)| matches!(p.quota(), Ok(Some(_))))
            .fold(u64::from(http), |bits, (i, _)| bits | 1 << (i + 1))
    }

    /// The default limit as the datapath applies it.
    pub fn default_limit(&self) -> Limit {
        Limit::new(self.limits.rate.get(), self.limits.burst.get())
    }

    /// `[limits]` as a rule: what sources without a rule get (id 0, "default").
    pub fn default_rule(&self) -> ResolvedRule {
        ResolvedRule {
            id: DEFAULT_RULE_ID,
            name: "default".to_owned(),
            cidr: "0.0.0.0/0".parse().expect("a valid CIDR"),
            action: Action::Limit,
            limit: self.default_limit(),
            rate: self.limits.rate.get(),
            burst: self.limits.burst.get(),
            shared: false,
        }
    }

    /// What the datapath is told.
    pub fn datapath(&self) -> DatapathConfig {
        let rules = self.resolved_rules();
        let mut flags = 0;
        if self.limits.dry_run {
            flags |= CONFIG_DRY_RUN;
        }
        if rules.iter().any(|r| r.cidr.is_ipv4()) {
            flags |= CONFIG_HAS_RULES_V4;
        }
        if rules.iter().any(|r| !r.cidr.is_ipv4()) {
            flags |= CONFIG_HAS_RULES_V6;
        }
        let new_key_limit = match self.agent.new_keys_per_sec.bound(self.agent.max_keys) {
            Some(limit) => {
                flags |= CONFIG_LIMIT_NEW_KEYS;
                limit
            }
            None => Limit::new(1, 1),
        };
        DatapathConfig {
            default_limit: self.default_limit(),
            new_key_limit,
            ipv4_prefix: self.limits.ipv4_prefix as u32,
            ipv6_prefix: self.limits.ipv6_prefix as u32,
            flags,
            valid: LAYOUT_VERSION,
            http: limiter_common::maps::HttpConfig::OFF,
        }
    }
}

/// Refuses a burst the datapath could not represent: the bucket holds `burst / rate` seconds
/// of credit in a 64-bit count of nanoseconds (about 584 years).
pub fn check_limit(rate: u64, burst: u64) -> Result<(), String> {
    // One packet per nanosecond is the finest interval the bucket represents.
    if rate > NANOS_PER_SEC {
        return Err(format!(
            "rate {rate}/s is more than the bucket can represent (at most {NANOS_PER_SEC}/s)"
        ));
    }
    let limit = Limit::new(rate, burst);
    if limit.burst() != burst {
        return Err(format!(
            "burst {burst} at rate {rate}/s is more than the bucket can hold (at most {})",
            limit.burst()
        ));
    }
    Ok(())
}

/// The rule of `rules` with the longest CIDR containing `prefix`: what an LPM trie answers.
pub fn longest_match(rules: &[ResolvedRule], prefix: &Prefix) -> Option<ResolvedRule> {
    rules
        .iter()
        .filter(|r| r.cidr.contains(prefix))
        .max_by_key(|r| r.cidr.prefix_len())
        .cloned()
}

/// A rule ready for the datapath: its stable id, action and limit.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedRule {
    pub id: u32,
    pub name: String,
    pub cidr: Prefix,
    pub action: Action,
    /// The rule's own limit (`[limits]` for allow and deny, where it does not apply), as the
    /// datapath enforces it (the interval rounded up to whole nanoseconds).
    pub limit: Limit,
    /// The rate and burst as configured: what the API shows (`rate = 7` is enforced with an
    /// interval of 142 857 143 ns, which is 6.99…/s, and shown as 7).
    pub rate: u64,
    pub burst: u64,
    pub shared: bool,
}

impl ResolvedRule {
    pub fn action_code(&self) -> u32 {
        match self.action {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
            Action::Limit => ACTION_LIMIT,
        }
    }

    /// The rule as the datapath's tries hold it.
    pub fn entry(&self) -> RuleEntry {
        RuleEntry {
            id: self.id,
            action: self.action_code(),
            flags: if self.shared { RULE_SHARED } else { 0 },
            prefix_len: u32::from(self.cidr.prefix_len()),
            limit: self.limit,
        }
    }
}

/// A rule's id: a hash of its name, so that a bucket keeps its rule across reloads that reorder
/// or edit rules (the id is part of the bucket key). 0 is `[limits]`.
pub fn rule_id(name: &str) -> u32 {
    // FNV-1a, 32 bits.
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    if hash == DEFAULT_RULE_ID {
        1
    } else {
        hash
    }
}

/// "line N, column M: what", from toml's error and its span.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            let source_line = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line}, column {column}: {message}\n    {line} | {source_line}")
        }
        None => message.to_owned(),
    }
}

/// The 1-based line of the first occurrence of `needle`, or 1.
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle).map_or(1, |at| line_at(text, at))
}

/// The 1-based line of byte offset `at`.
fn line_at(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        Config::parse(text, "test.toml").unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_is_valid() {
        let (config, source) = Config::load(None).unwrap();
        assert_eq!(source, ConfigSource::EmbeddedDefault);
        assert_eq!(config.limits.rate.get(), 1000);
        assert_eq!(config.limits.burst.get(), 2000);
        assert_eq!(config.agent.max_keys, 1_000_000);
    }

    #[test]
    fn the_installed_example_is_valid_and_matches_the_defaults() {
        let example = include_str!("../../../../dist/limiter.toml");
        let config = Config::parse(example, "dist/limiter.toml").unwrap();
        assert_eq!(config, Config::load(None).unwrap().0);
    }

    #[test]
    fn usage_keys_are_checked() {
        assert_eq!(Config::load(None).unwrap().0.usage.keys, 100);
        let config = Config::parse("[usage]\nkeys = 50\n", "test.toml").unwrap();
        assert_eq!(config.usage.keys, 50);
        for bad in ["0", "-1", "100001", "\"many\""] {
            let message = invalid(&format!("[limits]\nrate = 5\n\n[usage]\nkeys = {bad}\n"));
            assert!(message.contains("line 5"), "{bad}: {message}");
            assert!(
                message.contains("between 1 and 100000") || message.contains("expected i64"),
                "{bad}: {message}"
            );
        }
        assert!(invalid("[usage]\nkeep = 5\n").contains("unknown field `keep`"));
    }

    #[test]
    fn http_and_plans_are_checked() {
        let ok =
            "[http]\nports = [80, 8080]\n\n[[plans]]\nname = \"pro\"\nrate = 100\nburst = 200\n";
        let config = Config::parse(ok, "test.toml").unwrap();
        let http = config.http.as_ref().unwrap();
        assert_eq!(http.ports(), [80, 8080]);
        assert_eq!(http.key_headers, ["x-api-key", "authorization"]);
        assert_eq!((http.rate.get(), http.burst.get()), (10, 20));
        assert_eq!(config.plan("pro").map(|(slot, _)| slot), Some(1));
        let cases = [
            ("[http]\nports = [0]\n", "line 1", "not a TCP port"),
            ("[http]\nports = [70000]\n", "line 1", "not a TCP port"),
            ("[http]\nports = []\n", "line 1", "1 to 8 TCP ports"),
            ("[http]\nports = [80, 80]\n", "line 1", "twice"),
            ("[http]\nrate = 5\n", "line 1", "missing field `ports`"),
            (
                "[http]\nports = [80]\nkey_headers = [\"x api key\"]\n",
                "line 1",
                "letters, digits",
            ),
            (
                "[http]\nports = [80]\nkey_headers = [\"a\", \"b\", \"c\"]\n",
                "line 1",
                "one or two key headers",
            ),
            ("[http]\nports = [80]\nburst = 0\n", "line 3", "nonzero"),
            ("[http]\nports = [80]\nquota = 5\n", "line 1", "quota needs a period"),
            (
                "[http]\nports = [80]\nperiod = \"day\"\n",
                "line 1",
                "period without a quota",
            ),
            (
                "[http]\nports = [80]\nquota = 5\nperiod = \"week\"\n",
                "line 1",
                "\"minute\", \"hour\", \"day\" or \"month\"",
            ),
            (
                "[http]\nports = [80]\nquota = 0\nperiod = \"day\"\n",
                "line 1",
                "1 to 4294967295 requests a day",
            ),
            (
                "[http]\nports = [80]\nquota = 4294967296\nperiod = \"month\"\n",
                "line 1",
                "1 to 4294967295 requests a month",
            ),
            (
                "[http]\nports = [80]\n[[plans]]\nname = \"p\"\nrate = 1\nburst = 1\nquota = -1\nperiod = \"hour\"\n",
                "line 3",
                "plan 'p': quota -1",
            ),
            (
                "[[plans]]\nname = \"pro\"\nrate = 1\nburst = 1\n",
                "line 1",
                "need [http]",
            ),
            (
                "[http]\nports = [80]\n[[plans]]\nname = \"p\"\nrate = 1\nburst = 1\n[[plans]]\nname = \"p\"\nrate = 2\nburst = 2\n",
                "line 7",
                "used twice",
            ),
            (
                "[http]\nports = [80]\n[[plans]]\nname = \"no spaces\"\nrate = 1\nburst = 1\n",
                "line 3",
                "plan name",
            ),
            (
                "[http]\nports = [80]\n[[plans]]\nname = \"default\"\nrate = 1\nburst = 1\n",
                "line 3",
                "[http] default",
            ),
        ];
        for (text, line, what) in cases {
            let err = invalid(text);
            assert!(err.contains(line), "expected {line} in: {err}");
            assert!(err.contains(what), "expected {what} in: {err}");
        }
    }

    #[test]
    fn bad_configs_are_refused_with_file_and_line() {
        let cases = [
            (
                "[limits]\nrate = 10\nburts = 5\n",
                "line 3",
                "unknown field `burts`",
            ),
            ("[limits]\nburst = 0\n", "line 2", "nonzero"),
            ("[limits]\nrate = \"fast\"\n", "line 2", "invalid type"),
            ("[limits]\nipv4_prefix = 33\n", "line 2", "between 0 and 32"),
            (
                "[limits]\nipv6_prefix = -1\n",
                "line 2",
                "between 0 and 128",
            ),
            ("[agent]\nmax_keys = 0\n", "line 2", "max_keys"),
            ("[limits\nrate = 1\n", "line 1", ""),
            ("[nonsense]\n", "line 1", "unknown field `nonsense`"),
            (
                "[[rules]]\nname = \"x\"\ncidr = \"198.18.0.0/33\"\naction = \"allow\"\n",
                "line 3",
                "198.18.1.0/24",
            ),
            (
                "[[rules]]\nname = \"x\"\ncidr = \"198.18.0.0/16\"\n",
                "line 1",
                "missing field `action`",
            ),
            (
                "[[rules]]\nname = \"x\"\ncidr = \"198.18.0.0/16\"\naction = \"block\"\n",
                "line 4",
                "unknown variant",
            ),
        ];
        for (text, line, what) in cases {
            let err = invalid(text);
            assert!(err.contains("test.toml"), "{err}");
            assert!(err.contains(line), "expected {line} in: {err}");
            assert!(err.contains(what), "expected {what} in: {err}");
        }
    }

    #[test]
    fn rules_that_contradict_themselves_or_each_other_are_refused() {
        let rule = |name: &str, cidr: &str, rest: &str| {
            format!("[[rules]]\nname = \"{name}\"\ncidr = \"{cidr}\"\n{rest}\n")
        };
        let cases = [
            (
                rule("a", "198.18.0.0/16", "action = \"limit\""),
                "line 1",
                "needs rate and burst",
            ),
            (
                rule("a", "198.18.0.0/16", "action = \"allow\"\nrate = 5"),
                "line 1",
                "only with",
            ),
            (
                rule("a", "198.18.0.0/16", "action = \"deny\"")
                    + &rule("a", "198.18.1.0/24", "action = \"deny\""),
                "line 5",
                "used twice (lines 1 and 5)",
            ),
            (
                rule("a", "198.18.0.0/16", "action = \"deny\"")
                    + &rule("b", "198.18.0.0/16", "action = \"allow\""),
                "line 5",
                "both have cidr",
            ),
            (
                "[alerts]\nwebhook = \"https://127.0.0.1:9/x\"\n".to_owned(),
                "line 2",
                "webhook: \"https://127.0.0.1:9/…\": https is not supported",
            ),
        ];
        for (text, line, what) in cases {
            let err = invalid(&text);
            assert!(
                err.contains(line) && err.contains(what),
                "expected {line} and {what} in: {err}"
            );
        }
    }

    #[test]
    fn an_http_webhook_is_accepted_and_anything_else_refused_with_its_line() {
        let config = Config::parse(
            "[alerts]\nwebhook = \"http://127.0.0.1:9000/limiter\"\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            config.alerts.webhook.as_deref(),
            Some("http://127.0.0.1:9000/limiter")
        );
        let err = invalid("[limits]\nrate = 5\n\n[alerts]\nwebhook = \"127.0.0.1:9000\"\n");
        assert!(err.contains("line 5") && err.contains("http://"), "{err}");
    }

    #[test]
    fn quota_thresholds_are_percents_in_increasing_order() {
        let config = Config::parse("[alerts]\nthresholds = [50, 80, 100]\n", "t.toml").unwrap();
        assert_eq!(config.alerts.thresholds(), [50, 80, 100]);
        assert!(Config::load(None).unwrap().0.alerts.thresholds().is_empty());
        let empty = Config::parse("[alerts]\nthresholds = []\n", "t.toml").unwrap();
        assert!(empty.alerts.thresholds().is_empty());
        let cases = [
            ("[90, 80]", "80 after 90: give them in increasing order"),
            ("[80, 80, 90]", "80 after 80"),
            ("[0, 50]", "0 is not a percent of the quota from 1 to 100"),
            ("[80, 101]", "101 is not a percent"),
            ("[-5]", "-5 is not a percent"),
            ("[\"80\"]", "invalid type"),
        ];
        for (value, what) in cases {
            let err = invalid(&format!(
                "[limits]\nrate = 10\n\n[alerts]\nthresholds = {value}\n"
            ));
            assert!(
                err.contains("test.toml") && err.contains("line 5") && err.contains(what),
                "{value}: expected line 5 and {what:?} in: {err}"
            );
        }
    }

    #[test]
    fn top_keys_is_bounded() {
        assert_eq!(Config::load(None).unwrap().0.metrics.top_keys, 10);
        let config = Config::parse("[metrics]\ntop_keys = 0\n", "t.toml").unwrap();
        assert_eq!(config.metrics.top_keys, 0);
        for value in ["-1", "101", "\"ten\""] {
            let err = invalid(&format!("[metrics]\ntop_keys = {value}\n"));
            assert!(err.contains("line 2"), "{value}: {err}");
        }
        let err = invalid("[metrics]\ntop_keys = 1000\n");
        assert!(
            err.contains("between 0 (no per-key series) and 100"),
            "{err}"
        );
        let err = invalid("[metrics]\ntop_key = 5\n");
        assert!(err.contains("unknown field `top_key`"), "{err}");
    }

    #[test]
    fn new_keys_are_bounded_by_default_and_the_bound_can_be_set_or_switched_off() {
        // Absent: a hundredth of max_keys per second, a tenth of it at once.
        let default = Config::parse("[agent]\nmax_keys = 1000000\n", "t.toml").unwrap();
        assert_eq!(default.agent.new_keys_per_sec, NewKeys::Default);
        let datapath = default.datapath();
        assert_ne!(datapath.flags & CONFIG_LIMIT_NEW_KEYS, 0);
        assert_eq!(datapath.new_key_limit, Limit::new(10_000, 100_000));
        let small = Config::parse("[agent]\nmax_keys = 1024\n", "t.toml").unwrap();
        assert_eq!(small.datapath().new_key_limit, Limit::new(10, 102));

        let off = Config::parse("[agent]\nnew_keys_per_sec = \"off\"\n", "t.toml").unwrap();
        assert_eq!(off.agent.new_keys_per_sec, NewKeys::Off);
        assert_eq!(off.datapath().flags & CONFIG_LIMIT_NEW_KEYS, 0);

        let config = Config::parse("[agent]\nnew_keys_per_sec = 50\n", "t.toml").unwrap();
        assert_eq!(
            config.agent.new_keys_per_sec,
            NewKeys::PerSec(NonZeroU64::new(50).unwrap())
        );
        let datapath = config.datapath();
        assert_ne!(datapath.flags & CONFIG_LIMIT_NEW_KEYS, 0);
        assert_eq!(datapath.new_key_limit, Limit::new(50, 50));
        // The other flags and limits are unchanged by it.
        assert_eq!(datapath.default_limit, off.datapath().default_limit);
        assert_eq!(
            datapath.flags & !CONFIG_LIMIT_NEW_KEYS,
            off.datapath().flags
        );
    }

    #[test]
    fn a_new_keys_per_sec_that_is_not_a_positive_whole_number_is_refused_with_its_line() {
        for value in ["0", "-5", "2.5", "\"50\"", "true"] {
            let err = invalid(&format!(
                "[limits]\nrate = 10\n\n[agent]\nnew_keys_per_sec = {value}\n"
            ));
            assert!(
                err.contains("test.toml")
                    && err.contains("line 5")
                    && err.contains("new_keys_per_sec must be a whole number")
                    && err.contains("at least 1"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn a_burst_the_bucket_cannot_hold_is_refused() {
        let err = invalid("[limits]\nrate = 1\nburst = 100000000000\n");
        assert!(
            err.contains("line 3") && err.contains("more than the bucket can hold"),
            "{err}"
        );
        assert!(check_limit(1_000_000, 1_000_000_000).is_ok());
    }

    #[test]
    fn rules_resolve_with_stable_ids_and_longest_match() {
        let text = "[limits]\ndry_run = true\n\n[[rules]]\nname = \"office\"\ncidr = \"198.18.7.0/24\"\naction = \"allow\"\n\n\
                    [[rules]]\nname = \"tenant\"\ncidr = \"2001:2::/48\"\naction = \"limit\"\nrate = 50\nburst = 100\nshared = true\n\n\
                    [[rules]]\nname = \"lab\"\ncidr = \"198.18.0.0/16\"\naction = \"deny\"\n";
        let config = Config::parse(text, "t.toml").unwrap();
        let rules = config.resolved_rules();
        assert_eq!(rules[0].id, rule_id("office"));
        assert_ne!(rules[0].id, DEFAULT_RULE_ID);
        assert_eq!(rules[1].limit, Limit::new(50, 100));
        assert!(rules[1].shared);
        let in_office: Prefix = "198.18.7.9".parse().unwrap();
        let rule_for = |p: &str| longest_match(&rules, &p.parse().unwrap()).map(|r| r.name);
        assert_eq!(longest_match(&rules, &in_office).unwrap().name, "office");
        assert_eq!(rule_for("198.18.9.9").as_deref(), Some("lab"));
        assert!(rule_for("198.19.0.1").is_none());
        let datapath = config.datapath();
        assert_eq!(
            datapath.flags,
            CONFIG_DRY_RUN | CONFIG_HAS_RULES_V4 | CONFIG_HAS_RULES_V6 | CONFIG_LIMIT_NEW_KEYS
        );
    }
}
