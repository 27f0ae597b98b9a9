//! The quota watcher: once a second it reads every API key's count in its quota window (the
//! QUOTAS map), keeps each key's recent rate of use (published to the datapath, where `inspect`
//! and the metrics' forecasts take it), and alerts each `[alerts] thresholds` percent a key
//! reaches — once per key, threshold and window — by a log line, the counter
//! `limiter_quota_alerts_total{threshold}` and, with `[alerts] webhook`, the webhook queue the
//! exhaustion alerts go to.
//!
//! What was alerted is kept in `--state-dir` ([`ALERTED_FILE`]), written before the alerts go
//! out, so that a restarted agent neither repeats them nor misses one reached while it was
//! stopped. A file that cannot be read is said so in the log, and the thresholds keys have
//! reached by then are taken as alerted: a missed alert rather than a flood of repeated ones.
//! Keys are named by their registered name or their fingerprint, never their token.

use super::webhook::{Alert, QuotaAlert, Undelivered};
use super::LOG_LINES_PER_SEC;
use crate::agent::config::WebhookUrl;
use crate::agent::private_file;
use crate::agent::quotas::{newly_crossed, quota_info, Alerted, RateSampler};
use crate::agent::state::AgentState;
use crate::api::rfc3339;
use anyhow::Context;
use limiter_common::quota;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// What was alerted, by key, in the state directory.
pub const ALERTED_FILE: &str = "quota-alerts.json";
/// How often the counts are read.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Starts the watcher on a thread of its own (its map walks are blocking syscalls).
pub fn spawn(
    state: Arc<AgentState>,
    state_dir: &Path,
    queue: mpsc::Sender<Alert>,
    undelivered: Arc<Undelivered>,
) -> anyhow::Result<()> {
    let mut watcher = QuotaWatcher {
        state,
        queue,
        undelivered,
        sampler: RateSampler::default(),
        alerted: AlertedStore::load(state_dir.join(ALERTED_FILE)),
        started: Instant::now(),
    };
    std::thread::Builder::new()
        .name("quota-watch".into())
        .spawn(move || loop {
            let began = Instant::now();
            watcher.tick();
            std::thread::sleep(WATCH_EVERY.saturating_sub(began.elapsed()));
        })
        .context("starting the quota watcher")?;
    Ok(())
}

struct QuotaWatcher {
    state: Arc<AgentState>,
    queue: mpsc::Sender<Alert>,
    undelivered: Arc<Undelivered>,
    sampler: RateSampler,
    alerted: AlertedStore,
    /// The origin of the samples' monotonic times.
    started: Instant,
}

impl QuotaWatcher {
    fn tick(&mut self) {
        let config = self.state.config();
        let thresholds = config.alerts.thresholds();
        let (words, api) = {
            let datapath = self.state.datapath();
            (datapath.quota_words(), datapath.api())
        };
        let words = match words {
            Ok(words) => words,
            Err(err) => {
                warn!("quota watcher: {err:#}");
                return;
            }
        };
        let now = SystemTime::now();
        let utc_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let at = self.started.elapsed();
        let mut rates = HashMap::new();
        let mut current = HashSet::new();
        let mut alerts = Vec::new();
        for (hash, words) in words {
            let Some((quota, plan)) = api.quota_of(hash) else {
                continue;
            };
            let usage = quota::Usage::from_word(words.usage);
            // A count of an earlier window is no use now; one of a later window (the clock
            // stepped back) is looked at once the clock is there again.
            let tag = quota::window(quota.period, utc_secs).tag;
            if usage.tag != tag {
                continue;
            }
            // Percents of the quota this window: with what `limiter quota --add` added.
            let limit = quota::limit_with_top_up(quota.limit, words.top_up, words.usage, tag);
            current.insert(hash);
            let rate = self.sampler.observe(hash, usage, at);
            if let Some(rate) = rate {
                rates.insert(hash, rate);
            }
            let (crossed, after) = newly_crossed(self.alerted.get(hash), usage, limit, &thresholds);
            let Some(after) = after.filter(|_| !crossed.is_empty()) else {
                continue;
            };
            self.alerted.set(hash, after);
            if self.alerted.deriving {
                continue;
            }
            let info = quota_info(&quota, words, now, rate);
            let (key, _) = api.names(hash);
            for threshold in crossed {
                alerts.push(QuotaAlert {
                    kind: QuotaAlert::KIND,
                    key: key.clone(),
                    plan: plan.map(str::to_owned),
                    threshold,
                    used: info.used,
                    limit: info.limit,
                    period: info.period.clone(),
                    resets_at: info.resets_at.clone(),
                    exhausts_at: info.exhausts_at.clone(),
                    at: rfc3339(now),
                });
            }
        }
        self.sampler.retain(|hash| current.contains(&hash));
        // Keys of past windows are armed again anyway.
        self.alerted.retain(|hash| current.contains(&hash));
        self.alerted.deriving = false;
        self.alerted.save();
        self.state.datapath().publish_recent_rates(rates);
        if !alerts.is_empty() {
            let webhook = config
                .alerts
                .webhook
                .as_deref()
                .is_some_and(|url| WebhookUrl::parse(url).is_ok());
            self.send(alerts, webhook);
        }
    }

