//! Usage history: what each key passed and had dropped, per minute, for the last 7 days, for
//! `limiter usage`. Kept in `usage.redb` in the state directory, so it survives restarts.
//!
//! Every [`SAMPLE_INTERVAL`] the agent reads every bucket's counters, adds what each key did
//! since the sample before to the minute now (`sampler`), and writes that minute's rows: the
//! totals over all keys and the `[usage] keys` busiest keys of the minute (`store`). A restart
//! loses at most one interval; an API key is recorded by its fingerprint, never its token.
//! Nothing here touches the datapath's maps: a history that cannot be read or written is
//! logged and costs enforcement nothing.

mod query;
mod sampler;
mod store;
mod synthetic;

pub use query::{answer, Wanted};
pub use synthetic::{fill, FillArgs};

use super::api_keys::fingerprint;
use super::datapath::Datapath;
use limiter_common::charge;
use limiter_common::key::Prefix;
use limiter_common::maps::BucketKey;
use sampler::{Minute, Sampler};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::Store;
use tracing::{info, warn};

/// How often the counters are sampled and the minute written: what a restart loses at most,
/// and how soon `limiter usage` shows traffic.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// How long the history goes back.
pub const KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
const KEPT_MINUTES: u32 = (KEPT.as_secs() / 60) as u32;
/// While writes fail, the file is opened again this often (redb wants that after an I/O
/// error; opening a large file that needs a repair costs a read of it).
const REOPEN_EVERY: Duration = Duration::from_secs(30);

/// Passed and dropped, of a key or of all keys, over some time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Counts {
    pub passed: u64,
    pub dropped: u64,
}

impl Counts {
    pub fn sum(self) -> u64 {
        self.passed.saturating_add(self.dropped)
    }

    pub fn is_zero(self) -> bool {
        self == Counts::default()
    }

    fn pair(self) -> (u64, u64) {
        (self.passed, self.dropped)
    }
}

impl From<(u64, u64)> for Counts {
    fn from((passed, dropped): (u64, u64)) -> Counts {
        Counts { passed, dropped }
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.passed = self.passed.saturating_add(other.passed);
        self.dropped = self.dropped.saturating_add(other.dropped);
    }
}

impl std::ops::Add for Counts {
    type Output = Counts;
    fn add(mut self, other: Counts) -> Counts {
        self += other;
        self
    }
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    /// Saturating: never below zero.
    fn sub(self, other: Counts) -> Counts {
        Counts {
            passed: self.passed.saturating_sub(other.passed),
            dropped: self.dropped.saturating_sub(other.dropped),
        }
    }
}

/// A key as the history records it: a source prefix, or an API key by its token's keyed hash
/// (written as `key:FINGERPRINT`; shown as `key:NAME` while it is registered under a name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UsageKey {
    Source(Prefix),
    ApiKey(u64),
}

impl UsageKey {
    /// The key a bucket counts for; `None` for bytes no datapath writes.
    pub fn of(bucket: &BucketKey) -> Option<UsageKey> {
        match charge::api_key_hash(bucket) {
            Some(hash) => Some(UsageKey::ApiKey(hash)),
            None => Prefix::from_bucket_key(bucket).map(UsageKey::Source),
        }
    }

    /// The key written as `text` (by [`UsageKey`]'s `Display`).
    pub fn parse(text: &str) -> Option<UsageKey> {
        match text.strip_prefix("key:") {
            Some(hex) => u64::from_str_radix(hex, 16).ok().map(UsageKey::ApiKey),
            None => text.parse().ok().map(UsageKey::Source),
        }
    }
}

impl std::fmt::Display for UsageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsageKey::Source(prefix) => write!(f, "{prefix}"),
            UsageKey::ApiKey(hash) => write!(f, "key:{}", fingerprint(*hash)),
        }
    }
}

/// The history: its file, and the minute being recorded into it.
pub struct History {
    store: Store,
    recorder: Mutex<Recorder>,
}

