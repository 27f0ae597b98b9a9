//! API keys' quotas as the agent sees them: the clock the datapath needs to tell a quota's
//! window (its offset to UTC, month bounds), a key's use of its quota in the window now, with the
//! forecast `inspect` and the alerts show — at the key's recent rate ([`RateSampler`]), or its
//! window's average when there is no recent sample — and which alert thresholds a count
//! crosses ([`newly_crossed`]).

use super::config::Quota;
use crate::api::{rfc3339, QuotaInfo};
use limiter_common::maps::QuotaClock;
use limiter_common::quota;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the datapath holds of one API key's quota: its count (`quota::Usage`) and its top-up
/// (`quota::TopUp`) words, 0 when it has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaWords {
    pub usage: u64,
    pub top_up: u64,
}

/// Why a top-up was not made (nothing changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopUpRefusal {
    /// The key's plan (or `[http]`) has no quota.
    NoQuota,
    /// A window's count holds at most `u32::MAX` requests: the key can take `room` more.
    TooMuch { room: u64 },
    /// `QUOTA_TOPUPS` is full of top-ups of windows not over yet.
    Full,
}

impl std::fmt::Display for TopUpRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopUpRefusal::NoQuota => f.write_str("has no quota (its plan, or [http], sets none)"),
            TopUpRefusal::TooMuch { room } => write!(
                f,
                "can take at most {room} more this window (a window counts at most {} requests)",
                u32::MAX
            ),
            TopUpRefusal::Full => write!(
                f,
                "cannot be topped up: {} keys are topped up for windows not over yet",
                limiter_common::maps::MAX_QUOTA_TOPUPS
            ),
        }
    }
}

/// How far back a key's recent rate looks.
pub const RECENT: Duration = Duration::from_secs(60);
/// Samples of a key's count are kept this far apart (a few per [`RECENT`], so that a quarter
/// of a million keys cost megabytes, not hundreds).
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A recent rate needs samples at least this far apart.
const SHORTEST_SPAN: Duration = Duration::from_secs(1);

/// A key's rate of use over the last [`RECENT`], in the window `tag`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RecentRate {
    pub tag: u32,
    pub per_sec: f64,
}

/// A key's quota at `now`, its words being `words`: the use in the window now (none, when the
/// count is of an earlier window), the top-up of this window in the limit, and the forecast —
/// when it runs out, if before the window's end: at its `recent` rate when there is one for this
/// window, else at the rate it used it so far this window.
pub fn quota_info(
    quota: &Quota,
    words: QuotaWords,
    now: SystemTime,
    recent: Option<RecentRate>,
) -> QuotaInfo {
    let utc_secs = unix_secs(now);
    let window = quota::window(quota.period, utc_secs);
    let usage = quota::Usage::from_word(words.usage);
    let limit = u64::from(quota::limit_with_top_up(
        quota.limit,
        words.top_up,
        words.usage,
        window.tag,
    ));
    let used = if usage.tag == window.tag {
        u64::from(usage.used).min(limit)
    } else {
        0
    };
    let remaining = limit - used;
    let at = |secs: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
    let recent = recent.filter(|r| r.tag == window.tag && used > 0);
    let exhausts_at = if remaining == 0 {
        Some(rfc3339(now))
    } else if let Some(recent) = recent {
        // Nothing lately: not this window.
        let left = remaining as f64 / recent.per_sec;
        (recent.per_sec > 0.0 && left < (window.end - utc_secs) as f64)
            .then(|| rfc3339(now + Duration::from_secs_f64(left)))
    } else if used == 0 {
        None
    } else {
        // Seconds so far this window (at least one), at `used / elapsed` per second.
        let elapsed = (utc_secs - window.start).max(1);
        let left = (remaining * elapsed).div_ceil(used);
        (utc_secs + left < window.end).then(|| at(utc_secs + left))
    };
    QuotaInfo {
        limit,
        used,
        remaining,
        added: limit - u64::from(quota.limit),
        period: quota.period.name().to_owned(),
        resets_at: at(window.end),
        exhausts_at,
    }
}

/// The top-up word that adds `add` requests to a key's quota for the window `now` is charged to
/// (the one its count is in, should the clock have stepped back), on top of what was added to
/// that window before.
pub fn topped_up(
    quota: &Quota,
    words: QuotaWords,
    add: u32,
    now: SystemTime,
) -> Result<u64, TopUpRefusal> {
    let tag = quota::charged_window(words.usage, quota::window(quota.period, unix_secs(now)).tag);
    let before = quota::TopUp::from_word(words.top_up);
    let before = if before.tag == tag { before.added } else { 0 };
    let room = u32::MAX - quota.limit - before.min(u32::MAX - quota.limit);
    if add > room {
        return Err(TopUpRefusal::TooMuch {
            room: u64::from(room),
        });
    }
    Ok(quota::TopUp {
        tag,
        added: before + add,
    }
    .word())
}

