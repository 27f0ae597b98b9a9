//! The rate-limit arithmetic: GCRA (the generic cell rate algorithm), a token bucket expressed as
//! a single timestamp.
//!
//! A key's whole bucket is one `u64`, its *theoretical arrival time* (TAT): the moment the bucket
//! would be full again. Each passed packet pushes the TAT one emission interval (`1/rate`) into the
//! future; a packet passes when that leaves the TAT at most `burst` intervals ahead of now. This is
//! exactly a token bucket of depth `burst` refilled at `rate`, but its state fits one word, so the
//! XDP program can update it with a single compare-and-swap — which is what makes the limit exact
//! when packets of one key arrive on several CPUs at once.
//!
//! The interval is rounded *up* to whole nanoseconds, so rounding can only make a key pass fewer
//! packets than `burst + rate·t`, never more (the error is below 0.1% for rates up to 10⁶/s).

/// Nanoseconds per second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A limit in the form the datapath uses: the emission interval and the burst tolerance, both
/// in nanoseconds. Built by [`Limit::new`] from the operator's `rate` and `burst`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Nanoseconds between two packets at the sustained rate (`⌈10⁹ / rate⌉`, at least 1).
    pub interval_ns: u64,
    /// How far ahead of now the TAT may run: `burst × interval_ns` (saturating).
    pub tolerance_ns: u64,
}

impl Limit {
    /// `rate` in packets per second, `burst` in packets. A rate of 0 is treated as 1 and a burst
    /// of 0 passes nothing; the agent's config validation refuses both before they get here.
    pub const fn new(rate: u64, burst: u64) -> Limit {
        let rate = if rate == 0 { 1 } else { rate };
        let mut interval_ns = NANOS_PER_SEC.div_ceil(rate);
        if interval_ns == 0 {
            interval_ns = 1;
        }
        Limit {
            interval_ns,
            tolerance_ns: burst.saturating_mul(interval_ns),
        }
    }

    /// The bucket depth in packets.
    pub const fn burst(&self) -> u64 {
        self.tolerance_ns / self.interval_ns
    }

    /// The sustained rate in packets per second (after rounding of the interval).
    pub const fn rate(&self) -> u64 {
        NANOS_PER_SEC / self.interval_ns
    }
}

/// Decides one packet: `Some(new_tat)` when it passes (the caller stores `new_tat`), `None` when
/// it must be dropped (the state stays as it is).
#[inline(always)]
pub fn admit(tat: u64, now: u64, limit: &Limit) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    let new_tat = start.saturating_add(limit.interval_ns);
    // new_tat >= now, so this cannot underflow.
    if new_tat - now <= limit.tolerance_ns {
        Some(new_tat)
    } else {
        None
    }
}

/// The TAT of a key that has just been created by a packet that passed: a full bucket, one used.
#[inline(always)]
pub fn first_packet_tat(now: u64, limit: &Limit) -> Option<u64> {
    admit(0, now, limit)
}

/// The TAT that gives a key a full bucket (`remaining == burst`) whatever the clock says.
pub const FULL_BUCKET_TAT: u64 = 0;

/// How much of the tolerance the key has used up at `now`, in nanoseconds.
#[inline(always)]
fn debt(tat: u64, now: u64, limit: &Limit) -> u64 {
    let debt = tat.saturating_sub(now);
    if debt > limit.tolerance_ns {
        limit.tolerance_ns
    } else {
        debt
    }
}

/// Packets the key may send back to back at `now`.
pub fn remaining(tat: u64, now: u64, limit: &Limit) -> u64 {
    (limit.tolerance_ns - debt(tat, now, limit)) / limit.interval_ns
}

/// Whether the key's next packet at `now` would be dropped.
pub fn is_exhausted(tat: u64, now: u64, limit: &Limit) -> bool {
    admit(tat, now, limit).is_none()
}