struct Recorder {
    sampler: Sampler,
    /// None until the first sample.
    minute: Option<Minute>,
    /// When writing last failed and was said (said once a minute at most while it lasts).
    failing_since: Option<SystemTime>,
    /// When the file was last opened again after a failure (see `Store::reopen`).
    reopened_at: Option<SystemTime>,
}

impl History {
    /// Opens the history in `state_dir` (see `Store::open`).
    pub fn open(state_dir: &Path) -> anyhow::Result<History> {
        Ok(History {
            store: Store::open(state_dir)?,
            recorder: Mutex::new(Recorder {
                sampler: Sampler::default(),
                minute: None,
                failing_since: None,
                reopened_at: None,
            }),
        })
    }

    /// Samples the counters and writes the minute, keeping its `keep` busiest keys. The first
    /// call takes the baseline and picks up the minute the store holds (after a restart).
    pub fn record(&self, datapath: &Datapath, keep: usize, now: SystemTime) {
        let mut recorder = self.recorder.lock().unwrap_or_else(|p| p.into_inner());
        let mut buckets = Vec::with_capacity(recorder.sampler.keys() + 1024);
        let read = datapath.for_each_bucket(|key, state| {
            let counts = Counts {
                passed: state.passed,
                dropped: state.dropped,
            };
            buckets.push((*key, counts));
        });
        if let Err(err) = read {
            recorder.failed(&format!("reading the counters: {err:#}"), now);
            return;
        }
        let deltas = recorder.sampler.deltas(buckets);
        self.record_deltas(&mut recorder, &deltas, keep, now);
    }

    /// Adds `deltas` to the minute of `now` and writes it. A new minute starts from nothing
    /// (the one before was written with its last sample), and is the moment to prune; a failure
    /// is said, and what could be kept is kept for the next write.
    fn record_deltas(
        &self,
        recorder: &mut Recorder,
        deltas: &[(BucketKey, Counts)],
        keep: usize,
        now: SystemTime,
    ) {
        let index = minute_of(now);
        let reopen_due = recorder
            .reopened_at
            .is_none_or(|at| now.duration_since(at).unwrap_or_default() >= REOPEN_EVERY);
        if recorder.failing_since.is_some() && reopen_due {
            recorder.reopened_at = Some(now);
            if let Err(err) = self.store.reopen() {
                recorder.failed(&format!("opening the usage history again: {err:#}"), now);
            }
        }
        let mut failure = None;
        let minute = match recorder.minute.take() {
            Some(minute) if minute.index == index => minute,
            before => {
                failure = self.store.prune(index).err();
                match before {
                    Some(_) => Minute::new(index),
                    // The first sample: after a restart the store may hold this minute already.
                    None => self.resume(index).unwrap_or_else(|err| {
                        failure.get_or_insert(err);
                        Minute::new(index)
                    }),
                }
            }
        };
        let minute = recorder.minute.insert(minute);
        minute.add(deltas);
        match self
            .store
            .write_minute(index, minute.total, &minute.busiest(keep), &minute.written)
        {
            Ok(written) => minute.written = written,
            Err(err) => failure = Some(err),
        }
        match failure {
            None => {
                if recorder.failing_since.take().is_some() {
                    info!("the usage history is written again");
                }
            }
            Some(err) => recorder.failed(&format!("writing the usage history: {err:#}"), now),
        }
    }