/// Whether a top-up word is of a window that ended by `now` (or of a key without a quota now).
pub fn top_up_is_over(quota: Option<&Quota>, top_up: u64, now: SystemTime) -> bool {
    quota.is_none_or(|quota| window_is_over(quota, quota::TopUp::from_word(top_up).tag, now))
}

/// Whether the window of tag `tag` of `quota`'s period ended by `now`.
pub fn window_is_over(quota: &Quota, tag: u32, now: SystemTime) -> bool {
    tag < quota::window(quota.period, unix_secs(now)).tag
}

/// What [`Datapath::restore_quota_words`](super::datapath::Datapath::restore_quota_words)
/// brought back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Keys whose count was brought back.
    pub counts: usize,
    /// Keys whose top-up was brought back.
    pub top_ups: usize,
    /// Keys left out: their window is over, or they have no quota now.
    pub skipped: usize,
}

fn unix_secs(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Samples of keys' quota counts, a few per [`RECENT`], from which their recent rates come.
#[derive(Default)]
pub struct RateSampler {
    keys: HashMap<u64, VecDeque<Sample>>,
}

/// A key's count at a moment (`at`: since any fixed origin, a monotonic clock's).
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Duration,
    tag: u32,
    used: u32,
}

impl RateSampler {
    /// Takes in the count of the key `hash` at `at` and returns its recent rate: over the
    /// samples of the same window within [`RECENT`], if they span [`SHORTEST_SPAN`]. A count of
    /// another window, or one that went down (`reset --quota`), starts the samples afresh.
    pub fn observe(&mut self, hash: u64, usage: quota::Usage, at: Duration) -> Option<RecentRate> {
        let samples = self.keys.entry(hash).or_default();
        if samples
            .back()
            .is_some_and(|last| last.tag != usage.tag || last.used > usage.used)
        {
            samples.clear();
        }
        while samples
            .front()
            .is_some_and(|first| at.saturating_sub(first.at) > RECENT)
        {
            samples.pop_front();
        }
        if samples
            .back()
            .is_none_or(|last| at.saturating_sub(last.at) >= SAMPLE_EVERY)
        {
            samples.push_back(Sample {
                at,
                tag: usage.tag,
                used: usage.used,
            });
        }
        let first = samples.front()?;
        let span = at.saturating_sub(first.at);
        (span >= SHORTEST_SPAN).then(|| RecentRate {
            tag: usage.tag,
            per_sec: f64::from(usage.used - first.used) / span.as_secs_f64(),
        })
    }

    /// Forgets the keys `keep` says no to (gone from the datapath's map).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.keys.retain(|hash, _| keep(*hash));
    }
}

/// The alerts a key was given in a window: its tag, and the highest threshold (percent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alerted {
    pub tag: u32,
    pub percent: u8,
}

/// The thresholds (percent, increasing) a key's count `usage` of quota `limit` has reached and
/// that were not alerted in its window yet, and what is alerted once they are. A later window
/// re-arms every threshold; the same window — or an earlier one, after the clock stepped back —
/// only those above the highest alerted, so that a threshold is alerted once per key and
/// window, also when the count goes down (`reset --quota`) and up again.
pub fn newly_crossed(
    alerted: Option<Alerted>,
    usage: quota::Usage,
    limit: u32,
    thresholds: &[u8],
) -> (Vec<u8>, Option<Alerted>) {
    let armed_above = match alerted {
        Some(a) if quota::same_period(a.tag, usage.tag) && a.tag >= usage.tag => a.percent,
        _ => 0,
    };
    let crossed: Vec<u8> = thresholds
        .iter()
        .copied()
        .filter(|&percent| {
            percent > armed_above
                && u64::from(usage.used) * 100 >= u64::from(percent) * u64::from(limit)
        })
        .collect();
    let after = match (crossed.last(), alerted) {
        (None, alerted) => alerted,
        (Some(&highest), Some(a)) if quota::same_period(a.tag, usage.tag) && a.tag >= usage.tag => {
            Some(Alerted {
                tag: a.tag,
                percent: highest,
            })
        }
        (Some(&highest), _) => Some(Alerted {
            tag: usage.tag,
            percent: highest,
        }),
    };
    (crossed, after)
}

/// The quota clock as the datapath needs it now: CLOCK_REALTIME less CLOCK_MONOTONIC (UTC from
/// the datapath's clock), and the bounds of this month and the next.
pub fn quota_clock_now() -> QuotaClock {
    let utc_secs = unix_secs(SystemTime::now());
    limiter_common::quota::month_clock(utc_secs, limiter_common::sys::utc_offset_ns())
}

