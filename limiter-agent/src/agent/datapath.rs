//! The loaded XDP object and its maps: everything the agent reads from or writes to the kernel.

use super::config::{Config, ResolvedRule};
use crate::api::{KeyInfo, SortBy};
use anyhow::{anyhow, Context};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use limiter_common::bucket::{self, Limit};
use limiter_common::key::Prefix;
use limiter_common::maps::{
    BucketKey, BucketState, Counter, DatapathConfig, RuleEntry, BUCKETS_MAP, CONFIG_MAP,
    COUNTERS_MAP, DEFAULT_RULE_ID, RESET_PROG, RULES_V4_MAP, RULES_V6_MAP, RULE_SHARED,
};
use std::collections::HashMap as StdHashMap;

/// XDP verdicts of the reset program (see limiter-ebpf).
const RESET_DONE: u32 = 2; // XDP_PASS
const RESET_NOT_TRACKED: u32 = 1; // XDP_DROP

pub struct Datapath {
    /// Owns the programs; the maps below were taken out of it.
    ebpf: Ebpf,
    buckets: HashMap<MapData, BucketKey, BucketState>,
    config: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, u64>,
    rules_v4: LpmTrie<MapData, [u8; 4], RuleEntry>,
    rules_v6: LpmTrie<MapData, [u8; 16], RuleEntry>,
    /// The limits in force by rule id, for `rule`, `remaining` and `retry_after_ms`.
    limits: StdHashMap<u32, (String, Limit)>,
}

/// Sums of the global per-CPU counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub passed: u64,
    pub dropped: u64,
    pub would_drop: u64,
    pub allowed_by_rule: u64,
    pub denied_by_rule: u64,
    pub not_limited: u64,
    pub unparsed: u64,
    pub insert_failed: u64,
    pub keys_created: u64,
    pub contention_drops: u64,
}

