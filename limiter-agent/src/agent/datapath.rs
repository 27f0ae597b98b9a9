//! The loaded XDP object and its maps: everything the agent reads from or writes to the kernel.

use crate::api::{KeyInfo, SortBy};
use anyhow::{anyhow, Context};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::Ebpf;
use limiter_common::bucket::{self, Limit};
use limiter_common::key::Prefix;
use limiter_common::maps::{
    BucketKey, BucketState, Counter, DatapathConfig, BUCKETS_MAP, CONFIG_MAP, COUNTERS_MAP,
    RESET_PROG,
};

/// XDP verdicts of the reset program (see limiter-ebpf).
const RESET_DONE: u32 = 2; // XDP_PASS
const RESET_NOT_TRACKED: u32 = 1; // XDP_DROP

pub struct Datapath {
    /// Owns the programs; the maps below were taken out of it.
    ebpf: Ebpf,
    buckets: HashMap<MapData, BucketKey, BucketState>,
    config: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, u64>,
    /// The limit in force, for computing `remaining` and `retry_after_ms`.
    limit: Limit,
}

/// Sums of the global per-CPU counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub passed: u64,
    pub dropped: u64,
    pub not_limited: u64,
    pub insert_failed: u64,
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
            limit: Limit::new(1, 1),
        })
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Tells the datapath the configuration; it applies to the next packet.
    pub fn apply(&mut self, config: DatapathConfig) -> anyhow::Result<()> {
        self.config
            .set(0, config, 0)
            .context("writing the CONFIG map")?;
        self.limit = config.default_limit;
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
            not_limited: sum(Counter::NotLimited)?,
            insert_failed: sum(Counter::InsertFailed)?,
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
        let limit = &self.limit;
        Some(KeyInfo {
            key: prefix.to_string(),
            rule: "default".to_owned(),
            rate: limit.rate(),
            burst: limit.burst(),
            remaining: bucket::remaining(state.tat_ns, now, limit),
            exhausted: bucket::is_exhausted(state.tat_ns, now, limit),
            retry_after_ms: bucket::retry_after_ns(state.tat_ns, now, limit).div_ceil(1_000_000),
            passed: state.passed,
            dropped: state.dropped,
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