    /// Logs, counts and queues `alerts` (already saved as alerted).
    fn send(&self, alerts: Vec<QuotaAlert>, webhook: bool) {
        let (mut unlogged, mut queue_full) = (0u64, 0u64);
        for (i, alert) in alerts.into_iter().enumerate() {
            self.state.count_quota_alert(alert.threshold);
            if (i as u64) < LOG_LINES_PER_SEC {
                info!(
                    key = %alert.key,
                    plan = %alert.plan.as_deref().unwrap_or("[http]"),
                    threshold = alert.threshold,
                    used = alert.used,
                    limit = alert.limit,
                    period = %alert.period,
                    resets_at = %alert.resets_at,
                    exhausts_at = %alert.exhausts_at.as_deref().unwrap_or("not this window"),
                    "quota threshold reached"
                );
            } else {
                unlogged += 1;
            }
            if webhook && self.queue.try_send(Alert::QuotaThreshold(alert)).is_err() {
                self.undelivered.dropped.fetch_add(1, Ordering::Relaxed);
                queue_full += 1;
            }
        }
        if unlogged > 0 {
            info!(
                more = unlogged,
                "{unlogged} more quota thresholds reached in the last second (not logged one by one)"
            );
        }
        if queue_full > 0 {
            warn!(
                dropped = queue_full,
                "webhook queue full: {queue_full} quota alerts dropped (reported to the receiver as `dropped`)"
            );
        }
    }
}

/// What each key was alerted in its window, kept in a file of the state directory.
struct AlertedStore {
    path: PathBuf,
    keys: HashMap<u64, Alerted>,
    /// Changed since last saved.
    changed: bool,
    /// The file could not be read: what keys have reached is taken as alerted, not sent.
    deriving: bool,
    /// Saving failed last time (said once, until it works again).
    failing: bool,
}

impl AlertedStore {
    fn load(path: PathBuf) -> AlertedStore {
        let mut store = AlertedStore {
            path,
            keys: HashMap::new(),
            changed: false,
            deriving: false,
            failing: false,
        };
        let text = match std::fs::read(&store.path) {
            Ok(text) => text,
            // Nothing alerted yet.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return store,
            Err(err) => {
                store.unreadable(&err.to_string());
                return store;
            }
        };
        // Token hashes in hex: JSON numbers lose u64s' low digits in many readers.
        match serde_json::from_slice::<HashMap<String, Alerted>>(&text) {
            Ok(keys) => {
                store.keys = keys
                    .into_iter()
                    .filter_map(|(hash, a)| Some((u64::from_str_radix(&hash, 16).ok()?, a)))
                    .collect();
            }
            Err(err) => store.unreadable(&err.to_string()),
        }
        store
    }

    fn unreadable(&mut self, why: &str) {
        warn!(
            path = %self.path.display(),
            "cannot read which quota alerts were sent ({why}): the thresholds keys have reached \
             by now are taken as alerted (not sent again), later ones are alerted as usual"
        );
        self.deriving = true;
        self.changed = true;
    }

    fn get(&self, hash: u64) -> Option<Alerted> {
        self.keys.get(&hash).copied()
    }

    fn set(&mut self, hash: u64, alerted: Alerted) {
        if self.keys.insert(hash, alerted) != Some(alerted) {
            self.changed = true;
        }
    }

    fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        let before = self.keys.len();
        self.keys.retain(|hash, _| keep(*hash));
        self.changed |= self.keys.len() != before;
    }

    /// Writes the file when it changed (atomically: a crash leaves the old or the new one).
    fn save(&mut self) {
        if !self.changed {
            return;
        }
        let keys: HashMap<String, Alerted> = self
            .keys
            .iter()
            .map(|(hash, a)| (format!("{hash:016x}"), *a))
            .collect();
        let written = serde_json::to_vec(&keys)
            .context("encoding the quota alerts sent")
            .and_then(|bytes| private_file::write(&self.path, &bytes));
        match written {
            Ok(()) => {
                if self.failing {
                    info!(path = %self.path.display(), "the quota alerts sent are saved again");
                }
                self.failing = false;
                self.changed = false;
            }
            Err(err) => {
                if !self.failing {
                    error!(
                        "saving the quota alerts sent: {err:#}; retried every second (until it \
                         works, a restarted agent may alert them again)"
                    );
                }
                self.failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_alerted_survives_in_the_file_and_a_bad_file_is_not_a_flood() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ALERTED_FILE);
        let mut store = AlertedStore::load(path.clone());
        assert!(
            !store.deriving && store.keys.is_empty(),
            "no file: nothing sent yet"
        );
        let alerted = Alerted {
            tag: 7,
            percent: 90,
        };
        store.set(u64::MAX - 1, alerted);
        store.save();
        let again = AlertedStore::load(path.clone());
        assert_eq!(again.get(u64::MAX - 1), Some(alerted));
        assert!(!again.deriving);

        std::fs::write(&path, b"{\"truncat").unwrap();
        let corrupt = AlertedStore::load(path);
        assert!(corrupt.deriving && corrupt.keys.is_empty());
    }
}
