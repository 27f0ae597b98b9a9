//! `[http]` and `[[plans]]`: API keys, the ports their requests come to, and their limits.

use super::check_limit;
use limiter_common::bucket::Limit;
use limiter_common::http::{Answer, KeyHeaders, DEFAULT_POLICY};
use limiter_common::maps::{HttpConfig, PlanQuota, HTTP_KEEP_ALIVE, MAX_HTTP_PORTS, MAX_PLANS};
use limiter_common::quota::{Period, SECS_PER_DAY};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU64;
use std::path::PathBuf;

/// `[http]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// TCP ports where cleartext HTTP/1.x requests reach the gateway.
    pub ports: Vec<i64>,
    /// The headers that carry the key, in order of precedence (`Authorization: Bearer T`
    /// gives T).
    #[serde(default = "default_key_headers")]
    pub key_headers: Vec<String>,
    /// Requests per second per API key without a plan.
    #[serde(default = "default_rate")]
    pub rate: NonZeroU64,
    #[serde(default = "default_burst")]
    pub burst: NonZeroU64,
    /// A file holding the token hash's secret (32 hex digits), for several hosts that must
    /// agree on keys; without it the agent makes one in its state directory.
    pub secret_file: Option<PathBuf>,
    /// A 429 keeps the client's connection open (`Connection: keep-alive`) instead of closing
    /// it: a client that goes on sending costs the gateway no new connection per rejection.
    #[serde(default)]
    pub keep_alive: bool,
    /// Requests per `period` per API key without a plan (calendar windows in UTC).
    pub quota: Option<i64>,
    pub period: Option<String>,
}

/// `[[plans]]`: a limit registered keys can be put on.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    pub rate: NonZeroU64,
    pub burst: NonZeroU64,
    /// Requests per `period` per key of the plan (calendar windows in UTC).
    pub quota: Option<i64>,
    pub period: Option<String>,
}

/// A quota as configured: so many requests per window of a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: u32,
    pub period: Period,
}

impl Quota {
    /// `quota` and `period` as given (both or neither); why not, if they cannot be enforced.
    fn of(quota: Option<i64>, period: Option<&str>) -> Result<Option<Quota>, String> {
        match (quota, period) {
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err("quota needs a period: \"minute\", \"hour\", \"day\" or \"month\"".into())
            }
            (None, Some(_)) => Err("period without a quota (requests per period)".into()),
            (Some(limit), Some(period)) => {
                let period = Period::from_name(period).ok_or_else(|| {
                    format!(
                        "period \"{period}\": \"minute\", \"hour\", \"day\" or \"month\" \
                         (calendar windows in UTC)"
                    )
                })?;
                if !(1..=i64::from(u32::MAX)).contains(&limit) {
                    return Err(format!(
                        "quota {limit}: 1 to {} requests a {}",
                        u32::MAX,
                        period.name()
                    ));
                }
                Ok(Some(Quota {
                    limit: limit as u32,
                    period,
                }))
            }
        }
    }

    /// What the datapath applies.
    pub fn datapath(&self) -> PlanQuota {
        PlanQuota {
            quota: self.limit,
            period: self.period.code(),
        }
    }

    /// The window's length as the 429's `RateLimit-Policy` gives it (`w`): a month as 30 days.
    pub fn window_secs(&self) -> u64 {
        self.period.fixed_secs().unwrap_or(30 * SECS_PER_DAY)
    }
}

fn default_key_headers() -> Vec<String> {
    vec!["x-api-key".to_owned(), "authorization".to_owned()]
}
fn default_rate() -> NonZeroU64 {
    NonZeroU64::new(10).unwrap()
}
fn default_burst() -> NonZeroU64 {
    NonZeroU64::new(20).unwrap()
}