    /// Minute `index` as the store holds it (written before a restart), to count on from.
    fn resume(&self, index: u32) -> anyhow::Result<Minute> {
        let rows = self.store.minute_rows(index)?;
        let mut minute = Minute::new(index);
        minute.total = rows.total;
        minute.written.insert(store::TOTAL, rows.total);
        for (id, key, counts) in rows.keys {
            minute.keys.insert(key, counts);
            minute.written.insert(id, counts);
        }
        Ok(minute)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Recorder {
    fn failed(&mut self, what: &str, now: SystemTime) {
        let said = self
            .failing_since
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() < Duration::from_secs(60));
        if !said {
            warn!(
                "{what} (tried again every {} s; enforcement is not affected)",
                SAMPLE_INTERVAL.as_secs()
            );
            self.failing_since = Some(now);
        }
    }
}

/// Minutes since the Unix epoch.
fn minute_of(at: SystemTime) -> u32 {
    (at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60) as u32
}

/// Records every [`SAMPLE_INTERVAL`] until the runtime ends (the first sample is the caller's:
/// see `agent::run`).
pub fn spawn(history: Arc<History>, state: Arc<super::state::AgentState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now: the caller sampled already.
        tick.tick().await;
        loop {
            tick.tick().await;
            let history = Arc::clone(&history);
            let state = Arc::clone(&state);
            let _ = tokio::task::spawn_blocking(move || {
                let keep = state.config().usage.keys as usize;
                history.record(&state.datapath(), keep, SystemTime::now());
            })
            .await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(passed: u64, dropped: u64) -> Counts {
        Counts { passed, dropped }
    }

    fn source(text: &str) -> BucketKey {
        text.parse::<Prefix>().unwrap().to_bucket_key(0)
    }

    fn at_minute(minute: u32, second: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::from(minute) * 60 + second)
    }

    fn recorder() -> Recorder {
        Recorder {
            sampler: Sampler::default(),
            minute: None,
            failing_since: None,
            reopened_at: None,
        }
    }

    #[test]
    fn key_names_read_back_as_they_are_written() {
        for text in ["198.18.0.10/32", "2001:2::/64", "key:00000000deadbeef"] {
            assert_eq!(UsageKey::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            UsageKey::of(&charge::api_key(0xdead_beef)),
            Some(UsageKey::ApiKey(0xdead_beef))
        );
        assert_eq!(UsageKey::parse("key:acme"), None);
    }

    #[test]
    fn minutes_are_written_as_they_go_and_picked_up_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let minute = 29_000_000;
        let a = source("198.18.0.1");
        let b = source("198.18.0.2");
        {
            let history = History::open(dir.path()).unwrap();
            let mut recorder = recorder();
            history.record_deltas(&mut recorder, &[(a, counts(3, 1))], 1, at_minute(minute, 5));
            history.record_deltas(
                &mut recorder,
                &[(a, counts(2, 0)), (b, counts(1, 0))],
                1,
                at_minute(minute, 10),
            );
            let rows = history.store.minute_rows(minute).unwrap();
            assert_eq!(rows.total, counts(6, 1));
            assert_eq!(rows.keys.len(), 1, "the busiest one only");
            assert_eq!(rows.keys[0].2, counts(5, 1));
        }
        // A new agent in the same minute counts on from what was written.
        let history = History::open(dir.path()).unwrap();
        let mut recorder = recorder();
        history.record_deltas(
            &mut recorder,
            &[(a, counts(1, 0))],
            1,
            at_minute(minute, 30),
        );
        let rows = history.store.minute_rows(minute).unwrap();
        assert_eq!(rows.total, counts(7, 1));
        assert_eq!(rows.keys[0].2, counts(6, 1));
        // The next minute starts from nothing; the one before stays as it was.
        history.record_deltas(
            &mut recorder,
            &[(b, counts(4, 4))],
            1,
            at_minute(minute + 1, 1),
        );
        let rows = history.store.minute_rows(minute + 1).unwrap();
        assert_eq!((rows.total, rows.keys.len()), (counts(4, 4), 1));
        assert_eq!(
            history.store.minute_rows(minute).unwrap().total,
            counts(7, 1)
        );
        let hour = history
            .store
            .rows(store::Table::Hours, store::TOTAL, minute / 60, minute / 60)
            .unwrap();
        assert_eq!(hour, [(minute / 60, counts(11, 5))]);
    }
}
