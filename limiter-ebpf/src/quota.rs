//! Quotas of API keys: so many requests per calendar window (`limiter_common::quota`), counted
//! per key in `QUOTAS` with a compare-and-swap on one word (the window's tag and the requests
//! used in it). The request path asks twice: before charging the key's rate (a key whose quota
//! is used up is refused without spending its rate), and after the rate passed it (the request
//! takes its place in the quota, or is refused when the window filled meanwhile). A key whose
//! count reached its quota may have been topped up for the window (`QUOTA_TOPUPS`, written by
//! the agent).

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::generated::bpf_ktime_get_tai_ns};
use limiter_common::{
    bucket::NANOS_PER_SEC,
    maps::{QuotaClock, PERIOD_NONE},
    quota::{limit_with_top_up, take, window_of, Take},
};

use crate::maps::{PLAN_QUOTAS, QUOTAS, QUOTA_TOPUPS};
use crate::shared::Word;

/// Compare-and-swap attempts on a key's quota word; losing them all means as many requests of
/// the key passed on other CPUs meanwhile: the request is refused as over its quota.
const ATTEMPTS: u32 = 8;

/// Whole seconds from now to the end of the key's window when the quota of its plan (slot
/// `plan`) is used up (≥ 1); 0 when it has room, or its plan no quota. With `take_one` (1), a
/// request within the quota takes its place in it.
///
/// Out of line: one compare-and-swap loop for the request path's two questions. (Its
/// arguments are values the request path has from the start: with the plan's quota and period
/// as arguments LLVM spilled one of them, undefined, on a path before they exist, which the
/// verifier refuses.)
#[inline(never)]
pub fn check(hash: u64, plan: u32, clock: &QuotaClock, take_one: u64) -> u64 {
    let (quota, period) = match PLAN_QUOTAS.get(plan) {
        Some(q) if q.quota != 0 && q.period != PERIOD_NONE => (q.quota, q.period),
        _ => return 0,
    };
    // SAFETY: a helper without arguments.
    let tai = unsafe { bpf_ktime_get_tai_ns() };
    let utc_secs = tai.saturating_sub(clock.tai_offset_ns) / NANOS_PER_SEC;
    let (tag, end) = window_of(period, utc_secs, clock);
    let retry = end.saturating_sub(utc_secs).max(1);
    // One stack slot for the key of every lookup (the program's stack is near its 512 bytes).
    let key = hash;
    let Some(word) = usage_word(&key) else {
        // Not tracked (the map could not take it): not limited by its quota.
        return 0;
    };
    let mut current = word.load();
    // Only a key that used up its quota looks for a top-up: keys without one pay nothing for
    // the feature. (Looked for once, before the loop: a retry inside it multiplies the
    // verifier's states past its limit. So a key filled to its quota by other CPUs during this
    // loop is refused once though topped up — never the other way round.)
    let limit = match take(current, tag, quota) {
        Take::Over => limit_with_top_up(quota, top_up(&key), current, tag),
        Take::Within(_) => quota,
    };
    for _ in 0..ATTEMPTS {
        let next = match take(current, tag, limit) {
            Take::Over => return retry,
            Take::Within(next) => next,
        };
        if take_one == 0 {
            return 0;
        }
        let (seen, swapped) = word.compare_exchange(current, next);
        if swapped {
            return 0;
        }
        current = seen;
    }
    retry
}

/// The key's top-up word (`quota::TopUp`; 0 when it has none).
#[inline(always)]
fn top_up(key: &u64) -> u64 {
    // SAFETY: a plain u64 value of QUOTA_TOPUPS, copied out.
    unsafe { QUOTA_TOPUPS.get(key) }.copied().unwrap_or(0)
}

/// The key's quota word, created (zero: nothing used) on its first request.
#[inline(always)]
fn usage_word(key: &u64) -> Option<Word> {
    let ptr = match QUOTAS.get_ptr_mut(key) {
        Some(ptr) => ptr,
        None => {
            // Another CPU may create it first: then its entry stands.
            let _ = QUOTAS.insert(key, 0, BPF_NOEXIST as u64);
            QUOTAS.get_ptr_mut(key)?
        }
    };
    // SAFETY: a lookup in QUOTAS of this run; an 8-byte aligned u64 value.
    Some(unsafe { Word::new(ptr) })
}
