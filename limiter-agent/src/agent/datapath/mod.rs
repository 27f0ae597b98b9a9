//! The loaded XDP object and its maps: everything the agent reads from or writes to the kernel.

mod quotas;

use super::api_keys::{fingerprint, Registered, Secret};
use super::config::{longest_match, Config, Quota, ResolvedRule};
use super::quotas::{
    quota_clock_holds, quota_clock_now, quota_info, top_up_is_over, topped_up, window_is_over,
    QuotaWords, RecentRate, Restored, TopUpRefusal,
};
use crate::api::{ApiKeyFields, Counters, KeyInfo, KeyKind, QuotaInfo, SortBy};
use anyhow::{anyhow, Context};
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use limiter_common::bucket::{self, Limit, FULL_BUCKET_TAT};
use limiter_common::charge::{self, Charge};
use limiter_common::http::Answer;
use limiter_common::key::Prefix;
use limiter_common::maps::{
    add_tallied, counter_index, drop_tally_slot, ApiKeyEntry, BucketKey, BucketState, Counter,
    DatapathConfig, DropTally, PlanQuota, QuotaAdjust, QuotaClock, ResetRequest, RuleEntry,
    ADJUST_BUSY, ADJUST_DONE, ADJUST_LATER_WINDOW, ANSWERS_MAP, API_KEYS_MAP, BUCKETS_MAP,
    CONFIG_HAS_OVERRIDES_V4, CONFIG_HAS_OVERRIDES_V6, CONFIG_HTTP, CONFIG_MAP, COUNTERS_MAP,
    COUNTER_ENTRIES, DEFAULT_RULE_ID, DROP_TALLIES_MAP, DROP_TALLY_SLOTS, MAX_INTERFACES,
    MAX_PLANS, OVERRIDES_V4_MAP, OVERRIDES_V6_MAP, PLAN_QUOTAS_MAP, QUOTAS_MAP, QUOTA_ADJUST_PROG,
    QUOTA_ANSWERS, QUOTA_TOPUPS_MAP, RESET_PROG, RULES_V4_MAP, RULES_V6_MAP,
};
use limiter_common::quota;
use std::collections::HashMap as StdHashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The API_KEYS entry of a key, registered as `registered` or not, whose rate `hosts` share:
/// its plan's limit (slot and 429) or the `[http]` default's (slot 0), divided among the hosts
/// (the burst rounded up: the fleet may burst a few more than the limit). None: the key is
/// under the `[http]` default alone, which the datapath applies without an entry. A key of a
/// plan the configuration no longer has gets the default (the agent said so when it started).
fn api_key_entry(
    config: &Config,
    registered: Option<&Registered>,
    hosts: u32,
) -> Option<ApiKeyEntry> {
    let http = config.http.as_ref()?;
    let plan = registered
        .and_then(|k| k.plan.as_deref())
        .and_then(|p| config.plan(p));
    let (slot, rate, burst) = match plan {
        Some((slot, plan)) => (slot, plan.rate.get(), plan.burst.get()),
        None if hosts > 1 => (0, http.rate.get(), http.burst.get()),
        None => return None,
    };
    Some(ApiKeyEntry {
        limit: Limit::share(rate, burst, u64::from(hosts)),
        plan: slot,
        _pad: 0,
    })
}

/// XDP verdicts of the reset program (see limiter-ebpf).
const RESET_DONE: u32 = 2; // XDP_PASS
const RESET_NOT_TRACKED: u32 = 1; // XDP_DROP

pub struct Datapath {
    /// Owns the programs; the maps below were taken out of it.
    ebpf: Ebpf,
    buckets: HashMap<MapData, BucketKey, BucketState>,
    /// The drops the CPUs counted for keys over their limit, not yet in their buckets.
    tallies: PerCpuArray<MapData, DropTally>,
    config_map: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, u64>,
    /// The configured rules.
    rules: RuleTries,
    /// The runtime overrides, looked up before the rules.
    overrides: RuleTries,
    /// The limits in force by rule id, for `rule`, `remaining` and `retry_after_ms`.
    limits: StdHashMap<u32, Shown>,
    /// The configuration in force and its rules resolved (set by `apply`): kept, not
    /// recomputed on every lookup (`rule_in_force` runs per key an `inspect` looks at).
    applied: Option<(Config, Vec<ResolvedRule>)>,
    /// The overrides in force (set by `set_overrides`).
    override_rules: Vec<ResolvedRule>,
    /// What CONFIG holds (set by `write_config`).
    written: Option<DatapathConfig>,
    /// Registered API keys by token hash, and each plan's 429 by slot.
    /// Behind a lock: the fleet's rate shares are written where the rest is only read.
    api_keys_map: std::sync::Mutex<HashMap<MapData, u64, ApiKeyEntry>>,
    /// With `[fleet]`: API keys whose rate is shared among this many hosts (more than one), by
    /// token hash; each host's kernel enforces its share (see `set_fleet_share`).
    fleet_shares: std::sync::Mutex<StdHashMap<u64, u32>>,
    answers: Array<MapData, Answer>,
    plan_quotas: Array<MapData, PlanQuota>,
    /// API keys' counts in their quota windows and their top-ups, by token hash (behind a lock:
    /// written by `reset_quota` and `top_up_quota` where the rest of the datapath is only read).
    quotas: std::sync::Mutex<QuotaMaps>,
    /// API keys' recent rates of quota use, by token hash, as the quota watcher last published
    /// them (`events::quota_alerts`): the forecast goes by them.
    recent_rates: std::sync::RwLock<Arc<StdHashMap<u64, RecentRate>>>,
    /// The token hash's secret and the registered keys (set by `set_api_keys`).
    secret: Option<Secret>,
    registered: Vec<Registered>,
    /// What describes API keys' buckets, from the configuration and registered keys in force.
    api: Arc<ApiView>,
}

