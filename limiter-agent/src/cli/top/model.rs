//! What `top` knows: successive polls of the agent turned into rates per key and in all.

use crate::api::{KeyInfo, ListQuery, SortBy, Status, KEYS_PATH, STATUS_PATH};
use crate::client::{ApiClient, ClientError};
use limiter_common::key::Prefix;
use limiter_common::maps::Counter;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Keys asked for per order and refresh: enough to fill any screen and to rank by rate, few
/// enough that a map of a million keys is not shipped every second.
pub(super) const KEYS_PER_POLL: usize = 500;
/// What the sparklines show.
pub(super) const HISTORY: Duration = Duration::from_secs(60);

/// How the keys are ordered, heaviest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Packets dropped per second.
    DropRate,
    /// Packets passed per second.
    PassRate,
    /// Packets dropped in total.
    Dropped,
    /// Packets passed in total.
    Passed,
}

impl Sort {
    pub(super) fn next(self) -> Sort {
        match self {
            Sort::DropRate => Sort::PassRate,
            Sort::PassRate => Sort::Dropped,
            Sort::Dropped => Sort::Passed,
            Sort::Passed => Sort::DropRate,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Sort::DropRate => "drop/s",
            Sort::PassRate => "pass/s",
            Sort::Dropped => "dropped",
            Sort::Passed => "passed",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Data: polls and the rates between them.

/// One answer of the agent: its status and the keys asked for.
pub(super) struct Poll {
    pub(super) status: Status,
    pub(super) keys: Vec<KeyInfo>,
    pub(super) at: Instant,
}

pub(super) async fn poll(client: &ApiClient, filter: Option<&Prefix>) -> Result<Poll, ClientError> {
    let query = |sort| ListQuery {
        exhausted: false,
        top: Some(KEYS_PER_POLL),
        sort: Some(sort),
        prefix: filter.map(Prefix::to_string),
        kind: None,
    };
    let by_drops = query(SortBy::Drops);
    let by_passed = query(SortBy::Passed);
    let (status, dropping, passing) = tokio::try_join!(
        client.get::<Status>(STATUS_PATH, &()),
        client.get::<Vec<KeyInfo>>(KEYS_PATH, &by_drops),
        client.get::<Vec<KeyInfo>>(KEYS_PATH, &by_passed),
    )?;
    let at = Instant::now();
    let mut seen = std::collections::HashSet::new();
    let keys = dropping
        .into_iter()
        .chain(passing)
        .filter(|k| seen.insert(k.key.clone()))
        .collect();
    Ok(Poll { status, keys, at })
}

/// Per second from `before` to `now` over `secs`; none when the counter went back (the key was
/// evicted and came back, the agent lost its state) or no time passed.
pub(super) fn per_second(before: u64, now: u64, secs: f64) -> Option<f64> {
    (now >= before && secs > 0.0).then(|| (now - before) as f64 / secs)
}

/// A key as the view shows it.
#[derive(Clone, Debug, Serialize)]
pub(super) struct KeyRow {
    #[serde(flatten)]
    pub(super) info: KeyInfo,
    /// Per second since the previous poll that saw the key; none for a key seen first now.
    pub(super) passed_per_s: Option<f64>,
    pub(super) dropped_per_s: Option<f64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Rates {
    pub(super) passed: f64,
    pub(super) dropped: f64,
}

/// Where a counter was at the last poll that counted, and the rates worked out then.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seen {
    pub(super) at: Instant,
    pub(super) passed: u64,
    pub(super) dropped: u64,
    pub(super) passed_per_s: Option<f64>,
    pub(super) dropped_per_s: Option<f64>,
}

impl Seen {
    /// Rates from here to `(passed, dropped)` at `at`, and whether they make a new baseline.
    /// Polls closer than `min_gap` (one right after a filter change or a reset) keep the rates of
    /// the last real interval: over a few milliseconds they would be noise.
    pub(super) fn advance(
        &self,
        at: Instant,
        passed: u64,
        dropped: u64,
        min_gap: Duration,
    ) -> (Seen, bool) {
        let gap = at.saturating_duration_since(self.at);
        if gap < min_gap && passed >= self.passed && dropped >= self.dropped {
            return (*self, false);
        }
        let secs = gap.as_secs_f64();
        let next = Seen {
            at,
            passed,
            dropped,
            passed_per_s: per_second(self.passed, passed, secs),
            dropped_per_s: per_second(self.dropped, dropped, secs),
        };
        (next, true)
    }

    pub(super) fn first(at: Instant, passed: u64, dropped: u64) -> Seen {
        Seen {
            at,
            passed,
            dropped,
            passed_per_s: None,
            dropped_per_s: None,
        }
    }
}

/// What the agent said last, and the rates worked out from what it said before.
pub(super) struct Model {
    pub(super) min_gap: Duration,
    /// Keys not seen for this long are forgotten: a rate over a longer gap says little.
    pub(super) forget_after: Duration,
    pub(super) status: Option<Status>,
    pub(super) keys: Vec<KeyRow>,
    pub(super) totals: Option<Seen>,
    /// Total rates of each poll over the last minute, oldest first.
    pub(super) history: VecDeque<(Instant, Rates)>,
    pub(super) seen: HashMap<String, Seen>,
    pub(super) last_update: Option<Instant>,
    /// Why the last poll failed, until one succeeds.
    pub(super) error: Option<String>,
}

impl Model {
    pub(super) fn new(interval: Duration) -> Model {
        Model {
            min_gap: (interval / 2).max(Duration::from_millis(50)),
            forget_after: (interval * 5).max(Duration::from_secs(10)),
            status: None,
            keys: Vec::new(),
            totals: None,
            history: VecDeque::new(),
            seen: HashMap::new(),
            last_update: None,
            error: None,
        }
    }

    pub(super) fn apply(&mut self, poll: Poll) {
        let at = poll.at;
        let (passed, dropped) = (
            poll.status.counters.get(Counter::Passed),
            poll.status.counters.get(Counter::Dropped),
        );
        self.totals = Some(match self.totals {
            None => Seen::first(at, passed, dropped),
            Some(before) => {
                let (next, counted) = before.advance(at, passed, dropped, self.min_gap);
                if counted {
                    if let (Some(p), Some(d)) = (next.passed_per_s, next.dropped_per_s) {
                        self.history.push_back((
                            at,
                            Rates {
                                passed: p,
                                dropped: d,
                            },
                        ));
                    }
                }
                next
            }
        });
        while self
            .history
            .front()
            .is_some_and(|(t, _)| at.saturating_duration_since(*t) > HISTORY)
        {
            self.history.pop_front();
        }
        self.keys = poll
            .keys
            .into_iter()
            .map(|info| {
                let seen = match self.seen.get(&info.key) {
                    None => Seen::first(at, info.passed, info.dropped),
                    Some(before) => {
                        before
                            .advance(at, info.passed, info.dropped, self.min_gap)
                            .0
                    }
                };
                self.seen.insert(info.key.clone(), seen);
                KeyRow {
                    info,
                    passed_per_s: seen.passed_per_s,
                    dropped_per_s: seen.dropped_per_s,
                }
            })
            .collect();
        let forget_after = self.forget_after;
        self.seen
            .retain(|_, seen| at.saturating_duration_since(seen.at) <= forget_after);
        self.status = Some(poll.status);
        self.last_update = Some(at);
        self.error = None;
    }

    pub(super) fn total_rates(&self) -> Option<Rates> {
        let totals = self.totals?;
        Some(Rates {
            passed: totals.passed_per_s?,
            dropped: totals.dropped_per_s?,
        })
    }
}

/// Heaviest first; a key without a rate yet after every key with one; ties by key.
pub(super) fn sort_rows(rows: &mut [KeyRow], sort: Sort) {
    let rate = |r: Option<f64>| r.unwrap_or(-1.0);
    rows.sort_by(|a, b| {
        let order = match sort {
            Sort::DropRate => rate(b.dropped_per_s)
                .total_cmp(&rate(a.dropped_per_s))
                .then(b.info.dropped.cmp(&a.info.dropped)),
            Sort::PassRate => rate(b.passed_per_s)
                .total_cmp(&rate(a.passed_per_s))
                .then(b.info.passed.cmp(&a.info.passed)),
            Sort::Dropped => b.info.dropped.cmp(&a.info.dropped),
            Sort::Passed => b.info.passed.cmp(&a.info.passed),
        };
        order.then_with(|| a.info.key.cmp(&b.info.key))
    });
}

pub(super) fn in_filter(filter: Option<&Prefix>, key: &str) -> bool {
    filter.is_none_or(|f| key.parse::<Prefix>().is_ok_and(|k| k.overlaps(f)))
}
