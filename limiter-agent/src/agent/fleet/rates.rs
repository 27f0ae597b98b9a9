//! Per-key rates shared by the fleet: a key's rate (and burst) is divided among the hosts that
//! sent it requests lately, each host's kernel enforcing its share — written as the key's
//! entry in API_KEYS, so the request path is unchanged.
//!
//! Each sync the agent finds the API keys its kernel saw requests of since the previous sync
//! (their buckets' counters moved) and marks itself in each key's hosts hash in Redis
//! (`limiter:{HASH}:r`: host → when it last sent the key); the answer is how many hosts sent
//! the key within [`active_window`], and the share is `1 / hosts` of the limit.

use super::super::datapath::Datapath;
use limiter_common::charge::api_key_hash;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Marks the host as sending the key now (when ARGV[1] is 1) and answers how many hosts sent
/// it within ARGV[5] ms. KEYS: the key's hosts hash. ARGV: sent, host, now (ms), ttl (ms),
/// active (ms).
pub const RATE_REPORT: &str = r"
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local hosts = redis.call('HGETALL', KEYS[1])
local active = 0
for i = 1, #hosts, 2 do
  if tonumber(ARGV[3]) - tonumber(hosts[i + 1]) <= tonumber(ARGV[5]) then
    active = active + 1
  end
end
return active
";

/// A host counts as sending a key while it did within this: a few syncs, and at least a
/// second, so that a host is not forgotten between two of its syncs.
pub fn active_window(sync: Duration) -> Duration {
    (sync * 3).max(Duration::from_secs(1))
}

/// The keys this host sends, as the bucket map's counters tell.
#[derive(Default)]
pub struct RateActivity {
    /// Each API key's requests (passed + dropped) at the previous sample; none before the
    /// first.
    previous: Option<HashMap<u64, u64>>,
    /// When this host last saw requests of each key it shares the rate of, or did lately.
    last_sent: HashMap<u64, Instant>,
}

/// What the agent asks Redis about one key.
#[derive(Clone, Copy, Debug)]
pub struct RateReport {
    pub hash: u64,
    /// This host saw requests of the key since the previous sync.
    pub sent: bool,
}

impl RateActivity {
    /// The keys to report: those with requests since the previous sample, and those this host
    /// sent within `active` (their share is kept current while others send them). The first
    /// sample after a start only sets the baseline.
    pub fn sample(
        &mut self,
        datapath: &Datapath,
        active: Duration,
    ) -> anyhow::Result<Vec<RateReport>> {
        let mut now = HashMap::new();
        datapath.for_each_bucket(|key, state| {
            if let Some(hash) = api_key_hash(key) {
                now.insert(hash, state.passed + state.dropped);
            }
        })?;
        let at = Instant::now();
        let sent: Vec<u64> = match &self.previous {
            None => Vec::new(),
            // A key new since, or whose counters went down (evicted, created again): sent.
            Some(before) => now
                .iter()
                .filter(|(hash, &count)| before.get(hash).is_none_or(|&b| count != b))
                .filter(|(_, &count)| count > 0)
                .map(|(&hash, _)| hash)
                .collect(),
        };
        self.previous = Some(now);
        for &hash in &sent {
            self.last_sent.insert(hash, at);
        }
        self.last_sent
            .retain(|_, last| at.duration_since(*last) <= active);
        let mut reports: Vec<RateReport> = self
            .last_sent
            .keys()
            .map(|&hash| RateReport { hash, sent: false })
            .collect();
        for report in &mut reports {
            report.sent = sent.contains(&report.hash);
        }
        Ok(reports)
    }
}

/// Among how many hosts this host shares a key's rate, given how many Redis saw send it: a
/// host that did not send it since the last sync counts itself in as well, as its next
/// requests would make it one more.
pub fn hosts_sharing(active_in_redis: u64, sent_now: bool) -> u32 {
    let hosts = if sent_now {
        active_in_redis
    } else {
        active_in_redis + 1
    };
    hosts.clamp(1, u64::from(u32::MAX)) as u32
}

/// Makes the kernel enforce each key's share: only what changed is written; a key no longer
/// sent here gets its whole limit back (it is written as it was before the fleet).
pub fn apply_shares(datapath: &Datapath, wanted: &HashMap<u64, u32>) -> anyhow::Result<()> {
    let current = datapath.fleet_shares();
    for (&hash, &hosts) in wanted {
        if current.get(&hash).copied().unwrap_or(1) != hosts {
            datapath.set_fleet_share(hash, hosts)?;
        }
    }
    for &hash in current.keys() {
        if !wanted.contains_key(&hash) {
            datapath.set_fleet_share(hash, 1)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_did_not_send_counts_itself_in() {
        assert_eq!(hosts_sharing(0, false), 1);
        assert_eq!(hosts_sharing(1, true), 1);
        assert_eq!(hosts_sharing(2, false), 3);
        assert_eq!(hosts_sharing(3, true), 3);
        // Redis never answers 0 for a key this host just sent; if it did, the whole limit.
        assert_eq!(hosts_sharing(0, true), 1);
    }

    #[test]
    fn the_active_window_spans_a_few_syncs_and_at_least_a_second() {
        assert_eq!(
            active_window(Duration::from_millis(10)),
            Duration::from_secs(1)
        );
        assert_eq!(
            active_window(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
    }
}