/// How API keys' buckets are described: their limits and names.
#[derive(Clone, Debug, Default)]
pub struct ApiView {
    /// `[http]`'s limit for keys without a plan; none without `[http]`.
    default: Option<Shown>,
    /// Plans by name.
    plans: StdHashMap<String, Shown>,
    /// Registered keys by token hash: name and plan.
    registered: StdHashMap<u64, (String, Option<String>)>,
}

impl ApiView {
    /// The limit, name and plan of the key whose token hashes to `hash`.
    fn of(&self, hash: u64) -> Option<(Shown, Option<&str>, Option<&str>)> {
        let default = self.default.as_ref()?;
        match self.registered.get(&hash) {
            Some((name, plan)) => {
                let shown = plan
                    .as_ref()
                    .and_then(|p| self.plans.get(p))
                    .unwrap_or(default);
                Some((shown.clone(), Some(name), plan.as_deref()))
            }
            None => Some((default.clone(), None, None)),
        }
    }

    /// How the key whose token hashes to `hash` is named (`key:NAME`, `key:FINGERPRINT`), and
    /// the name of its limit (its plan, or `[http]`).
    pub fn names(&self, hash: u64) -> (String, String) {
        match self.registered.get(&hash) {
            Some((name, plan)) => (
                format!("key:{name}"),
                plan.clone().unwrap_or_else(|| "[http]".to_owned()),
            ),
            None => (format!("key:{}", fingerprint(hash)), "[http]".to_owned()),
        }
    }

    /// The quota of the key whose token hashes to `hash`, if its limit has one, and its plan
    /// (none: `[http]`'s default).
    pub fn quota_of(&self, hash: u64) -> Option<(Quota, Option<&str>)> {
        let (shown, _, plan) = self.of(hash)?;
        Some((shown.quota?, plan))
    }

    /// The token hash of the key registered as `name`.
    pub fn hash_of(&self, name: &str) -> Option<u64> {
        self.registered
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(hash, _)| *hash)
    }
}

/// The quota maps: `QUOTAS` (`quota::Usage` words) and `QUOTA_TOPUPS` (`quota::TopUp` words).
struct QuotaMaps {
    counts: HashMap<MapData, u64, u64>,
    top_ups: HashMap<MapData, u64, u64>,
}

impl QuotaMaps {
    fn words(&self, hash: u64) -> QuotaWords {
        QuotaWords {
            usage: self.counts.get(&hash, 0).unwrap_or(0),
            top_up: self.top_ups.get(&hash, 0).unwrap_or(0),
        }
    }
}

/// A pair of LPM tries (IPv4, IPv6) of [`RuleEntry`].
struct RuleTries {
    v4: LpmTrie<MapData, [u8; 4], RuleEntry>,
    v6: LpmTrie<MapData, [u8; 16], RuleEntry>,
}

