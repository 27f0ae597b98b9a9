//! `GET /v1/usage`: series of passed and dropped per period, read from the store.
//!
//! Minutes come from the minute rows; hours from the hour rows, and days from the hours of each
//! day, so that 7 days of thousands of keys is a read of at most 169 rows per key. The busiest
//! keys of a window are ranked by their sums over it: from the rows asked for, except minutes
//! over more than a day, ranked by the hours they fall in (the same sums, give or take the
//! minutes of the window's first and last hour) — a tenth of the rows to read.

use super::store::{Store, Table, TOTAL};
use super::{Counts, UsageKey, KEPT};
use crate::agent::datapath::ApiView;
use crate::agent::error::AgentError;
use crate::api::{rfc3339, ErrorCode, UsageBy, UsageKind, UsagePoint, UsageQuery, UsageSeries};
use limiter_common::key::Prefix;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keys shown besides the totals unless told, and at most.
const TOP_DEFAULT: usize = 10;
const TOP_AT_MOST: usize = 1000;
/// Windows of minutes up to this long are ranked by their minute rows; longer ones by hours.
const RANK_MINUTES_UP_TO: u32 = 24 * 60;

/// The keys a KEY selects among those recorded.
#[derive(Clone, Debug)]
pub enum Wanted {
    /// Every recorded source key inside the prefix (or the one holding the address).
    Source(Prefix),
    /// The API key whose token hashes to this.
    ApiKey(u64),
    /// API keys whose fingerprint starts with this (lowercase hex).
    Fingerprint(String),
}

impl Wanted {
    fn selects(&self, key: &UsageKey) -> bool {
        match (self, key) {
            (Wanted::Source(wanted), UsageKey::Source(prefix)) => wanted.overlaps(prefix),
            (Wanted::ApiKey(wanted), UsageKey::ApiKey(hash)) => wanted == hash,
            (Wanted::Fingerprint(start), UsageKey::ApiKey(hash)) => {
                super::fingerprint(*hash).starts_with(start.as_str())
            }
            _ => false,
        }
    }
}

/// The answer to `query` at `now`: for `wanted` (shown as `asked`), or the totals and the
/// busiest keys. `keep` is `[usage] keys`, for saying why a key may be missing.
pub fn answer(
    store: &Store,
    api: &ApiView,
    query: &UsageQuery,
    wanted: Option<(Wanted, String)>,
    keep: u32,
    now: SystemTime,
) -> Result<Vec<UsageSeries>, AgentError> {
    let since = Duration::from_secs(query.since_s);
    if since.is_zero() || since > KEPT {
        return Err(AgentError::bad_request(format!(
            "--since must be more than 0 and at most {} days (the history goes back that far), \
             not {}",
            KEPT.as_secs() / 86_400,
            humantime::format_duration(since)
        )));
    }
    let top = query.top.unwrap_or(TOP_DEFAULT);
    if !(1..=TOP_AT_MOST).contains(&top) {
        return Err(AgentError::bad_request(format!(
            "--top must be between 1 and {TOP_AT_MOST}, not {top}"
        )));
    }
    let by = query.by.unwrap_or_else(|| UsageBy::default_for(since));
    let window = Window::new(by, now, since);
    let keys: HashMap<u32, UsageKey> = store.keys()?.into_iter().collect();
    let name = |key: &UsageKey| match key {
        UsageKey::Source(prefix) => (prefix.to_string(), UsageKind::Source),
        UsageKey::ApiKey(hash) => (api.names(*hash).0, UsageKind::ApiKey),
    };
    let mut series = Vec::new();
    let chosen: Vec<u32> = match wanted {
        None => {
            series.push(window.series(store, TOTAL, "all".to_owned(), UsageKind::Total)?);
            busiest(window.sums(store)?, None, top)
        }
        Some((wanted, asked)) => {
            let selected: Vec<u32> = keys
                .iter()
                .filter(|(_, key)| wanted.selects(key))
                .map(|(id, _)| *id)
                .collect();
            if selected.is_empty() {
                return Err(AgentError::new(
                    ErrorCode::NotTracked,
                    format!(
                        "no usage of {asked} is recorded in the last {} days: the history keeps \
                         the {keep} busiest keys of each minute ([usage] keys)",
                        KEPT.as_secs() / 86_400
                    ),
                ));
            }
            if selected.len() <= top {
                selected
            } else {
                busiest(window.sums(store)?, Some(&selected), top)
            }
        }
    };
    for id in chosen {
        let Some(key) = keys.get(&id) else { continue };
        let (text, kind) = name(key);
        series.push(window.series(store, id, text, kind)?);
    }
    if series.len() > 1 && series[0].kind != UsageKind::Total {
        series.sort_by(|a, b| {
            (b.passed + b.dropped)
                .cmp(&(a.passed + a.dropped))
                .then(a.key.cmp(&b.key))
        });
    }
    Ok(series)
}

