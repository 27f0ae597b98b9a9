//! API keys' quotas as the agent sees them: the clock the datapath needs to tell a quota's
//! window (leap seconds, month bounds), and a key's use of its quota in the window now, with
//! the forecast `inspect` shows.

use super::config::Quota;
use crate::api::{rfc3339, QuotaInfo};
use limiter_common::maps::QuotaClock;
use limiter_common::quota;
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

/// A key's quota at `now`, its words being `words`: the use in the window now (none, when the
/// count is of an earlier window), the top-up of this window in the limit, and the forecast —
/// at the rate it used it so far this window, when it runs out, if before the window's end.
pub fn quota_info(quota: &Quota, words: QuotaWords, now: SystemTime) -> QuotaInfo {
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
    let exhausts_at = if remaining == 0 {
        Some(rfc3339(now))
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
        let info = quota_info(&day(1000), words(NOON, 400), at(NOON));
        assert_eq!((info.used, info.remaining), (400, 600));
        assert_eq!(info.period, "day");
        assert_eq!(info.resets_at, "2026-11-29T00:00:00.000Z");
        assert_eq!(info.exhausts_at, None);
        // 800 used by noon: the last 200 go in 3 hours.
        let info = quota_info(&day(1000), words(NOON, 800), at(NOON));
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T15:00:00.000Z")
        );
        // Used up: exhausted now.
        let info = quota_info(&day(1000), words(NOON, 1000), at(NOON));
        assert_eq!(info.remaining, 0);
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T12:00:00.000Z")
        );
        // A count of yesterday's window: nothing used today.
        let info = quota_info(&day(1000), words(NOON - 86_400, 1000), at(NOON));
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
}