impl RuleTries {
    /// Makes the tries hold exactly `rules`: new entries first, stale ones removed after, so a
    /// packet never finds a CIDR that is in neither the old nor the new set.
    fn write(&mut self, rules: &[ResolvedRule]) -> anyhow::Result<()> {
        let mut wanted_v4 = Vec::new();
        let mut wanted_v6 = Vec::new();
        for rule in rules {
            let octets = rule.cidr.octets();
            let len = rule.cidr.prefix_len() as u32;
            if rule.cidr.is_ipv4() {
                let key = LpmKey::new(len, <[u8; 4]>::try_from(&octets[..]).unwrap());
                self.v4
                    .insert(&key, rule.entry(), 0)
                    .context("writing an IPv4 rule trie")?;
                wanted_v4.push((len, key.data()));
            } else {
                let key = LpmKey::new(len, <[u8; 16]>::try_from(&octets[..]).unwrap());
                self.v6
                    .insert(&key, rule.entry(), 0)
                    .context("writing an IPv6 rule trie")?;
                wanted_v6.push((len, key.data()));
            }
        }
        let stale_v4: Vec<_> = self
            .v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted_v4.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale_v4 {
            self.v4
                .remove(&key)
                .context("removing from an IPv4 rule trie")?;
        }
        let stale_v6: Vec<_> = self
            .v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted_v6.contains(&(k.prefix_len(), k.data())))
            .collect();
        for key in stale_v6 {
            self.v6
                .remove(&key)
                .context("removing from an IPv6 rule trie")?;
        }
        Ok(())
    }
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
        let tallies = PerCpuArray::try_from(take(DROP_TALLIES_MAP)?)?;
        let rules = RuleTries {
            v4: LpmTrie::try_from(take(RULES_V4_MAP)?)?,
            v6: LpmTrie::try_from(take(RULES_V6_MAP)?)?,
        };
        let overrides = RuleTries {
            v4: LpmTrie::try_from(take(OVERRIDES_V4_MAP)?)?,
            v6: LpmTrie::try_from(take(OVERRIDES_V6_MAP)?)?,
        };
        let api_keys_map = std::sync::Mutex::new(HashMap::try_from(take(API_KEYS_MAP)?)?);
        let answers = Array::try_from(take(ANSWERS_MAP)?)?;
        let plan_quotas = Array::try_from(take(PLAN_QUOTAS_MAP)?)?;
        let quotas = std::sync::Mutex::new(QuotaMaps {
            counts: HashMap::try_from(take(QUOTAS_MAP)?)?,
            top_ups: HashMap::try_from(take(QUOTA_TOPUPS_MAP)?)?,
        });
        let reset: &mut Xdp = ebpf
            .program_mut(RESET_PROG)
            .ok_or_else(|| anyhow!("the XDP object has no program {RESET_PROG}"))?
            .try_into()?;
        reset.load().context("loading the reset program")?;
        let adjust: &mut Xdp = ebpf
            .program_mut(QUOTA_ADJUST_PROG)
            .ok_or_else(|| anyhow!("the XDP object has no program {QUOTA_ADJUST_PROG}"))?
            .try_into()?;
        adjust.load().context("loading the quota-adjust program")?;
        Ok(Datapath {
            ebpf,
            buckets,
            config_map: config,
            counters,
            tallies,
            rules,
            overrides,
            limits: StdHashMap::new(),
            applied: None,
            override_rules: Vec::new(),
            written: None,
            api_keys_map,
            fleet_shares: Default::default(),
            answers,
            plan_quotas,
            quotas,
            recent_rates: Default::default(),
            secret: None,
            registered: Vec::new(),
            api: Arc::new(ApiView::default()),
        })
    }

    /// Sets the token hash's secret and the registered keys; takes effect with the next
    /// `apply` (at start) or at once (`limiter keys add|rm`).
    pub fn set_api_keys(
        &mut self,
        secret: Secret,
        registered: Vec<Registered>,
    ) -> anyhow::Result<()> {
        self.secret = Some(secret);
        self.registered = registered;
        if self.applied.is_some() {
            self.write_api_keys()?;
        }
        Ok(())
    }

    /// The token hash's secret.
    pub fn secret(&self) -> Option<Secret> {
        self.secret
    }

    /// The registered keys in force.
    pub fn registered(&self) -> &[Registered] {
        &self.registered
    }

    pub fn api(&self) -> Arc<ApiView> {
        Arc::clone(&self.api)
    }

    /// Writes each plan's 429 and the registered keys' limits, then what describes them.
    fn write_api_keys(&mut self) -> anyhow::Result<()> {
        let (config, _) = self
            .applied
            .as_ref()
            .expect("a configuration is applied first");
        let Some(http) = &config.http else {
            self.api = Arc::new(ApiView::default());
            return Ok(());
        };
        // Each slot's rate 429, and its quota and quota 429 (none: a zero quota).
        let mut quotas = vec![(PlanQuota::default(), None); MAX_PLANS as usize + 1];
        self.answers
            .set(0, http.answer(), 0)
            .context("writing the ANSWERS map")?;
        if let Ok(Some(quota)) = http.quota() {
            quotas[0] = (quota.datapath(), http.quota_answer());
        }
        for spanned in &config.plans {
            let plan = spanned.get_ref();
            let (slot, _) = config.plan(&plan.name).expect("a configured plan");
            self.answers
                .set(slot, plan.answer(http.keep_alive), 0)
                .context("writing the ANSWERS map")?;
            if let Ok(Some(quota)) = plan.quota() {
                quotas[slot as usize] = (quota.datapath(), plan.quota_answer(http.keep_alive));
            }
        }
        for (slot, (quota, answer)) in quotas.into_iter().enumerate() {
            // The answer first: a quota in force always finds its 429.
            if let Some(answer) = answer {
                self.answers
                    .set(QUOTA_ANSWERS + slot as u32, answer, 0)
                    .context("writing the ANSWERS map")?;
            }
            self.plan_quotas
                .set(slot as u32, quota, 0)
                .context("writing the PLAN_QUOTAS map")?;
        }
        let shares = self.fleet_shares.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.api_keys_map.lock().unwrap_or_else(|p| p.into_inner());
        let mut wanted = StdHashMap::new();
        let registered = self.registered.iter().map(|k| k.hash);
        for hash in registered.chain(shares.keys().copied()) {
            let key = self.registered.iter().find(|k| k.hash == hash);
            let hosts = shares.get(&hash).copied().unwrap_or(1);
            if let Some(entry) = api_key_entry(config, key, hosts) {
                map.insert(hash, entry, 0)
                    .context("writing the API_KEYS map")?;
                wanted.insert(hash, ());
            }
        }
        let stale: Vec<u64> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|hash| !wanted.contains_key(hash))
            .collect();
        for hash in stale {
            map.remove(&hash)
                .context("removing from the API_KEYS map")?;
        }
        drop((map, shares));
        let shown = |name: &str, rate: u64, burst: u64, quota: Option<Quota>| Shown {
            name: name.to_owned(),
            limit: Limit::new(rate, burst),
            rate,
            burst,
            quota,
        };
        self.api = Arc::new(ApiView {
            default: Some(shown(
                "[http]",
                http.rate.get(),
                http.burst.get(),
                http.quota().ok().flatten(),
            )),
            plans: config
                .plans
                .iter()
                .map(|p| {
                    let p = p.get_ref();
                    let quota = p.quota().ok().flatten();
                    (
                        p.name.clone(),
                        shown(&p.name, p.rate.get(), p.burst.get(), quota),
                    )
                })
                .collect(),
            registered: self
                .registered
                .iter()
                .map(|k| (k.hash, (k.name.clone(), k.plan.clone())))
                .collect(),
        });
        Ok(())
    }

    /// Tells the datapath the configuration: the rules first, then the config that enables them,
    /// so that every packet sees either the old rule set or the new one's entries.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let rules = config.resolved_rules();
        self.rules.write(&rules)?;
        self.applied = Some((config.clone(), rules));
        self.write_api_keys()?;
        self.write_config()
    }

    /// Replaces the runtime overrides (they win over every rule).
    pub fn set_overrides(&mut self, overrides: Vec<ResolvedRule>) -> anyhow::Result<()> {
        self.overrides.write(&overrides)?;
        self.override_rules = overrides;
        self.write_config()
    }

    /// Writes CONFIG from the configuration and overrides in force, and the limits the API
    /// shows per rule id.
    fn write_config(&mut self) -> anyhow::Result<()> {
        let (config, rules) = self
            .applied
            .as_ref()
            .expect("a configuration is applied first");
        let mut datapath: DatapathConfig = config.datapath();
        if self.override_rules.iter().any(|r| r.cidr.is_ipv4()) {
            datapath.flags |= CONFIG_HAS_OVERRIDES_V4;
        }
        if self.override_rules.iter().any(|r| !r.cidr.is_ipv4()) {
            datapath.flags |= CONFIG_HAS_OVERRIDES_V6;
        }
        if let Some(http) = &config.http {
            let secret = self
                .secret
                .ok_or_else(|| anyhow!("the API key secret is set before [http] is applied"))?;
            datapath.flags |= CONFIG_HTTP;
            datapath.http = http.datapath(secret.words());
            datapath.http.quota_clock = quota_clock_now();
            datapath.http.quota_plans = config.quota_plans();
        }
        self.config_map
            .set(0, datapath, 0)
            .context("writing the CONFIG map")?;
        self.written = Some(datapath);
        let before = std::mem::take(&mut self.limits);
        self.limits = rules
            .iter()
            .chain(&self.override_rules)
            .chain([&config.default_rule()])
            .map(|r| (r.id, Shown::of(r)))
            .collect();
        let brought = self.bring_back_stale(&before)?;
        if brought > 0 {
            tracing::info!(
                keys = brought,
                "limits raised: keys exhausted under the lower ones wait no longer than the new ones allow"
            );
        }
        Ok(())
    }

    /// Writes `clock` (from [`Datapath::quota_clock_due`]) as the datapath's quota clock: it
    /// changes when a month ends (month windows need the calendar; minutes, hours and days roll
    /// over by themselves) or the wall clock is stepped (NTP, `date -s`, a leap second). The
    /// expiry task asks every 200 ms, so a step is followed within that.
    pub fn refresh_quota_clock(&mut self, clock: QuotaClock) -> anyhow::Result<()> {
        let Some(mut written) = self.written.filter(|w| w.flags & CONFIG_HTTP != 0) else {
            return Ok(());
        };
        written.http.quota_clock = clock;
        self.config_map
            .set(0, written, 0)
            .context("writing the CONFIG map")?;
        self.written = Some(written);
        Ok(())
    }

    /// The quota clock as it should be now, when the one written is not that (with `[http]`).
    pub fn quota_clock_due(&self) -> Option<QuotaClock> {
        let written = self.written.filter(|w| w.flags & CONFIG_HTTP != 0)?;
        let clock = quota_clock_now();
        (!quota_clock_holds(&written.http.quota_clock, &clock)).then_some(clock)
    }

    /// The rule the datapath applies to sources in `prefix` (its address, for a host): chosen
    /// by the datapath's own code, with the agent's lists of overrides and rules as the
    /// lookups; `[limits]` (id 0) when none applies.
    pub fn rule_in_force(&self, prefix: &Prefix) -> ResolvedRule {
        let (config, rules) = self
            .applied
            .as_ref()
            .expect("a configuration is applied before the datapath is shared");
        charge::find_rule(
            prefix.is_ipv4(),
            self.written(),
            || longest_match(&self.override_rules, prefix),
            || longest_match(rules, prefix),
        )
        .unwrap_or_else(|| {
            let mut default = config.default_rule();
            default.cidr = Prefix::new(prefix.addr(), 0);
            default
        })
    }

    /// What CONFIG holds.
    fn written(&self) -> &DatapathConfig {
        self.written
            .as_ref()
            .expect("a configuration is written before the datapath is shared")
    }

    /// Every counter of every interface, summed over the CPUs: one walk of the COUNTERS map.
    pub fn counter_sums(&self) -> anyhow::Result<CounterSums> {
        CounterSums::read(&self.counters)
    }

    /// Calls `visit` for every tracked key, reading the map in batches; its drops are the
    /// bucket's and those the CPUs tallied for it (`DropTally`).
    pub fn for_each_bucket(
        &self,
        mut visit: impl FnMut(&BucketKey, &BucketState),
    ) -> anyhow::Result<()> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let tallies = (0..DROP_TALLY_SLOTS)
            .map(|slot| self.tally_slot(slot))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let fd = self.buckets.map().fd().as_fd().as_raw_fd();
        limiter_common::batch::for_each_bucket(fd, |key, state| {
            let mut state = *state;
            add_tallied(&mut state, key, &tallies[drop_tally_slot(key) as usize]);
            visit(key, &state);
        })
        .context("reading the BUCKETS map")
    }

    /// One key's bucket, its tallied drops added; `None` when it is not tracked.
    fn bucket(&self, key: &BucketKey) -> anyhow::Result<Option<BucketState>> {
        let mut state = match self.buckets.get(key, 0) {
            Ok(state) => state,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(err) => return Err(err).context("looking up the BUCKETS map"),
        };
        add_tallied(&mut state, key, &self.tally_slot(drop_tally_slot(key))?);
        Ok(Some(state))
    }

    /// Slot `slot` of the drop tallies, every CPU's.
    fn tally_slot(&self, slot: u32) -> anyhow::Result<Vec<DropTally>> {
        let values = self
            .tallies
            .get(&slot, 0)
            .context("reading the DROP_TALLIES map")?;
        Ok(values.iter().copied().collect())
    }

    /// The name and limit `key`'s bucket is under.
    fn limit_of(&self, key: &BucketKey) -> Option<Shown> {
        limit_of(key, &self.limits, &self.api)
    }

    /// Keys tracked and keys exhausted right now, without building any list.
    pub fn key_counts(&self) -> anyhow::Result<(u64, u64)> {
        let now = monotonic_now_ns();
        let (mut tracked, mut exhausted) = (0u64, 0u64);
        self.for_each_bucket(|key, state| {
            tracked += 1;
            if let Some(shown) = self.limit_of(key) {
                exhausted += bucket::is_exhausted(state.tat_ns, now, &shown.limit) as u64;
            }
        })?;
        Ok((tracked, exhausted))
    }

    /// The keys a list query asks for, filtered, sorted and cut in the agent on the raw map
    /// entries (64 bytes each); they are turned into `KeyInfo`s only as the answer is written.
    pub fn select(
        &self,
        exhausted_only: bool,
        sort: Option<SortBy>,
        top: Option<usize>,
        prefix: Option<&Prefix>,
        kind: Option<KeyKind>,
    ) -> anyhow::Result<KeyList> {
        let now = monotonic_now_ns();
        let mut entries = Vec::new();
        self.for_each_bucket(|key, state| {
            if kind.is_some_and(|kind| kind != kind_of(key)) {
                return;
            }
            if let Some(wanted) = prefix {
                if !Prefix::from_bucket_key(key).is_some_and(|p| p.overlaps(wanted)) {
                    return;
                }
            }
            if exhausted_only
                && !self
                    .limit_of(key)
                    .is_some_and(|shown| bucket::is_exhausted(state.tat_ns, now, &shown.limit))
            {
                return;
            }
            entries.push((*key, *state));
        })?;
        // Most first for counters; by address otherwise.
        let order = |a: &(BucketKey, BucketState), b: &(BucketKey, BucketState)| {
            let by_key = (a.0.family, a.0.addr, a.0.prefix_len, a.0.rule_id).cmp(&(
                b.0.family,
                b.0.addr,
                b.0.prefix_len,
                b.0.rule_id,
            ));
            match sort {
                Some(SortBy::Drops) => b.1.dropped.cmp(&a.1.dropped).then(by_key),
                Some(SortBy::Passed) => b.1.passed.cmp(&a.1.passed).then(by_key),
                None => by_key,
            }
        };
        if let Some(top) = top {
            if top < entries.len() {
                // Only the first `top` need sorting.
                entries.select_nth_unstable_by(top, order);
                entries.truncate(top);
            }
        }
        entries.sort_unstable_by(order);
        Ok(self.key_list(entries, now))
    }

    fn key_list(&self, entries: Vec<(BucketKey, BucketState)>, now: u64) -> KeyList {
        let quotas = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        let quota_words = entries
            .iter()
            .filter_map(|(key, _)| charge::api_key_hash(key))
            .map(|hash| (hash, quotas.words(hash)))
            .collect();
        drop(quotas);
        KeyList {
            entries,
            limits: self.limits.clone(),
            api: self.api(),
            now,
            quota_words,
            recent_rates: self.recent_rates(),
        }
    }

    /// The bucket of the API key whose token hashes to `hash`, as a list of one (or none).
    pub fn select_api_key(&self, hash: u64) -> anyhow::Result<KeyList> {
        let key = charge::api_key(hash);
        let entries = self.bucket(&key)?.map(|state| (key, state));
        Ok(self.key_list(entries.into_iter().collect(), monotonic_now_ns()))
    }

    /// The tracked API keys whose fingerprint starts with `start` (at most `keep`), and how
    /// many there are.
    pub fn api_keys_starting(&self, start: &str, keep: usize) -> anyhow::Result<(KeyList, usize)> {
        let now = monotonic_now_ns();
        let mut entries = Vec::new();
        let mut total = 0;
        self.for_each_bucket(|key, state| {
            if charge::api_key_hash(key).is_some_and(|h| fingerprint(h).starts_with(start)) {
                total += 1;
                if entries.len() < keep {
                    entries.push((*key, *state));
                }
            }
        })?;
        Ok((self.key_list(entries, now), total))
    }

    /// The tracked keys that overlap `wanted`: at most `keep` of them (the first in map order),
    /// and how many there are in all — memory bounded whatever `wanted` covers.
    pub fn overlapping(&self, wanted: &Prefix, keep: usize) -> anyhow::Result<(KeyList, usize)> {
        let now = monotonic_now_ns();
        let mut entries = Vec::new();
        let mut total = 0;
        self.for_each_bucket(|key, state| {
            if Prefix::from_bucket_key(key).is_some_and(|p| p.overlaps(wanted)) {
                total += 1;
                if entries.len() < keep {
                    entries.push((*key, *state));
                }
            }
        })?;
        Ok((self.key_list(entries, now), total))
    }

    /// The bucket a packet from the single address `source` is charged to now, as a list of
    /// one (or none, when it is not tracked or its rule gives it no bucket): one map lookup
    /// instead of a walk of the whole map.
    pub fn select_in_force(&self, source: &Prefix) -> anyhow::Result<KeyList> {
        let now = monotonic_now_ns();
        let rule = self.rule_in_force(source);
        let mut entries = Vec::new();
        let entry = (rule.id != DEFAULT_RULE_ID).then(|| rule.entry());
        if let Charge::Bucket { key, .. } =
            charge::charge(&source.source(), self.written(), entry.as_ref())
        {
            entries.extend(self.bucket(&key)?.map(|state| (key, state)));
        }
        Ok(self.key_list(entries, now))
    }

    /// Publishes the API keys' recent rates of quota use (the quota watcher does, every second).
    pub fn publish_recent_rates(&self, rates: StdHashMap<u64, RecentRate>) {
        *self.recent_rates.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rates);
    }

    /// The API keys' recent rates of quota use, as last published.
    pub fn recent_rates(&self) -> Arc<StdHashMap<u64, RecentRate>> {
        Arc::clone(&self.recent_rates.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Gives `key` a full bucket; false when it is not tracked (any more).
    pub fn reset(&self, key: &BucketKey) -> anyhow::Result<bool> {
        self.lower_tat(key, FULL_BUCKET_TAT)
    }

    /// Brings `key`'s TAT down to at most `tat_at_most` (`FULL_BUCKET_TAT`: a full bucket), in
    /// the kernel; false when it is not tracked (any more).
    fn lower_tat(&self, key: &BucketKey, tat_at_most: u64) -> anyhow::Result<bool> {
        let program: &Xdp = self
            .ebpf
            .program(RESET_PROG)
            .ok_or_else(|| anyhow!("no program {RESET_PROG}"))?
            .try_into()?;
        let request = ResetRequest {
            key: *key,
            tat_at_most,
        };
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(request.as_bytes()),
                ..TestRunOptions::new()
            })
            .context("running the reset program")?;
        match result.return_value {
            RESET_DONE => Ok(true),
            RESET_NOT_TRACKED => Ok(false),
            other => Err(anyhow!("the reset program answered {other}")),
        }
    }

    /// After the limits changed: a key whose limit now allows a shorter wait than its TAT says
    /// (a lower limit exhausted it, then a reload or an override raised it) gets its TAT brought
    /// down to what the new limit allows at most, so that it waits no longer than that. How many.
    fn bring_back_stale(&self, before: &StdHashMap<u32, Shown>) -> anyhow::Result<u64> {
        let lowered: StdHashMap<u32, Limit> = self
            .limits
            .iter()
            .filter(|(id, new)| {
                before
                    .get(id)
                    .is_some_and(|old| old.limit.tolerance_ns > new.limit.tolerance_ns)
            })
            .map(|(id, new)| (*id, new.limit))
            .collect();
        if lowered.is_empty() {
            return Ok(0);
        }
        let now = monotonic_now_ns();
        let mut stale = Vec::new();
        self.for_each_bucket(|key, state| {
            // Source keys only: an API key's rule id is not a rule's.
            if kind_of(key) != KeyKind::Source {
                return;
            }
            if let Some(limit) = lowered.get(&key.rule_id) {
                if state.tat_ns > now.saturating_add(limit.tolerance_ns) {
                    stale.push((*key, *limit));
                }
            }
        })?;
        let mut brought = 0;
        for (key, limit) in stale {
            let latest = monotonic_now_ns().saturating_add(limit.tolerance_ns);
            brought += self.lower_tat(&key, latest)? as u64;
        }
        Ok(brought)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// The COUNTERS map summed over the CPUs, by `counter_index`.
pub struct CounterSums(Vec<u64>);

impl CounterSums {
    /// One walk of a COUNTERS map (the datapath's, or a handle of a task's own).
    pub fn read(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<CounterSums> {
        let mut sums = vec![0u64; COUNTER_ENTRIES as usize];
        for (index, values) in map.iter().enumerate() {
            let values = values.context("reading the COUNTERS map")?;
            sums[index] = values.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(CounterSums(sums))
    }

    /// The counters of every interface (`None`) or of one interface slot.
    pub fn totals(&self, slot: Option<u32>) -> Counters {
        let slots = match slot {
            Some(slot) => slot..slot + 1,
            None => 0..MAX_INTERFACES,
        };
        let mut totals = Counters::default();
        for counter in Counter::ALL {
            let sum = slots
                .clone()
                .map(|slot| self.0[counter_index(slot, counter) as usize])
                .fold(0u64, u64::wrapping_add);
            totals.set(counter, sum);
        }
        totals
    }
}

/// A handle of its own on the pinned COUNTERS map, for a task that reads the counters without
/// taking the datapath's lock.
pub fn open_counters(pin_path: &std::path::Path) -> anyhow::Result<PerCpuArray<MapData, u64>> {
    let pin = pin_path.join(COUNTERS_MAP);
    let data = MapData::from_pin(&pin)
        .with_context(|| format!("opening the pinned map {}", pin.display()))?;
    Ok(PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?)
}

/// The answer to a list query: raw entries, described one at a time as they are written out.
pub struct KeyList {
    entries: Vec<(BucketKey, BucketState)>,
    limits: StdHashMap<u32, Shown>,
    api: Arc<ApiView>,
    now: u64,
    /// The quota words of the API keys among `entries`, by token hash.
    quota_words: StdHashMap<u64, QuotaWords>,
    /// The API keys' recent rates of quota use, by token hash.
    recent_rates: Arc<StdHashMap<u64, RecentRate>>,
}

impl KeyList {
    pub fn infos(&self) -> impl Iterator<Item = KeyInfo> + '_ {
        self.described().map(|(_, info)| info)
    }

    /// Each key with its description.
    pub fn described(&self) -> impl Iterator<Item = (&BucketKey, KeyInfo)> + '_ {
        self.entries.iter().filter_map(|(key, state)| {
            Some((
                key,
                describe(
                    key,
                    state,
                    self.now,
                    &self.limits,
                    &self.api,
                    &self.quota_words,
                    &self.recent_rates,
                )?,
            ))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &BucketKey> + '_ {
        self.entries.iter().map(|(key, _)| key)
    }
}

/// A rule's name and limit, for describing its keys: the limit enforced, the rate and burst as
/// configured.
#[derive(Clone, Debug)]
pub struct Shown {
    pub name: String,
    pub limit: Limit,
    pub rate: u64,
    pub burst: u64,
    /// An API key plan's quota.
    pub quota: Option<Quota>,
}

impl Shown {
    fn of(rule: &ResolvedRule) -> Shown {
        Shown {
            name: rule.name.clone(),
            limit: rule.limit,
            rate: rule.rate,
            burst: rule.burst,
            quota: None,
        }
    }
}

/// The name and limit of the rule with `rule_id`. A bucket of a rule that is no longer
/// configured is shown under the default limit until the LRU map evicts it.
fn rule_limit(limits: &StdHashMap<u32, Shown>, rule_id: u32) -> Option<Shown> {
    match limits.get(&rule_id) {
        Some(shown) => Some(shown.clone()),
        None => Some(Shown {
            name: format!("removed rule #{rule_id}"),
            ..limits.get(&DEFAULT_RULE_ID)?.clone()
        }),
    }
}

/// What a key is kept for.
pub fn kind_of(key: &BucketKey) -> KeyKind {
    match charge::api_key_hash(key) {
        Some(_) => KeyKind::ApiKey,
        None => KeyKind::Source,
    }
}

/// The name and limit `key`'s bucket is under: its rule's for a source key, its plan's (or
/// `[http]`'s) for an API key.
fn limit_of(key: &BucketKey, limits: &StdHashMap<u32, Shown>, api: &ApiView) -> Option<Shown> {
    match charge::api_key_hash(key) {
        Some(hash) => api.of(hash).map(|(shown, ..)| shown),
        None => rule_limit(limits, key.rule_id),
    }
}

fn describe(
    key: &BucketKey,
    state: &BucketState,
    now: u64,
    limits: &StdHashMap<u32, Shown>,
    api: &ApiView,
    quota_words: &StdHashMap<u64, QuotaWords>,
    recent_rates: &StdHashMap<u64, RecentRate>,
) -> Option<KeyInfo> {
    let (text, kind, api_key, shown) = match charge::api_key_hash(key) {
        Some(hash) => {
            let (shown, name, plan) = api.of(hash)?;
            let fingerprint = fingerprint(hash);
            let (text, _) = api.names(hash);
            let fields = ApiKeyFields {
                name: name.map(str::to_owned),
                fingerprint,
                plan: plan.map(str::to_owned),
            };
            (text, KeyKind::ApiKey, Some(fields), shown)
        }
        None => {
            let prefix = Prefix::from_bucket_key(key)?;
            let shown = rule_limit(limits, key.rule_id)?;
            (prefix.to_string(), KeyKind::Source, None, shown)
        }
    };
    let limit = &shown.limit;
    let quota = shown.quota.map(|quota| {
        let hash = charge::api_key_hash(key);
        let words = hash
            .and_then(|hash| quota_words.get(&hash).copied())
            .unwrap_or_default();
        let recent = hash.and_then(|hash| recent_rates.get(&hash).copied());
        quota_info(&quota, words, SystemTime::now(), recent)
    });
    Some(KeyInfo {
        key: text,
        kind,
        api_key,
        rule: shown.name,
        rate: shown.rate,
        burst: shown.burst,
        remaining: bucket::remaining(state.tat_ns, now, limit),
        exhausted: bucket::is_exhausted(state.tat_ns, now, limit),
        retry_after_ms: bucket::retry_after_ns(state.tat_ns, now, limit).div_ceil(1_000_000),
        passed: state.passed,
        dropped: state.dropped,
        would_drop: state.would_drop,
        quota,
    })
}