/// The `top` busiest of `sums` (of `among` only, when given), busiest first.
fn busiest(sums: HashMap<u32, Counts>, among: Option<&[u32]>, top: usize) -> Vec<u32> {
    let mut ranked: Vec<(u32, Counts)> = sums
        .into_iter()
        .filter(|(id, _)| among.is_none_or(|among| among.contains(id)))
        .collect();
    ranked.sort_unstable_by(|a, b| b.1.sum().cmp(&a.1.sum()).then(a.0.cmp(&b.0)));
    let mut chosen: Vec<u32> = ranked.into_iter().take(top).map(|(id, _)| id).collect();
    // Keys selected without a row in the window are shown too (all zero), after the others.
    if let Some(among) = among {
        for id in among {
            if chosen.len() >= top {
                break;
            }
            if !chosen.contains(id) {
                chosen.push(*id);
            }
        }
    }
    chosen
}

/// The periods of a window and the rows they are read from.
struct Window {
    by: UsageBy,
    /// First and last period (in periods of `by` since the epoch).
    first: u64,
    last: u64,
    table: Table,
    /// A row's period in `table`'s units, per period of `by`.
    rows_per_period: u64,
}

impl Window {
    fn new(by: UsageBy, now: SystemTime, since: Duration) -> Window {
        let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let len = by.secs();
        let (table, rows_per_period) = match by {
            UsageBy::Minute => (Table::Minutes, 1),
            UsageBy::Hour => (Table::Hours, 1),
            UsageBy::Day => (Table::Hours, 24),
        };
        Window {
            by,
            first: now_s.saturating_sub(since.as_secs()) / len,
            last: now_s / len,
            table,
            rows_per_period,
        }
    }

    /// The window's rows, in the table's periods.
    fn rows(&self) -> (u32, u32) {
        let first = self.first * self.rows_per_period;
        let last = (self.last + 1) * self.rows_per_period - 1;
        (first as u32, last.min(u64::from(u32::MAX)) as u32)
    }

    /// Every key's sums over the window, to rank them (see the module's doc).
    fn sums(&self, store: &Store) -> anyhow::Result<HashMap<u32, Counts>> {
        let (first, last) = self.rows();
        if self.table == Table::Minutes && last - first > RANK_MINUTES_UP_TO {
            return store.sums(Table::Hours, first / 60, last / 60);
        }
        store.sums(self.table, first, last)
    }

