//! Runtime overrides for incident response (`limiter allow|deny|limit CIDR [--ttl]`): applied at
//! once above the configured rules, kept across agent restarts in a state file written
//! atomically, and lapsing by themselves when they have a TTL.

use super::config::{check_limit, rule_id, Action, ResolvedRule};
use anyhow::Context;
use limiter_common::bucket::Limit;
use limiter_common::key::Prefix;
use limiter_common::maps::MAX_RULES;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `--state-dir` unless given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/limiter";
const STATE_FILE: &str = "overrides.json";

/// One override as stored and as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Override {
    #[serde(with = "prefix_text")]
    pub cidr: Prefix,
    pub action: Action,
    /// With `action = "limit"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Milliseconds since the Unix epoch when it lapses; none: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

mod prefix_text {
    use limiter_common::key::Prefix;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(prefix: &Prefix, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(prefix)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Override {
    /// The rule name keys under it show: "override 198.18.0.0/24".
    pub fn name(&self) -> String {
        format!("override {}", self.cidr)
    }

    /// The override as the datapath applies it; `default` (`[limits]`) stands in for allow
    /// and deny.
    pub fn resolved(&self, default: &ResolvedRule) -> ResolvedRule {
        let (rate, burst) = match (self.rate, self.burst) {
            (Some(rate), Some(burst)) => (rate, burst),
            _ => (default.rate, default.burst),
        };
        ResolvedRule {
            id: rule_id(&self.name()),
            name: self.name(),
            cidr: self.cidr,
            action: self.action,
            limit: Limit::new(rate, burst),
            rate,
            burst,
            shared: false,
        }
    }

    /// Why the override cannot be enforced as it is, if it cannot (a state file edited by hand).
    pub fn check(&self) -> Result<(), String> {
        match (self.action, self.rate, self.burst) {
            (Action::Limit, Some(rate), Some(burst)) if rate > 0 && burst > 0 => {
                check_limit(rate, burst)
            }
            (Action::Limit, ..) => Err("a limit needs rate and burst, both at least 1".to_owned()),
            (_, None, None) => Ok(()),
            (action, ..) => Err(format!("rate and burst go only with a limit, not {action}")),
        }
    }

    /// Milliseconds left before it lapses, if it has a TTL.
    pub fn expires_in_ms(&self, now_ms: u64) -> Option<u64> {
        self.expires_at_ms.map(|at| at.saturating_sub(now_ms))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The overrides in force and their state file.
pub struct OverrideStore {
    path: PathBuf,
    items: Vec<Override>,
    /// The file lags behind `items` (a save after overrides lapsed failed).
    pub unsaved: bool,
}

impl OverrideStore {
    /// Reads `<state_dir>/overrides.json` (none yet: no overrides), dropping lapsed ones. A file
    /// the datapath could not enforce as written is refused whole, naming the entry.
    pub fn load(state_dir: &Path) -> anyhow::Result<OverrideStore> {
        let path = state_dir.join(STATE_FILE);
        let invalid = |why: String| {
            anyhow::anyhow!(
                "{} is not a valid overrides file: {why}; fix or remove it (its overrides are \
                 lost then)",
                path.display()
            )
        };
        let items: Vec<Override> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| invalid(err.to_string()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        for item in &items {
            item.check()
                .map_err(|why| invalid(format!("the override of {}: {why}", item.cidr)))?;
        }
        let mut store = OverrideStore {
            path: path.clone(),
            items: Vec::new(),
            unsaved: false,
        };
        for item in items {
            store.upsert(item);
        }
        store.check_capacity().map_err(invalid)?;
        store.expire(now_ms());
        Ok(store)
    }

    /// Refuses more overrides of a family than the datapath's trie holds.
    pub fn check_capacity(&self) -> Result<(), String> {
        for (family, v4) in [("IPv4", true), ("IPv6", false)] {
            let count = self.items.iter().filter(|o| o.cidr.is_ipv4() == v4).count();
            if count > MAX_RULES as usize {
                return Err(format!(
                    "{count} {family} overrides: the datapath holds at most {MAX_RULES}; remove \
                     some (`limiter overrides rm`) or cover them with a wider CIDR"
                ));
            }
        }
        Ok(())
    }

    /// Puts back a list taken with `list().to_vec()` (after a change that failed).
    pub fn restore(&mut self, items: Vec<Override>) {
        self.items = items;
    }

    pub fn list(&self) -> &[Override] {
        &self.items
    }

    /// Adds `item`, replacing an override of the same CIDR.
    pub fn upsert(&mut self, item: Override) {
        self.items.retain(|o| o.cidr != item.cidr);
        self.items.push(item);
        self.items.sort_by_key(|o| (!o.cidr.is_ipv4(), o.cidr));
    }

    /// Removes the override of exactly `cidr`; false when there was none.
    pub fn remove(&mut self, cidr: &Prefix) -> bool {
        let before = self.items.len();
        self.items.retain(|o| o.cidr != *cidr);
        self.items.len() != before
    }

    /// Removes the overrides that lapsed by `now_ms`; returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Override> {
        let (lapsed, kept) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|o| o.expires_at_ms.is_some_and(|at| at <= now_ms));
        self.items = kept;
        lapsed
    }

    /// Writes the state file atomically, not world-readable: who is allowed or denied is the
    /// operator's business.
    pub fn save(&self) -> anyhow::Result<()> {
        super::private_file::write(&self.path, &serde_json::to_vec_pretty(&self.items)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(cidr: &str, expires_at_ms: Option<u64>) -> Override {
        Override {
            cidr: cidr.parse().unwrap(),
            action: Action::Deny,
            rate: None,
            burst: None,
            expires_at_ms,
            created_at_ms: 1,
        }
    }

    #[test]
    fn overrides_survive_a_restart_and_lapse() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = OverrideStore::load(dir.path()).unwrap();
        store.upsert(item("198.18.0.0/24", None));
        store.upsert(item("2001:2::/48", Some(now_ms() + 60_000)));
        store.upsert(item("198.18.9.9", Some(1)));
        store.save().unwrap();
        let reloaded = OverrideStore::load(dir.path()).unwrap();
        assert_eq!(
            reloaded.list().len(),
            2,
            "the lapsed one is dropped on load"
        );
        let mut store = reloaded;
        store.upsert(item("198.18.0.0/24", Some(5)));
        assert_eq!(store.list().len(), 2, "same CIDR replaces");
        assert_eq!(store.expire(10).len(), 1);
        assert!(store.remove(&"2001:2::/48".parse().unwrap()));
        assert!(!store.remove(&"2001:2::/48".parse().unwrap()));
    }

    #[test]
    fn a_corrupt_state_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let err = OverrideStore::load(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("overrides.json"), "{err:#}");
    }
}