/// Nanoseconds until the key's next packet would pass (0 when it would pass now).
pub fn retry_after_ns(tat: u64, now: u64, limit: &Limit) -> u64 {
    // A packet passes once tat - now <= tolerance - interval.
    let allowed = limit.tolerance_ns.saturating_sub(limit.interval_ns);
    tat.saturating_sub(now).saturating_sub(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drives `admit` like the datapath does, for one packet.
    fn offer(tat: &mut u64, now: u64, limit: &Limit) -> bool {
        match admit(*tat, now, limit) {
            Some(new) => {
                *tat = new;
                true
            }
            None => false,
        }
    }

    #[test]
    fn idle_key_passes_burst_back_to_back_then_nothing() {
        let limit = Limit::new(100, 20);
        let now = 5 * NANOS_PER_SEC;
        let mut tat = FULL_BUCKET_TAT;
        let passed = (0..1000).filter(|_| offer(&mut tat, now, &limit)).count();
        assert_eq!(passed, 20);
        assert!(is_exhausted(tat, now, &limit));
        assert_eq!(remaining(tat, now, &limit), 0);
        assert_eq!(retry_after_ns(tat, now, &limit), 10_000_000);
    }

    #[test]
    fn sustained_flood_gets_exactly_rate_per_second() {
        let limit = Limit::new(1000, 50);
        let mut tat = FULL_BUCKET_TAT;
        let start = NANOS_PER_SEC;
        let mut passed = 0u64;
        // One packet every 100 µs (10× the rate) for 3 s.
        let mut now = start;
        while now <= start + 3 * NANOS_PER_SEC {
            passed += offer(&mut tat, now, &limit) as u64;
            now += 100_000;
        }
        assert_eq!(passed, 50 + 3 * 1000);
    }

    #[test]
    fn a_key_under_its_rate_is_never_dropped() {
        let limit = Limit::new(10, 1);
        let mut tat = FULL_BUCKET_TAT;
        for i in 0..1000u64 {
            assert!(offer(&mut tat, NANOS_PER_SEC + i * 100_000_000, &limit));
        }
    }

    #[test]
    fn reset_gives_a_full_bucket() {
        let limit = Limit::new(100, 20);
        let now = 7 * NANOS_PER_SEC;
        let mut tat = FULL_BUCKET_TAT;
        while offer(&mut tat, now, &limit) {}
        assert_eq!(remaining(tat, now, &limit), 0);
        tat = FULL_BUCKET_TAT;
        assert_eq!(remaining(tat, now, &limit), 20);
        assert!(!is_exhausted(tat, now, &limit));
        assert_eq!(retry_after_ns(tat, now, &limit), 0);
        let passed = (0..100).filter(|_| offer(&mut tat, now, &limit)).count();
        assert_eq!(passed, 20);
    }

    #[test]
    fn remaining_counts_down_and_refills() {
        let limit = Limit::new(1000, 10);
        let now = NANOS_PER_SEC;
        let mut tat = FULL_BUCKET_TAT;
        for expected in (0..10).rev() {
            assert!(offer(&mut tat, now, &limit));
            assert_eq!(remaining(tat, now, &limit), expected);
        }
        assert_eq!(remaining(tat, now + 3_000_000, &limit), 3);
        assert_eq!(remaining(tat, now + 60 * NANOS_PER_SEC, &limit), 10);
    }

    #[test]
    fn rounding_never_passes_more_than_the_rate() {
        // 10⁹/3 is not a whole number of nanoseconds.
        let limit = Limit::new(3, 1);
        assert_eq!(limit.interval_ns, 333_333_334);
        assert_eq!(limit.rate(), 2);
        assert_eq!(limit.burst(), 1);
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        for (rate, burst) in [(1, u64::MAX), (u64::MAX, u64::MAX), (u64::MAX, 1), (1, 1)] {
            let limit = Limit::new(rate, burst);
            for now in [0, 1, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                for tat in [0, 1, now, u64::MAX] {
                    let _ = admit(tat, now, &limit);
                    let r = remaining(tat, now, &limit);
                    assert!(r <= limit.burst());
                    let _ = retry_after_ns(tat, now, &limit);
                }
            }
        }
        // A huge burst at the maximum rate still passes its first packet.
        assert!(first_packet_tat(u64::MAX - 10, &Limit::new(u64::MAX, u64::MAX)).is_some());
    }

    proptest! {
        /// Over any window, passes never exceed burst + rate·t (+1 for rounding of t).
        #[test]
        fn never_more_than_burst_plus_rate_times_t(
            rate in 1u64..100_000,
            burst in 1u64..1000,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..400),
        ) {
            let limit = Limit::new(rate, burst);
            let mut tat = FULL_BUCKET_TAT;
            let mut now = 1_000 * NANOS_PER_SEC;
            let mut passes = Vec::new();
            for gap in gaps {
                now += gap;
                if offer(&mut tat, now, &limit) {
                    passes.push(now);
                }
            }
            for (i, &from) in passes.iter().enumerate() {
                for (j, &to) in passes.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as u128;
                    let bound = burst as u128 + (rate as u128 * (to - from) as u128) / NANOS_PER_SEC as u128 + 1;
                    prop_assert!(count <= bound, "{count} passes in {} ns, bound {bound}", to - from);
                }
            }
        }

        /// The bucket view agrees with the verdict.
        #[test]
        fn exhausted_means_next_packet_dropped(
            rate in 1u64..1_000_000,
            burst in 1u64..10_000,
            tat in 0u64..10 * NANOS_PER_SEC,
            now in 0u64..10 * NANOS_PER_SEC,
        ) {
            let limit = Limit::new(rate, burst);
            let exhausted = is_exhausted(tat, now, &limit);
            prop_assert_eq!(exhausted, remaining(tat, now, &limit) == 0);
            prop_assert_eq!(exhausted, retry_after_ns(tat, now, &limit) > 0);
            if exhausted {
                let wait = retry_after_ns(tat, now, &limit);
                prop_assert!(admit(tat, now + wait, &limit).is_some());
                prop_assert!(admit(tat, now + wait - 1, &limit).is_none());
            }
        }
    }
}