    /// `id`'s series: every period of the window, zero where nothing is recorded.
    fn series(
        &self,
        store: &Store,
        id: u32,
        key: String,
        kind: UsageKind,
    ) -> anyhow::Result<UsageSeries> {
        let (first, last) = self.rows();
        let mut periods = vec![Counts::default(); (self.last - self.first + 1) as usize];
        for (row, counts) in store.rows(self.table, id, first, last)? {
            let period = u64::from(row) / self.rows_per_period;
            periods[(period - self.first) as usize] += counts;
        }
        let total = periods.iter().fold(Counts::default(), |sum, c| sum + *c);
        Ok(UsageSeries {
            key,
            kind,
            by: self.by,
            passed: total.passed,
            dropped: total.dropped,
            points: periods
                .into_iter()
                .enumerate()
                .map(|(i, counts)| UsagePoint {
                    at: rfc3339(
                        UNIX_EPOCH + Duration::from_secs((self.first + i as u64) * self.by.secs()),
                    ),
                    passed: counts.passed,
                    dropped: counts.dropped,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_covers_the_periods_it_touches() {
        // 2025-01-01T10:30:00Z, 24 hours back by hour: 25 hours, the last one going on.
        let now = UNIX_EPOCH + Duration::from_secs(1_735_727_400);
        let window = Window::new(UsageBy::Hour, now, Duration::from_secs(86_400));
        assert_eq!(window.last - window.first + 1, 25);
        assert_eq!(window.rows(), (window.first as u32, window.last as u32));
        // By day: the rows are the hours of each day, from the first one's midnight.
        let window = Window::new(UsageBy::Day, now, KEPT);
        assert_eq!(window.last - window.first + 1, 8);
        let (first, last) = window.rows();
        assert_eq!(u64::from(first) * 3600 % 86_400, 0);
        assert_eq!((u64::from(last) + 1) * 3600 % 86_400, 0);
        assert_eq!(last - first + 1, 8 * 24);
    }

    #[test]
    fn the_busiest_keys_of_a_window_come_with_the_totals_and_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now_minute: u32 = 29_000_000;
        let early = UsageKey::parse("198.18.0.1/32").unwrap();
        let late = UsageKey::parse("key:00000000000000ab").unwrap();
        let counts = |passed, dropped| Counts { passed, dropped };
        // Two days ago `early` was busy for an hour; in the last minutes `late` a little.
        for minute in now_minute - 2880..now_minute - 2820 {
            store
                .write_minute(
                    minute,
                    counts(10, 1),
                    &[(early, counts(10, 1))],
                    &HashMap::new(),
                )
                .unwrap();
        }
        for minute in now_minute - 5..=now_minute {
            store
                .write_minute(
                    minute,
                    counts(2, 3),
                    &[(late, counts(2, 3))],
                    &HashMap::new(),
                )
                .unwrap();
        }
        let now = UNIX_EPOCH + Duration::from_secs(u64::from(now_minute) * 60 + 30);
        let ask = |since_s: u64, by: Option<UsageBy>, top: usize| {
            let query = UsageQuery {
                since_s,
                by,
                key: None,
                top: Some(top),
            };
            answer(&store, &ApiView::default(), &query, None, 100, now).unwrap()
        };
        // Three days by minute (ranked by hours): the totals, then `early` before `late`.
        let series = ask(3 * 86_400, Some(UsageBy::Minute), 10);
        let keys: Vec<_> = series
            .iter()
            .map(|s| (s.key.as_str(), s.passed, s.dropped))
            .collect();
        assert_eq!(
            keys,
            [
                ("all", 612, 78),
                ("198.18.0.1/32", 600, 60),
                ("key:00000000000000ab", 12, 18)
            ]
        );
        assert_eq!(series[0].points.len(), 3 * 1440 + 1);
        assert_eq!(series[0].kind, UsageKind::Total);
        // By day: the same sums.
        let by_day = ask(3 * 86_400, Some(UsageBy::Day), 1);
        assert_eq!(by_day[0].points.len(), 4);
        assert_eq!(
            (by_day[1].key.as_str(), by_day[1].passed),
            ("198.18.0.1/32", 600)
        );
        // The last 10 minutes: only `late` (an hour's rows would have counted `early` nowhere
        // either, but a minute's window is ranked by minutes).
        let recent = ask(600, None, 10);
        assert_eq!(recent[0].by, UsageBy::Minute);
        let keys: Vec<_> = recent.iter().map(|s| (s.key.as_str(), s.passed)).collect();
        assert_eq!(keys, [("all", 12), ("key:00000000000000ab", 12)]);
        // A KEY nothing is recorded of.
        let query = UsageQuery {
            since_s: 600,
            by: None,
            key: None,
            top: None,
        };
        let wanted = Some((
            Wanted::Source("198.18.9.9".parse().unwrap()),
            "198.18.9.9/32".into(),
        ));
        let err = answer(&store, &ApiView::default(), &query, wanted, 100, now).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotTracked);
        assert!(
            err.message.contains("no usage of 198.18.9.9/32"),
            "{}",
            err.message
        );
    }

    #[test]
    fn busiest_ranks_by_passed_and_dropped_and_shows_selected_keys_without_rows() {
        let sums = HashMap::from([
            (
                1,
                Counts {
                    passed: 5,
                    dropped: 0,
                },
            ),
            (
                2,
                Counts {
                    passed: 1,
                    dropped: 9,
                },
            ),
            (
                3,
                Counts {
                    passed: 7,
                    dropped: 0,
                },
            ),
        ]);
        assert_eq!(busiest(sums.clone(), None, 2), [2, 3]);
        assert_eq!(busiest(sums, Some(&[1, 4]), 5), [1, 4]);
    }
}