/// How far the offset written may be from the one now before it is written again: reading it
/// jitters by a microsecond or so; a step of the wall clock moves it by far more.
const OFFSET_SLACK_NS: u64 = 1_000_000;

/// Whether `written` is still the quota clock `now` says (the same months, an offset within
/// [`OFFSET_SLACK_NS`]).
pub fn quota_clock_holds(written: &QuotaClock, now: &QuotaClock) -> bool {
    QuotaClock {
        utc_offset_ns: now.utc_offset_ns,
        ..*written
    } == *now
        && written.utc_offset_ns.abs_diff(now.utc_offset_ns) <= OFFSET_SLACK_NS
}

#[cfg(test)]
mod tests {
    use super::*;
    use limiter_common::quota::{Period, Usage};

    /// 2026-11-28T12:00:00Z.
    const NOON: u64 = 20_785 * 86_400 + 12 * 3600;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn day(limit: u32) -> Quota {
        Quota {
            limit,
            period: Period::Day,
        }
    }

    /// A day quota's words with `used` counted in the day of `utc_secs`, without a top-up.
    fn words(utc_secs: u64, used: u32) -> QuotaWords {
        let tag = quota::window(Period::Day, utc_secs).tag;
        QuotaWords {
            usage: Usage { tag, used }.word(),
            top_up: 0,
        }
    }

