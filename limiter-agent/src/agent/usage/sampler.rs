//! From the kernel's per-key counters to usage per minute: each sample of the bucket map is
//! compared with the one before it, and what each key passed and had dropped since is added to
//! the minute being recorded.
//!
//! The counters of a bucket only grow while it lives, but a bucket can be evicted and created
//! again between two samples: a key seen for the first time, or whose counters went down,
//! counts as new (all it holds is since the previous sample, or nearly). The first sample after
//! a start only sets the baseline: the counters then hold what came before this agent.

use super::{Counts, UsageKey};
use limiter_common::maps::BucketKey;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The previous sample, sorted by key: a million keys take 40 MB (a hash map would take twice
/// that), and the next sample is matched against it in one pass.
#[derive(Default)]
pub struct Sampler {
    previous: Option<Vec<(BucketKey, Counts)>>,
}

impl Sampler {
    /// Keys in the previous sample.
    pub fn keys(&self) -> usize {
        self.previous.as_ref().map_or(0, Vec::len)
    }

    /// What each key passed and had dropped since the previous sample, given every bucket's
    /// counters now; nothing on the first call.
    pub fn deltas(&mut self, mut now: Vec<(BucketKey, Counts)>) -> Vec<(BucketKey, Counts)> {
        now.sort_unstable_by_key(|(key, _)| *key);
        let deltas = match &self.previous {
            None => Vec::new(),
            Some(previous) => {
                let mut before = previous.iter().peekable();
                now.iter()
                    .filter_map(|(key, counts)| {
                        while before.next_if(|(k, _)| k < key).is_some() {}
                        let delta = match before.next_if(|(k, _)| k == key) {
                            Some((_, before))
                                if counts.passed >= before.passed
                                    && counts.dropped >= before.dropped =>
                            {
                                *counts - *before
                            }
                            // New, or evicted and created again since.
                            _ => *counts,
                        };
                        (!delta.is_zero()).then_some((*key, delta))
                    })
                    .collect()
            }
        };
        self.previous = Some(now);
        deltas
    }
}

/// The minute being recorded: every key's counts in it so far, and what the store holds of it.
pub struct Minute {
    /// Minutes since the Unix epoch.
    pub index: u32,
    pub total: Counts,
    pub keys: HashMap<UsageKey, Counts>,
    /// The rows the store holds for this minute, by key id (see `Store::write_minute`).
    pub written: HashMap<u32, Counts>,
}

impl Minute {
    pub fn new(index: u32) -> Minute {
        Minute {
            index,
            total: Counts::default(),
            keys: HashMap::new(),
            written: HashMap::new(),
        }
    }

    /// Adds what buckets passed and had dropped (keys that name no bucket of a source or an
    /// API key are left out of the keys, not of the total).
    pub fn add(&mut self, deltas: &[(BucketKey, Counts)]) {
        for (bucket, delta) in deltas {
            self.total += *delta;
            if let Some(key) = UsageKey::of(bucket) {
                *self.keys.entry(key).or_default() += *delta;
            }
        }
    }

    /// The `keep` busiest keys of the minute (passed and dropped together; on a tie the first
    /// in key order), busiest first. Kept in a heap of `keep`: a flood of a million keys in a
    /// minute costs no list of them all.
    pub fn busiest(&self, keep: usize) -> Vec<(UsageKey, Counts)> {
        // The least busy kept so far on top, to be pushed out by a busier one.
        let mut heap = BinaryHeap::with_capacity(keep + 1);
        for (key, counts) in &self.keys {
            heap.push(Reverse((counts.sum(), Reverse(*key), *counts)));
            if heap.len() > keep {
                heap.pop();
            }
        }
        let mut kept: Vec<_> = heap
            .into_iter()
            .map(|Reverse((_, Reverse(key), counts))| (key, counts))
            .collect();
        kept.sort_unstable_by(|a, b| b.1.sum().cmp(&a.1.sum()).then(a.0.cmp(&b.0)));
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_common::key::Prefix;

    fn source(text: &str) -> BucketKey {
        text.parse::<Prefix>().unwrap().to_bucket_key(0)
    }

    fn counts(passed: u64, dropped: u64) -> Counts {
        Counts { passed, dropped }
    }

    #[test]
    fn deltas_are_what_came_since_the_previous_sample_and_nothing_is_garbage() {
        let (a, b, c) = (
            source("198.18.0.1"),
            source("198.18.0.2"),
            source("198.18.0.3"),
        );
        let mut sampler = Sampler::default();
        // The baseline: what the counters held before the agent started is not this minute's.
        let first = sampler.deltas(vec![(b, counts(7, 0)), (a, counts(100, 5))]);
        assert!(first.is_empty());
        // a counted on; b evicted and created again with less than before; c new.
        let second = sampler.deltas(vec![
            (c, counts(4, 1)),
            (a, counts(130, 9)),
            (b, counts(2, 0)),
        ]);
        assert_eq!(
            second,
            [(a, counts(30, 4)), (b, counts(2, 0)), (c, counts(4, 1))]
        );
        // b vanished (evicted), then came back: its counters are all new.
        assert_eq!(sampler.deltas(vec![(a, counts(130, 9))]), []);
        assert_eq!(
            sampler.deltas(vec![(a, counts(130, 9)), (b, counts(3, 0))]),
            [(b, counts(3, 0))]
        );
        // Passed went on while dropped went down: created again, all new.
        assert_eq!(
            sampler.deltas(vec![(a, counts(131, 0)), (b, counts(3, 0))]),
            [(a, counts(131, 0))]
        );
    }

    #[test]
    fn a_minute_sums_deltas_by_key_and_keeps_the_busiest() {
        let mut minute = Minute::new(1);
        // Two buckets of one prefix (of two rules) are one key.
        let one_rule = source("198.18.0.1");
        let other_rule = "198.18.0.1".parse::<Prefix>().unwrap().to_bucket_key(7);
        let quiet = source("198.18.0.2");
        let busy = source("198.18.0.3");
        minute.add(&[
            (one_rule, counts(3, 0)),
            (quiet, counts(1, 0)),
            (busy, counts(2, 9)),
        ]);
        minute.add(&[(other_rule, counts(4, 1))]);
        assert_eq!(minute.total, counts(10, 10));
        let busiest = minute.busiest(2);
        let names: Vec<_> = busiest.iter().map(|(k, c)| (k.to_string(), *c)).collect();
        assert_eq!(
            names,
            [
                ("198.18.0.3/32".to_owned(), counts(2, 9)),
                ("198.18.0.1/32".to_owned(), counts(7, 1))
            ]
        );
        assert_eq!(minute.busiest(10).len(), 3);
        // A tie goes to the first in key order.
        minute.add(&[(quiet, counts(7, 0))]);
        let names: Vec<_> = minute
            .busiest(2)
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(names, ["198.18.0.3/32", "198.18.0.1/32"]);
        let names: Vec<_> = minute
            .busiest(3)
            .iter()
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(names, ["198.18.0.3/32", "198.18.0.1/32", "198.18.0.2/32"]);
    }
}
