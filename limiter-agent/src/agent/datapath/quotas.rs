//! API keys' quota counts and top-ups (QUOTAS, QUOTA_TOPUPS), and the fleet's moves of them
//! and shares of their rates (API_KEYS).

use super::*;

impl Datapath {
    /// Gives the API key `key` its whole quota back for the window now; false when it is not
    /// an API key or its plan has no quota. (The kernel's compare-and-swap of a request at the
    /// same moment is overwritten: the reset wins.)
    pub fn reset_quota(&self, key: &BucketKey) -> anyhow::Result<bool> {
        let Some(hash) = charge::api_key_hash(key) else {
            return Ok(false);
        };
        let Some(quota) = self.api.of(hash).and_then(|(shown, _, _)| shown.quota) else {
            return Ok(false);
        };
        let utc_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let tag = quota::window(quota.period, utc_secs).tag;
        self.quotas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counts
            .insert(hash, quota::Usage { tag, used: 0 }.word(), 0)
            .context("writing the QUOTAS map")?;
        Ok(true)
    }

    /// The quota of the API key whose token hashes to `hash` in the window now; none when its
    /// plan (or `[http]`) has none. (Whether or not its bucket is tracked.)
    pub fn quota_info_of(&self, hash: u64) -> Option<QuotaInfo> {
        let quota = self.api.of(hash).and_then(|(shown, _, _)| shown.quota)?;
        let words = self
            .quotas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .words(hash);
        let recent = self.recent_rates().get(&hash).copied();
        Some(quota_info(&quota, words, SystemTime::now(), recent))
    }

    /// Every API key's quota words the datapath holds (counts and top-ups), by token hash. (In
    /// batches: the quota watcher and the checkpoint read them every second, up to
    /// `MAX_QUOTA_KEYS` of them.)
    pub fn quota_words(&self) -> anyhow::Result<StdHashMap<u64, QuotaWords>> {
        use aya::maps::IterableMap;
        use std::os::fd::{AsFd, AsRawFd};
        let maps = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        let mut words: StdHashMap<u64, QuotaWords> = StdHashMap::new();
        let fd = maps.counts.map().fd().as_fd().as_raw_fd();
        limiter_common::batch::for_each_u64_entry(fd, |hash, usage| {
            words.entry(*hash).or_default().usage = *usage;
        })
        .context("reading the QUOTAS map")?;
        let fd = maps.top_ups.map().fd().as_fd().as_raw_fd();
        limiter_common::batch::for_each_u64_entry(fd, |hash, top_up| {
            words.entry(*hash).or_default().top_up = *top_up;
        })
        .context("reading the QUOTA_TOPUPS map")?;
        Ok(words)
    }

    /// Brings back quota words saved before (`quota_checkpoint`), each where the datapath holds
    /// less for that key — an earlier window, or fewer requests in the same one; what it holds
    /// already counts at least as much (the maps outlived the agent) and is left alone. Only
    /// words of windows not over yet are taken, for keys that have a quota now.
    pub fn restore_quota_words(
        &self,
        saved: &StdHashMap<u64, QuotaWords>,
    ) -> anyhow::Result<Restored> {
        let now = SystemTime::now();
        let mut maps = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        let mut restored = Restored::default();
        for (&hash, words) in saved {
            let quota = self.api.of(hash).and_then(|(shown, _, _)| shown.quota);
            let Some(quota) = quota else {
                restored.skipped += 1;
                continue;
            };
            let current = maps.words(hash);
            let usage_counts =
                !window_is_over(&quota, quota::Usage::from_word(words.usage).tag, now);
            if usage_counts && words.usage > current.usage {
                // A plain write: this runs before the program is attached, or over maps that
                // hold more already (see above).
                maps.counts
                    .insert(hash, words.usage, 0)
                    .context("writing the QUOTAS map")?;
                restored.counts += 1;
            } else if !usage_counts {
                restored.skipped += 1;
            }
            let top_up_counts =
                !window_is_over(&quota, quota::TopUp::from_word(words.top_up).tag, now);
            if top_up_counts && words.top_up > current.top_up {
                maps.top_ups
                    .insert(hash, words.top_up, 0)
                    .context("writing the QUOTA_TOPUPS map")?;
                restored.top_ups += 1;
            }
        }
        Ok(restored)
    }