    #[test]
    fn a_quotas_use_is_its_windows_and_the_forecast_its_rate_so_far() {
        // Half the day gone, 400 of 1000 used: at that rate the rest lasts 18 hours more —
        // beyond the day's end.
        let info = quota_info(&day(1000), words(NOON, 400), at(NOON), None);
        assert_eq!((info.used, info.remaining), (400, 600));
        assert_eq!(info.period, "day");
        assert_eq!(info.resets_at, "2026-11-29T00:00:00.000Z");
        assert_eq!(info.exhausts_at, None);
        // 800 used by noon: the last 200 go in 3 hours.
        let info = quota_info(&day(1000), words(NOON, 800), at(NOON), None);
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T15:00:00.000Z")
        );
        // Used up: exhausted now.
        let info = quota_info(&day(1000), words(NOON, 1000), at(NOON), None);
        assert_eq!(info.remaining, 0);
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T12:00:00.000Z")
        );
        // A count of yesterday's window: nothing used today.
        let info = quota_info(&day(1000), words(NOON - 86_400, 1000), at(NOON), None);
        assert_eq!(
            (info.used, info.remaining, info.exhausts_at),
            (0, 1000, None)
        );
    }

    #[test]
    fn a_top_up_adds_to_its_window_and_is_bounded() {
        let quota = day(1000);
        let used_up = words(NOON, 1000);
        let word = topped_up(&quota, used_up, 500, at(NOON)).unwrap();
        let info = quota_info(
            &quota,
            QuotaWords {
                top_up: word,
                ..used_up
            },
            at(NOON),
            None,
        );
        assert_eq!(
            (info.limit, info.used, info.remaining, info.added),
            (1500, 1000, 500, 500)
        );
        // A second top-up the same day adds to the first.
        let more = QuotaWords {
            top_up: word,
            ..used_up
        };
        let word = topped_up(&quota, more, 250, at(NOON)).unwrap();
        assert_eq!(quota::TopUp::from_word(word).added, 750);
        // Tomorrow: the plan's quota alone, and yesterday's top-up is over.
        let tomorrow = at(NOON + 86_400);
        let info = quota_info(
            &quota,
            QuotaWords {
                top_up: word,
                ..used_up
            },
            tomorrow,
            None,
        );
        assert_eq!((info.limit, info.used, info.added), (1000, 0, 0));
        assert!(top_up_is_over(Some(&quota), word, tomorrow));
        assert!(!top_up_is_over(Some(&quota), word, at(NOON)));
        assert!(
            top_up_is_over(None, word, at(NOON)),
            "a key whose plan lost its quota"
        );
        // A window's count is 32 bits: what would overflow it is refused, saying how much fits.
        let room = u64::from(u32::MAX - 1000 - 750);
        let full = QuotaWords {
            top_up: word,
            ..used_up
        };
        assert_eq!(
            topped_up(&quota, full, u32::MAX, at(NOON)),
            Err(TopUpRefusal::TooMuch { room })
        );
        assert!(topped_up(&quota, full, room as u32, at(NOON)).is_ok());
    }

    #[test]
    fn the_forecast_goes_by_the_recent_rate_when_there_is_one() {
        let tag = quota::window(Period::Day, NOON).tag;
        let used = words(NOON, 400);
        // 400 by noon is slow on average, but lately 1 a second: the 600 left go in 10 minutes.
        let fast = RecentRate { tag, per_sec: 1.0 };
        let info = quota_info(&day(1000), used, at(NOON), Some(fast));
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T12:10:00.000Z")
        );
        // Nothing lately: not this window (the average alone would not say so either here).
        let idle = RecentRate { tag, per_sec: 0.0 };
        let info = quota_info(&day(1000), words(NOON, 800), at(NOON), Some(idle));
        assert_eq!(info.exhausts_at, None);
        // A rate of another window is not this one's: the window's average (800 by noon: 15:00).
        let stale = RecentRate {
            tag: tag - 1,
            per_sec: 1.0,
        };
        let info = quota_info(&day(1000), words(NOON, 800), at(NOON), Some(stale));
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T15:00:00.000Z")
        );
        // Too slow to run out before midnight.
        let slow = RecentRate {
            tag,
            per_sec: 0.001,
        };
        let info = quota_info(&day(1000), used, at(NOON), Some(slow));
        assert_eq!(info.exhausts_at, None);
    }

    #[test]
    fn the_recent_rate_is_over_the_last_minute_of_the_same_window() {
        let secs = Duration::from_secs;
        let usage = |tag, used| Usage { tag, used };
        let mut sampler = RateSampler::default();
        assert_eq!(
            sampler.observe(7, usage(1, 0), secs(100)),
            None,
            "one sample"
        );
        // 10 a second for 30 s.
        for s in 1..=30u32 {
            let rate = sampler.observe(7, usage(1, 10 * s), secs(100 + u64::from(s)));
            assert_eq!(rate.map(|r| r.per_sec), Some(10.0), "at {s} s");
        }
        // Then 2 a second for two minutes: the first minute's fast samples age out.
        let mut used = 300;
        let mut rate = None;
        for s in 131..=250u64 {
            used += 2;
            rate = sampler.observe(7, usage(1, used), secs(s));
        }
        let rate = rate.unwrap();
        assert!((rate.per_sec - 2.0).abs() < 1e-9, "{rate:?}");
        // A new window starts afresh, and so does a count that went down.
        assert_eq!(sampler.observe(7, usage(2, 5), secs(251)), None);
        assert_eq!(
            sampler
                .observe(7, usage(2, 25), secs(253))
                .map(|r| r.per_sec),
            Some(10.0)
        );
        assert_eq!(sampler.observe(7, usage(2, 1), secs(254)), None, "reset");
        sampler.retain(|hash| hash != 7);
        assert!(sampler.keys.is_empty());
    }

    #[test]
    fn thresholds_are_alerted_once_per_key_and_window() {
        let thresholds = [50, 80, 100];
        let usage = |tag, used| Usage { tag, used };
        // Quota 10: nothing below 5; 5 is 50 %.
        assert_eq!(
            newly_crossed(None, usage(1, 4), 10, &thresholds),
            (vec![], None)
        );
        let (crossed, alerted) = newly_crossed(None, usage(1, 5), 10, &thresholds);
        assert_eq!(crossed, [50]);
        assert_eq!(
            alerted,
            Some(Alerted {
                tag: 1,
                percent: 50
            })
        );
        // Several at once, in order.
        let (crossed, alerted) = newly_crossed(alerted, usage(1, 10), 10, &thresholds);
        assert_eq!(crossed, [80, 100]);
        assert_eq!(
            alerted,
            Some(Alerted {
                tag: 1,
                percent: 100
            })
        );
        // No repeats: further requests, or the count going down and up again.
        assert_eq!(
            newly_crossed(alerted, usage(1, 10), 10, &thresholds),
            (vec![], alerted)
        );
        assert_eq!(
            newly_crossed(alerted, usage(1, 9), 10, &thresholds),
            (vec![], alerted)
        );
        // A new window re-arms them all.
        let (crossed, next) = newly_crossed(alerted, usage(2, 8), 10, &thresholds);
        assert_eq!(crossed, [50, 80]);
        assert_eq!(
            next,
            Some(Alerted {
                tag: 2,
                percent: 80
            })
        );
        // The clock stepped back into the window before: nothing is re-armed, and what was
        // alerted stays that of the later window.
        assert_eq!(
            newly_crossed(next, usage(1, 10), 10, &thresholds),
            (
                vec![100],
                Some(Alerted {
                    tag: 2,
                    percent: 100
                })
            )
        );
        assert_eq!(
            newly_crossed(next, usage(1, 8), 10, &thresholds),
            (vec![], next)
        );
        // Percents of quotas that do not divide evenly: 80 % of 7 is 5.6, reached at 6.
        assert_eq!(
            newly_crossed(None, usage(1, 5), 7, &[80]).0,
            Vec::<u8>::new()
        );
        assert_eq!(newly_crossed(None, usage(1, 6), 7, &[80]).0, [80]);
        // A quota near u32::MAX does not overflow.
        assert_eq!(
            newly_crossed(None, usage(1, u32::MAX), u32::MAX, &[100]).0,
            [100]
        );
    }
}
