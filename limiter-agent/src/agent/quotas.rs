//! API keys' quotas as the agent sees them: the clock the datapath needs to tell a quota's
//! window (leap seconds, month bounds), and a key's use of its quota in the window now, with
//! the forecast `inspect` shows.

use super::config::Quota;
use crate::api::{rfc3339, QuotaInfo};
use limiter_common::maps::QuotaClock;
use limiter_common::quota;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A key's quota at `now`, its count being `word` (`quota::Usage`): the use in the window now
/// (none, when the word is of an earlier window), and the forecast — at the rate it used it so
/// far this window, when it runs out, if before the window's end.
pub fn quota_info(quota: &Quota, word: u64, now: SystemTime) -> QuotaInfo {
    let utc_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let window = quota::window(quota.period, utc_secs);
    let usage = quota::Usage::from_word(word);
    let limit = u64::from(quota.limit);
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
        period: quota.period.name().to_owned(),
        resets_at: at(window.end),
        exhausts_at,
    }
}

/// The quota clock as the datapath needs it now: the leap seconds between CLOCK_TAI and UTC
/// (what the kernel was told, `adjtimex`), and the bounds of this month and the next.
pub fn quota_clock_now() -> QuotaClock {
    // SAFETY: a zeroed timex with modes 0 only reads the kernel's clock state.
    let tai_secs = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        libc::adjtimex(&mut timex);
        timex.tai.max(0) as u64
    };
    let utc_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    limiter_common::quota::month_clock(utc_secs, tai_secs * 1_000_000_000)
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

    fn word(utc_secs: u64, period: Period, used: u32) -> u64 {
        let tag = quota::window(period, utc_secs).tag;
        Usage { tag, used }.word()
    }

    #[test]
    fn a_quotas_use_is_its_windows_and_the_forecast_its_rate_so_far() {
        // Half the day gone, 400 of 1000 used: at that rate the rest lasts 18 hours more —
        // beyond the day's end.
        let info = quota_info(&day(1000), word(NOON, Period::Day, 400), at(NOON));
        assert_eq!((info.used, info.remaining), (400, 600));
        assert_eq!(info.period, "day");
        assert_eq!(info.resets_at, "2026-11-29T00:00:00.000Z");
        assert_eq!(info.exhausts_at, None);
        // 800 used by noon: the last 200 go in 3 hours.
        let info = quota_info(&day(1000), word(NOON, Period::Day, 800), at(NOON));
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T15:00:00.000Z")
        );
        // Used up: exhausted now.
        let info = quota_info(&day(1000), word(NOON, Period::Day, 1000), at(NOON));
        assert_eq!(info.remaining, 0);
        assert_eq!(
            info.exhausts_at.as_deref(),
            Some("2026-11-28T12:00:00.000Z")
        );
        // A count of yesterday's window: nothing used today.
        let info = quota_info(&day(1000), word(NOON - 86_400, Period::Day, 1000), at(NOON));
        assert_eq!(
            (info.used, info.remaining, info.exhausts_at),
            (0, 1000, None)
        );
    }
}