    /// Adds `add` requests to the quota of the API key whose token hashes to `hash`, for the
    /// window now; the key's quota after it. Top-ups of windows that ended are removed first,
    /// so the map holds only those that still count.
    pub fn top_up_quota(
        &self,
        hash: u64,
        add: u32,
    ) -> anyhow::Result<Result<QuotaInfo, TopUpRefusal>> {
        let Some(quota) = self.api.of(hash).and_then(|(shown, _, _)| shown.quota) else {
            return Ok(Err(TopUpRefusal::NoQuota));
        };
        let now = SystemTime::now();
        let mut maps = self.quotas.lock().unwrap_or_else(|p| p.into_inner());
        let words = maps.words(hash);
        let word = match topped_up(&quota, words, add, now) {
            Ok(word) => word,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let over: Vec<u64> = maps
            .top_ups
            .iter()
            .filter_map(Result::ok)
            .filter(|(other, top_up)| {
                let quota = self.api.of(*other).and_then(|(shown, _, _)| shown.quota);
                top_up_is_over(quota.as_ref(), *top_up, now)
            })
            .map(|(other, _)| other)
            .collect();
        for other in over {
            // Gone meanwhile is as good as removed.
            let _ = maps.top_ups.remove(&other);
        }
        match maps.top_ups.insert(hash, word, 0) {
            Ok(()) => {}
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                return Ok(Err(TopUpRefusal::Full));
            }
            Err(err) => return Err(err).context("writing the QUOTA_TOPUPS map"),
        }
        let words = QuotaWords {
            top_up: word,
            ..words
        };
        let recent = self.recent_rates().get(&hash).copied();
        Ok(Ok(quota_info(&quota, words, now, recent)))
    }

    /// Moves the quota count of the API key of token hash `hash` in window `tag` by `delta`
    /// requests, in the kernel (a compare-and-swap: requests counted at the same moment stay
    /// counted). False when its count is of a later window (left alone).
    pub fn adjust_quota(&self, hash: u64, tag: u32, delta: i64) -> anyhow::Result<bool> {
        let program: &Xdp = self
            .ebpf
            .program(QUOTA_ADJUST_PROG)
            .ok_or_else(|| anyhow!("no program {QUOTA_ADJUST_PROG}"))?
            .try_into()?;
        let request = QuotaAdjust {
            hash,
            delta,
            tag,
            _pad: 0,
        };
        for _ in 0..3 {
            let result = program
                .test_run(TestRunOptions {
                    data_in: Some(request.as_bytes()),
                    ..TestRunOptions::new()
                })
                .context("running the quota-adjust program")?;
            match result.return_value {
                ADJUST_DONE => return Ok(true),
                ADJUST_LATER_WINDOW => return Ok(false),
                // Lost every compare-and-swap to the datapath: again.
                ADJUST_BUSY => continue,
                other => return Err(anyhow!("the quota-adjust program answered {other}")),
            }
        }
        Err(anyhow!(
            "the quota-adjust program lost its compare-and-swap three times over"
        ))
    }

    /// Makes this host's kernel enforce `1 / hosts` of the rate and burst of the API key of
    /// token hash `hash` (its plan's, or the `[http]` default's): the fleet shares the key's
    /// rate among the hosts that use it. `hosts` ≤ 1 gives it back its whole limit.
    pub fn set_fleet_share(&self, hash: u64, hosts: u32) -> anyhow::Result<()> {
        let Some((config, _)) = &self.applied else {
            return Ok(());
        };
        let mut shares = self.fleet_shares.lock().unwrap_or_else(|p| p.into_inner());
        let mut map = self.api_keys_map.lock().unwrap_or_else(|p| p.into_inner());
        let key = self.registered.iter().find(|k| k.hash == hash);
        if hosts > 1 {
            shares.insert(hash, hosts);
        } else {
            shares.remove(&hash);
        }
        match api_key_entry(config, key, hosts) {
            Some(entry) => map
                .insert(hash, entry, 0)
                .context("writing the API_KEYS map"),
            None => match map.remove(&hash) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(err) => Err(err).context("removing from the API_KEYS map"),
            },
        }
    }

    /// The API keys whose rate this host shares with others, and among how many hosts.
    pub fn fleet_shares(&self) -> StdHashMap<u64, u32> {
        self.fleet_shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