impl Datapath {
    pub fn new(mut ebpf: Ebpf) -> anyhow::Result<Datapath> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("the XDP object has no map {name}"))
        };
        let buckets = HashMap::try_from(take(BUCKETS_MAP)?)?;
        let config = Array::try_from(take(CONFIG_MAP)?)?;
        let counters = PerCpuArray::try_from(take(COUNTERS_MAP)?)?;
        let rules_v4 = LpmTrie::try_from(take(RULES_V4_MAP)?)?;
        let rules_v6 = LpmTrie::try_from(take(RULES_V6_MAP)?)?;
        let reset: &mut Xdp = ebpf
            .program_mut(RESET_PROG)
            .ok_or_else(|| anyhow!("the XDP object has no program {RESET_PROG}"))?
            .try_into()?;
        reset.load().context("loading the reset program")?;
        Ok(Datapath {
            ebpf,
            buckets,
            config,
            counters,
            rules_v4,
            rules_v6,
            limits: StdHashMap::new(),
        })
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Tells the datapath the configuration: the rules first, then the config that enables them,
    /// so that every packet sees either the old rule set or the new one's entries.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let rules = config.resolved_rules();
        self.write_rules(&rules)?;
        let datapath: DatapathConfig = config.datapath();
        self.config
            .set(0, datapath, 0)
            .context("writing the CONFIG map")?;
        self.limits = rules
            .iter()
            .map(|r| (r.id, (r.name.clone(), r.limit)))
            .chain([(
                DEFAULT_RULE_ID,
                ("default".to_owned(), datapath.default_limit),
            )])
            .collect();
        Ok(())
    }

    /// Makes the rule tries hold exactly `rules`.
    fn write_rules(&mut self, rules: &[ResolvedRule]) -> anyhow::Result<()> {
        let entry = |rule: &ResolvedRule| RuleEntry {
            id: rule.id,
            action: rule.action_code(),
            flags: if rule.shared { RULE_SHARED } else { 0 },
            prefix_len: rule.cidr.prefix_len() as u32,
            limit: rule.limit,
        };
        let mut wanted_v4 = Vec::new();
        let mut wanted_v6 = Vec::new();
        for rule in rules {
            let octets = rule.cidr.octets();
            let len = rule.cidr.prefix_len() as u32;
            if rule.cidr.is_ipv4() {
                let key = LpmKey::new(len, <[u8; 4]>::try_from(&octets[..]).unwrap());
                self.rules_v4
                    .insert(&key, entry(rule), 0)
                    .context("writing RULES_V4")?;
                wanted_v4.push((len, key.data()));
            } else {
                let key = LpmKey::new(len, <[u8; 16]>::try_from(&octets[..]).unwrap());
                self.rules_v6
                    .insert(&key, entry(rule), 0)
                    .context("writing RULES_V6")?;
                wanted_v6.push((len, key.data()));
            }
        }
        let stale_v4: Vec<_> = self
            .rules_v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted_v4.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale_v4 {
            self.rules_v4
                .remove(&key)
                .context("removing from RULES_V4")?;
        }
        let stale_v6: Vec<_> = self
            .rules_v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted_v6.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale_v6 {
            self.rules_v6
                .remove(&key)
                .context("removing from RULES_V6")?;
        }
        Ok(())
    }

    pub fn totals(&self) -> anyhow::Result<Totals> {
        let sum = |counter: Counter| -> anyhow::Result<u64> {
            let values = self.counters.get(&(counter as u32), 0)?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(Totals {
            passed: sum(Counter::Passed)?,
            dropped: sum(Counter::Dropped)?,
            would_drop: sum(Counter::WouldDrop)?,
            allowed_by_rule: sum(Counter::AllowedByRule)?,
            denied_by_rule: sum(Counter::DeniedByRule)?,
            not_limited: sum(Counter::NotLimited)?,
            unparsed: sum(Counter::Unparsed)?,
            insert_failed: sum(Counter::InsertFailed)?,
            keys_created: sum(Counter::KeysCreated)?,
            contention_drops: sum(Counter::ContentionDrops)?,
        })
    }

    /// Every tracked key, as the API shows it, evaluated at one instant.
    pub fn keys(&self) -> anyhow::Result<Vec<(BucketKey, KeyInfo)>> {
        let now = monotonic_now_ns();
        let mut keys = Vec::new();
        for entry in self.buckets.iter() {
            let (key, state) = match entry {
                Ok(entry) => entry,
                // An LRU entry evicted while we walk the map: skip it.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(err) => return Err(err).context("reading the BUCKETS map"),
            };
            if let Some(info) = self.describe(&key, &state, now) {
                keys.push((key, info));
            }
        }
        Ok(keys)
    }

    /// Keys matching a list query, sorted and cut as asked.
    pub fn list(
        &self,
        exhausted_only: bool,
        sort: Option<SortBy>,
        top: Option<usize>,
    ) -> anyhow::Result<Vec<KeyInfo>> {
        let mut keys: Vec<KeyInfo> = self
            .keys()?
            .into_iter()
            .map(|(_, info)| info)
            .filter(|info| !exhausted_only || info.exhausted)
            .collect();
        match sort {
            Some(SortBy::Drops) => {
                keys.sort_by(|a, b| b.dropped.cmp(&a.dropped).then(a.key.cmp(&b.key)))
            }
            Some(SortBy::Passed) => {
                keys.sort_by(|a, b| b.passed.cmp(&a.passed).then(a.key.cmp(&b.key)))
            }
            None => keys.sort_by(|a, b| a.key.cmp(&b.key)),
        }
        if let Some(top) = top {
            keys.truncate(top);
        }
        Ok(keys)
    }

    fn describe(&self, key: &BucketKey, state: &BucketState, now: u64) -> Option<KeyInfo> {
        let prefix = Prefix::from_bucket_key(key)?;
        // A bucket of a rule that is no longer configured: shown under its last known limit
        // until the LRU map evicts it.
        let (rule, limit) = match self.limits.get(&key.rule_id) {
            Some((name, limit)) => (name.clone(), *limit),
            None => (
                format!("removed rule #{}", key.rule_id),
                self.limits.get(&DEFAULT_RULE_ID)?.1,
            ),
        };
        let limit = &limit;
        Some(KeyInfo {
            key: prefix.to_string(),
            rule,
            rate: limit.rate(),
            burst: limit.burst(),
            remaining: bucket::remaining(state.tat_ns, now, limit),
            exhausted: bucket::is_exhausted(state.tat_ns, now, limit),
            retry_after_ms: bucket::retry_after_ns(state.tat_ns, now, limit).div_ceil(1_000_000),
            passed: state.passed,
            dropped: state.dropped,
            would_drop: state.would_drop,
        })
    }

    /// Gives `key` a full bucket; false when it is not tracked (any more).
    pub fn reset(&self, key: &BucketKey) -> anyhow::Result<bool> {
        let program: &Xdp = self
            .ebpf
            .program(RESET_PROG)
            .ok_or_else(|| anyhow!("no program {RESET_PROG}"))?
            .try_into()?;
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(key.as_bytes()),
                ..TestRunOptions::new()
            })
            .context("running the reset program")?;
        match result.return_value {
            RESET_DONE => Ok(true),
            RESET_NOT_TRACKED => Ok(false),
            other => Err(anyhow!("the reset program answered {other}")),
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}