/// A plan's name: what `limiter keys add --plan` takes and what the 429's `RateLimit-Policy`
/// names (so a short token).
pub fn check_plan_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "plan name '{name}': 1 to 32 letters, digits, '-', '_' or '.'"
        ));
    }
    if name == DEFAULT_POLICY {
        return Err(format!(
            "plan name '{name}' is the [http] default's; choose another"
        ));
    }
    Ok(())
}

impl HttpSection {
    /// Why it cannot be enforced, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.ports.is_empty() || self.ports.len() > MAX_HTTP_PORTS {
            return Err(format!(
                "ports: 1 to {MAX_HTTP_PORTS} TCP ports, such as [80, 8080]"
            ));
        }
        for (i, port) in self.ports.iter().enumerate() {
            if !(1..=65535).contains(port) {
                return Err(format!("ports: {port} is not a TCP port (1 to 65535)"));
            }
            if self.ports[..i].contains(port) {
                return Err(format!("ports: {port} is given twice"));
            }
        }
        let names: Vec<&[u8]> = self.key_headers.iter().map(|h| h.as_bytes()).collect();
        KeyHeaders::new(&names).map_err(|why| {
            format!(
                "key_headers {:?}: {why} (such as [\"x-api-key\", \"authorization\"])",
                self.key_headers
            )
        })?;
        check_limit(self.rate.get(), self.burst.get())?;
        self.quota().map(|_| ())
    }

    /// The quota of keys without a plan.
    pub fn quota(&self) -> Result<Option<Quota>, String> {
        Quota::of(self.quota, self.period.as_deref())
    }

    pub fn ports(&self) -> Vec<u16> {
        self.ports.iter().map(|p| *p as u16).collect()
    }

    /// What the datapath applies, hashing tokens with `secret`.
    pub fn datapath(&self, secret: [u64; 2]) -> HttpConfig {
        let names: Vec<&[u8]> = self.key_headers.iter().map(|h| h.as_bytes()).collect();
        let mut http = HttpConfig::OFF;
        http.key_headers = KeyHeaders::new(&names).expect("checked on load");
        http.default_limit = Limit::new(self.rate.get(), self.burst.get());
        http.secret = secret;
        for (slot, port) in http.ports.iter_mut().zip(self.ports()) {
            *slot = port;
        }
        http.port_count = self.ports.len() as u32;
        if self.keep_alive {
            http.flags |= HTTP_KEEP_ALIVE;
        }
        http
    }

    /// The default's 429 (plan slot 0).
    pub fn answer(&self) -> Answer {
        Answer::render(
            DEFAULT_POLICY,
            self.rate.get(),
            self.burst.get(),
            self.keep_alive,
        )
    }

    /// The default's 429 for its quota, if it has one.
    pub fn quota_answer(&self) -> Option<Answer> {
        let quota = self.quota().ok().flatten()?;
        Some(Answer::render_quota(
            DEFAULT_POLICY,
            u64::from(quota.limit),
            quota.window_secs(),
            self.keep_alive,
        ))
    }
}

impl Plan {
    pub fn check(&self) -> Result<(), String> {
        check_plan_name(&self.name)?;
        check_limit(self.rate.get(), self.burst.get())
            .and_then(|()| self.quota().map(|_| ()))
            .map_err(|why| format!("plan '{}': {why}", self.name))
    }

    pub fn quota(&self) -> Result<Option<Quota>, String> {
        Quota::of(self.quota, self.period.as_deref())
    }

    /// The plan's 429 for its quota, if it has one.
    pub fn quota_answer(&self, keep_alive: bool) -> Option<Answer> {
        let quota = self.quota().ok().flatten()?;
        Some(Answer::render_quota(
            &self.name,
            u64::from(quota.limit),
            quota.window_secs(),
            keep_alive,
        ))
    }

    pub fn answer(&self, keep_alive: bool) -> Answer {
        Answer::render(&self.name, self.rate.get(), self.burst.get(), keep_alive)
    }
}

/// Plans at most.
pub const PLANS_AT_MOST: usize = MAX_PLANS as usize;
