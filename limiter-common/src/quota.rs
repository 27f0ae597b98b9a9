//! Quotas: so many requests per calendar window in UTC — a minute, an hour, a day, a month —
//! counted exactly and rolled over at the window's end. This module is the arithmetic both
//! sides share: which window a moment is in, and the count of one key in its window as one
//! 64-bit word a compare-and-swap can update (the window's tag and the requests used).
//!
//! Time is POSIX UTC seconds: days of 86 400 s, so a minute, an hour and a day are divisions
//! of it, and a leap second is not a second of its own — the clock repeats (or smears) one, so
//! the window it falls in lasts a second longer in real time; no window is skipped or handed
//! out twice. Months are calendar months (proleptic Gregorian), of 28 to 31 days.

/// How long a quota's window is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    Minute,
    Hour,
    Day,
    Month,
}

pub const SECS_PER_DAY: u64 = 86_400;

impl Period {
    pub const ALL: [Period; 4] = [Period::Minute, Period::Hour, Period::Day, Period::Month];

    /// Its name in the configuration and the JSON (`"minute"` …).
    pub const fn name(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    pub fn from_name(name: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Its code in the datapath (`maps::PERIOD_*`).
    pub const fn code(self) -> u32 {
        use crate::maps::{PERIOD_DAY, PERIOD_HOUR, PERIOD_MINUTE, PERIOD_MONTH};
        match self {
            Period::Minute => PERIOD_MINUTE,
            Period::Hour => PERIOD_HOUR,
            Period::Day => PERIOD_DAY,
            Period::Month => PERIOD_MONTH,
        }
    }

    /// Its length in seconds when fixed: every period but the month.
    pub const fn fixed_secs(self) -> Option<u64> {
        match self {
            Period::Minute => Some(60),
            Period::Hour => Some(3600),
            Period::Day => Some(SECS_PER_DAY),
            Period::Month => None,
        }
    }
}

/// Where a window's tag keeps its period (`maps::PERIOD_*`): above its index, so that a count of
/// one period is never taken for a count of another (a reload that changes a plan's period
/// starts its keys' counts anew, rather than charging minutes to a window of days).
pub const TAG_PERIOD_SHIFT: u32 = 29;

/// The tag of window `index` of the period of code `period` (its index: minutes, hours or days
/// since 1970, or months since year 0; 29 bits hold a thousand years of minutes).
pub const fn tag(period: u32, index: u64) -> u32 {
    (period << TAG_PERIOD_SHIFT) | (index as u32 & ((1 << TAG_PERIOD_SHIFT) - 1))
}

/// Whether two tags are of the same period.
pub const fn same_period(a: u32, b: u32) -> bool {
    a >> TAG_PERIOD_SHIFT == b >> TAG_PERIOD_SHIFT
}

/// One window of a period: `[start, end)` in UTC seconds, and its tag ([`tag`]) — a number that
/// grows by one from a window to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub end: u64,
    pub tag: u32,
}

/// The window of `period` that holds the moment `utc_secs`.
pub fn window(period: Period, utc_secs: u64) -> Window {
    match period.fixed_secs() {
        Some(secs) => {
            let index = utc_secs / secs;
            Window {
                start: index * secs,
                end: (index + 1) * secs,
                tag: tag(period.code(), index),
            }
        }
        None => {
            let (year, month, _) = civil_from_days((utc_secs / SECS_PER_DAY) as i64);
            let (next_year, next_month) = if month == 12 {
                (year + 1, 1)
            } else {
                (year, month + 1)
            };
            Window {
                start: days_from_civil(year, month, 1) as u64 * SECS_PER_DAY,
                end: days_from_civil(next_year, next_month, 1) as u64 * SECS_PER_DAY,
                tag: tag(period.code(), (year * 12 + i64::from(month) - 1) as u64),
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (`month` 1–12, `day` 1–31): the
/// well-known `days_from_civil` of H. Hinnant's calendar algorithms, in eras of 400 years.
pub const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01: (year, month 1–12, day 1–31); the inverse of
/// [`days_from_civil`].
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// The window of a plan's period (`maps::PERIOD_*`) at `utc_secs`, as the datapath finds it:
/// its tag and its end (see [`window_of_ns`]).
#[inline(always)]
pub fn window_of(period: u32, utc_secs: u64, clock: &crate::maps::QuotaClock) -> (u32, u64) {
    window_of_ns(period, utc_secs * NANOS_PER_SEC, clock)
}

/// The window of a plan's period (`maps::PERIOD_*`) at `utc_ns` (UTC, ns since 1970): its tag
/// and its end (UTC seconds). Minutes, hours and days by one division (they roll over by
/// themselves, whether or not an agent runs); months from the bounds the agent wrote in `clock`
/// (a month the agent has not written — it was stopped for more than a month — is taken to end
/// a day after the last bound it knows, and so on, until it writes them again).
#[inline(always)]
pub fn window_of_ns(period: u32, utc_ns: u64, clock: &crate::maps::QuotaClock) -> (u32, u64) {
    use crate::maps::{PERIOD_DAY, PERIOD_HOUR, PERIOD_MINUTE};
    let fixed_secs: u64 = match period {
        PERIOD_MINUTE => 60,
        PERIOD_HOUR => 3600,
        PERIOD_DAY => SECS_PER_DAY,
        _ => 0,
    };
    if let Some(index) = utc_ns.checked_div(fixed_secs * NANOS_PER_SEC) {
        return (tag(period, index), (index + 1) * fixed_secs);
    }
    let utc_secs = utc_ns / NANOS_PER_SEC;
    if utc_secs < clock.month_end {
        (clock.month_tag, clock.month_end)
    } else if utc_secs < clock.next_month_end {
        (clock.month_tag.wrapping_add(1), clock.next_month_end)
    } else {
        let days = (utc_secs - clock.next_month_end) / SECS_PER_DAY;
        (
            clock.month_tag.wrapping_add(2).wrapping_add(days as u32),
            clock.next_month_end + (days + 1) * SECS_PER_DAY,
        )
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The bounds the datapath needs for month windows at `utc_secs` (see [`window_of`]).
pub fn month_clock(utc_secs: u64, utc_offset_ns: u64) -> crate::maps::QuotaClock {
    let month = window(Period::Month, utc_secs);
    let next = window(Period::Month, month.end);
    crate::maps::QuotaClock {
        utc_offset_ns,
        month_end: month.end,
        next_month_end: next.end,
        month_tag: month.tag,
        _pad: 0,
    }
}

/// A key's count `word` moved by `delta` requests in window `tag` (used kept within 0 and
/// `u32::MAX`): a count of an earlier window starts as `tag`'s from zero; one of a later window
/// (or of another period's) is not moved (`None`).
pub const fn adjusted(word: u64, tag: u32, delta: i64) -> Option<u64> {
    let usage = Usage::from_word(word);
    let used = if usage.tag == tag {
        usage.used as i64
    } else if same_period(usage.tag, tag) && usage.tag > tag {
        return None;
    } else {
        0
    };
    let moved = used.saturating_add(delta);
    let moved = if moved < 0 {
        0
    } else if moved > u32::MAX as i64 {
        u32::MAX
    } else {
        moved as u32
    };
    Some(Usage { tag, used: moved }.word())
}

/// What the datapath's quota check answers, as one word (a BPF-to-BPF call returns one
/// register): 0 — the key has no quota (or the map could not track it); [`TAKEN`] with the tag
/// of the window the request was counted in — within the quota, counted; anything else — over
/// the quota, the whole seconds until the window ends (at least 1, less than 2^32).
pub const TAKEN: u64 = 1 << 63;

/// A key's count in its quota window, as one word: the window's tag in the high half, the
/// requests used in it in the low half (so a quota is at most `u32::MAX` requests a window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub tag: u32,
    pub used: u32,
}

impl Usage {
    pub const fn from_word(word: u64) -> Usage {
        Usage {
            tag: (word >> 32) as u32,
            used: word as u32,
        }
    }

    pub const fn word(self) -> u64 {
        ((self.tag as u64) << 32) | self.used as u64
    }
}

/// What taking one request from a quota decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// Within the quota: the word to write (compare-and-swap against the one read).
    Within(u64),
    /// The quota of the window is used up.
    Over,
}

/// Takes one request from the quota `limit` at a moment of window `tag`, the key's count being
/// `word`. A later window starts from zero. An earlier one — the clock stepped back into a
/// window already spent (NTP) — is charged to the window the count is in: a clock that jumps
/// back never hands out a second quota.
pub const fn take(word: u64, tag: u32, limit: u32) -> Take {
    let usage = Usage::from_word(word);
    let tag = charged_window(word, tag);
    let used = if tag == usage.tag { usage.used } else { 0 };
    if used >= limit {
        return Take::Over;
    }
    Take::Within(
        Usage {
            tag,
            used: used + 1,
        }
        .word(),
    )
}

/// Requests added to a key's quota for one window (`limiter quota KEY --add N`), as one word:
/// the window's tag in the high half, the requests added in the low half. Written by the agent
/// only; the datapath reads it when a key's count reaches its quota, so a key without a top-up
/// pays nothing for the feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopUp {
    pub tag: u32,
    pub added: u32,
}

impl TopUp {
    pub const fn from_word(word: u64) -> TopUp {
        TopUp {
            tag: (word >> 32) as u32,
            added: word as u32,
        }
    }

    pub const fn word(self) -> u64 {
        ((self.tag as u64) << 32) | self.added as u64
    }
}

/// The window a request at window `tag` is charged to, the key's count being `word`: the later
/// of the two (see [`take`]: a clock stepped back charges the window the count is in); `tag`'s
/// when the count is of another period.
pub const fn charged_window(word: u64, tag: u32) -> u32 {
    let counted = Usage::from_word(word).tag;
    if same_period(counted, tag) && counted > tag {
        counted
    } else {
        tag
    }
}

/// A key's quota for the window a request at `tag` is charged to: the plan's `quota` plus the
/// top-up `top_up` (a [`TopUp`] word) when it is of that window (at most `u32::MAX`).
pub const fn limit_with_top_up(quota: u32, top_up: u64, word: u64, tag: u32) -> u32 {
    let top_up = TopUp::from_word(top_up);
    if top_up.tag == charged_window(word, tag) {
        quota.saturating_add(top_up.added)
    } else {
        quota
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn date(year: i64, month: u32, day: u32) -> u64 {
        days_from_civil(year, month, day) as u64 * SECS_PER_DAY
    }

    #[test]
    fn calendar_dates_round_trip_and_match_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 28), 20_785);
        for days in -800_000..800_000i64 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn months_have_their_real_length() {
        let len = |y, m| {
            let w = window(Period::Month, date(y, m, 1) + 5);
            (w.end - w.start) / SECS_PER_DAY
        };
        assert_eq!(len(2026, 1), 31);
        assert_eq!(len(2026, 2), 28);
        assert_eq!(len(2028, 2), 29, "a leap year");
        assert_eq!(len(2100, 2), 28, "a century is not a leap year");
        assert_eq!(len(2000, 2), 29, "every fourth century is");
        assert_eq!(len(2026, 4), 30);
        assert_eq!(len(2026, 12), 31, "December ends in the next year");
        assert_eq!(
            window(Period::Month, date(2026, 12, 31) + SECS_PER_DAY - 1).end,
            date(2027, 1, 1)
        );
    }

    #[test]
    fn the_last_second_of_a_window_is_in_it_and_the_next_is_not() {
        for period in Period::ALL {
            let first = window(period, date(2026, 11, 28) + 12 * 3600);
            let last = window(period, first.end - 1);
            let next = window(period, first.end);
            assert_eq!(last, first, "{period:?}");
            assert_eq!(next.start, first.end, "{period:?}");
            assert_eq!(next.tag, first.tag + 1, "{period:?}: tags count windows");
        }
    }

    /// A leap second (23:59:60 UTC) is not a POSIX second: CLOCK_REALTIME shows 23:59:59
    /// twice (or the kernel smears it), so both readings fall in the day that ends and the next
    /// day starts at its midnight as always: the day's window lasts 86 401 real seconds, and
    /// the next one's quota is not touched before it starts.
    #[test]
    fn a_leap_second_lengthens_its_window_and_skips_none() {
        let end_of_2016 = date(2017, 1, 1) - 1;
        let day = window(Period::Day, end_of_2016);
        // The repeated 23:59:59: the same window, twice.
        assert_eq!(window(Period::Day, end_of_2016), day);
        assert_eq!(window(Period::Day, end_of_2016 + 1).tag, day.tag + 1);
        assert_eq!(window(Period::Month, end_of_2016).end, date(2017, 1, 1));
    }

    #[test]
    fn a_quota_passes_its_limit_then_refuses_until_the_next_window() {
        let mut word = 0;
        for _ in 0..3 {
            match take(word, 10, 3) {
                Take::Within(next) => word = next,
                Take::Over => panic!("within the quota"),
            }
        }
        assert_eq!(take(word, 10, 3), Take::Over);
        assert_eq!(Usage::from_word(word), Usage { tag: 10, used: 3 });
        // The next window: from zero.
        assert_eq!(
            take(word, 11, 3),
            Take::Within(Usage { tag: 11, used: 1 }.word())
        );
        // The clock stepped back a window: charged to the spent one, refused.
        assert_eq!(take(word, 9, 3), Take::Over);
    }

    #[test]
    fn a_count_moves_within_its_window_and_bounds() {
        let word = Usage { tag: 10, used: 7 }.word();
        assert_eq!(
            adjusted(word, 10, 5),
            Some(Usage { tag: 10, used: 12 }.word())
        );
        assert_eq!(
            adjusted(word, 10, -9),
            Some(Usage { tag: 10, used: 0 }.word())
        );
        assert_eq!(
            adjusted(word, 11, 3),
            Some(Usage { tag: 11, used: 3 }.word())
        );
        assert_eq!(
            adjusted(word, 11, -3),
            Some(Usage { tag: 11, used: 0 }.word())
        );
        assert_eq!(
            adjusted(word, 9, 3),
            None,
            "a later window's count is left alone"
        );
        assert_eq!(
            adjusted(
                Usage {
                    tag: 10,
                    used: u32::MAX - 1
                }
                .word(),
                10,
                5
            ),
            Some(
                Usage {
                    tag: 10,
                    used: u32::MAX
                }
                .word()
            )
        );
    }

    #[test]
    fn a_count_of_another_period_starts_anew() {
        use crate::maps::{PERIOD_DAY, PERIOD_MINUTE};
        let now = date(2026, 11, 28) + 3600;
        let minute = window(Period::Minute, now).tag;
        let day = window(Period::Day, now).tag;
        assert!(!same_period(minute, day));
        assert_eq!(minute >> TAG_PERIOD_SHIFT, PERIOD_MINUTE);
        assert_eq!(day >> TAG_PERIOD_SHIFT, PERIOD_DAY);
        // A plan moved from minutes to days, and back: each time a fresh count, whichever
        // period's tags are the larger numbers.
        let minutes_used_up = Usage {
            tag: minute,
            used: 5,
        }
        .word();
        assert_eq!(
            take(minutes_used_up, day, 5),
            Take::Within(Usage { tag: day, used: 1 }.word())
        );
        let days_used_up = Usage { tag: day, used: 5 }.word();
        assert_eq!(
            take(days_used_up, minute, 5),
            Take::Within(
                Usage {
                    tag: minute,
                    used: 1
                }
                .word()
            )
        );
    }

    #[test]
    fn a_top_up_counts_in_its_window_and_the_window_the_count_is_in() {
        let top_up = TopUp { tag: 10, added: 5 }.word();
        let counted = Usage { tag: 10, used: 3 }.word();
        assert_eq!(limit_with_top_up(3, top_up, counted, 10), 8);
        // The clock stepped back a window: still charged to window 10, topped up.
        assert_eq!(limit_with_top_up(3, top_up, counted, 9), 8);
        // The next window: the plan's quota alone.
        assert_eq!(limit_with_top_up(3, top_up, counted, 11), 3);
        // No top-up (the word 0 is window 0's, long gone) and a top-up at the ceiling.
        assert_eq!(limit_with_top_up(3, 0, counted, 10), 3);
        let most = TopUp {
            tag: 10,
            added: u32::MAX,
        }
        .word();
        assert_eq!(limit_with_top_up(3, most, counted, 10), u32::MAX);
    }

    #[test]
    fn the_datapath_finds_the_windows_of_the_calendar() {
        use crate::maps::{PERIOD_DAY, PERIOD_HOUR, PERIOD_MINUTE, PERIOD_MONTH};
        let now = date(2026, 11, 28) + 3600 * 13 + 61;
        let clock = month_clock(now, 37_000_000_000);
        for (code, period) in [
            (PERIOD_MINUTE, Period::Minute),
            (PERIOD_HOUR, Period::Hour),
            (PERIOD_DAY, Period::Day),
            (PERIOD_MONTH, Period::Month),
        ] {
            // This month and the next, as the calendar has them.
            for at in [now, date(2026, 12, 31) + 5, date(2026, 12, 1)] {
                let w = window(period, at);
                assert_eq!(
                    window_of(code, at, &clock),
                    (w.tag, w.end),
                    "{period:?} at {at}"
                );
            }
        }
        // Beyond what the agent wrote: a window a day, later and later, never an earlier tag.
        let later = date(2027, 1, 1) + 10;
        let (tag, end) = window_of(PERIOD_MONTH, later, &clock);
        assert_eq!((tag, end), (clock.month_tag + 2, date(2027, 1, 2)));
    }

    proptest! {
        /// Whatever the order of moments (clock steps back and forth), no window passes more
        /// than the quota, and a window's count only ever grows.
        #[test]
        fn no_window_passes_more_than_its_quota(
            limit in 1u32..50,
            tags in proptest::collection::vec(0u32..6, 1..400),
        ) {
            let mut word = 0u64;
            let mut passed = [0u32; 6];
            for tag in tags {
                if let Take::Within(next) = take(word, tag, limit) {
                    let charged = Usage::from_word(next).tag as usize;
                    passed[charged] += 1;
                    prop_assert!(Usage::from_word(next).tag >= Usage::from_word(word).tag);
                    word = next;
                }
            }
            prop_assert!(passed.iter().all(|&p| p <= limit), "{passed:?}");
        }

        /// The same, with a top-up of one window: that window passes at most the quota plus
        /// the top-up, every other one at most the quota.
        #[test]
        fn a_top_up_raises_its_window_only(
            limit in 1u32..50,
            added in 0u32..50,
            topped in 0u32..6,
            tags in proptest::collection::vec(0u32..6, 1..400),
        ) {
            let top_up = TopUp { tag: topped, added }.word();
            let mut word = 0u64;
            let mut passed = [0u32; 6];
            for tag in tags {
                let allowed = limit_with_top_up(limit, top_up, word, tag);
                if let Take::Within(next) = take(word, tag, allowed) {
                    passed[Usage::from_word(next).tag as usize] += 1;
                    word = next;
                }
            }
            for (tag, &p) in passed.iter().enumerate() {
                let most = if tag as u32 == topped { limit + added } else { limit };
                prop_assert!(p <= most, "window {tag}: {p} passed, at most {most}");
            }
        }

        #[test]
        fn every_moment_is_in_its_window(secs in 0u64..(1u64 << 36)) {
            for period in Period::ALL {
                let w = window(period, secs);
                prop_assert!(w.start <= secs && secs < w.end);
                prop_assert_eq!(window(period, w.start), w);
                prop_assert_eq!(window(period, w.end).tag, w.tag + 1);
            }
        }
    }
}
