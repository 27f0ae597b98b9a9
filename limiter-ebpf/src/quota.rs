//! Quotas of API keys: so many requests per calendar window (`limiter_common::quota`), counted
//! per key in `QUOTAS` with a compare-and-swap on one word (the window's tag and the requests
//! used in it). The request path asks once, before charging the key's rate: a request within
//! the quota takes its place in it at once (a key whose quota is used up is refused without
//! spending its rate), and gives it back if its rate then refuses it. A key whose count reached
//! its quota may have been topped up for the window (`QUOTA_TOPUPS`, written by the agent).

use aya_ebpf::bindings::BPF_NOEXIST;
use limiter_common::{
    maps::{HttpConfig, PERIOD_NONE},
    quota::{limit_with_top_up, take as take_from, window_of_ns, Take, Usage, TAKEN},
};

use crate::maps::{PLAN_QUOTAS, QUOTAS, QUOTA_TOPUPS};
use crate::shared::Word;

/// Compare-and-swap attempts on a key's quota word; losing them all means as many requests of
/// the key passed on other CPUs meanwhile: the request is refused as over its quota.
const ATTEMPTS: u32 = 8;

/// Takes the request's place in the quota of its key (token hash `hash`, plan slot `plan`) at
/// `now` (CLOCK_MONOTONIC):
/// the answer is a `quota::TAKEN` word — 0 (no quota), taken (with the window's tag, for
/// [`give_back`]), or over (the seconds to the window's end).
///
/// Out of line: the verifier walks its compare-and-swap loop once per call site. (Its
/// arguments are values the request path has from the start: with the plan's quota and period
/// as arguments LLVM spilled one of them, undefined, on a path before they exist, which the
/// verifier refuses.)
#[inline(never)]
pub fn take(hash: u64, plan: u32, http: &HttpConfig, now: u64) -> u64 {
    // A plan without a quota is told by a bit of the configuration at hand, without a lookup.
    if (http.quota_plans >> (plan & 63)) & 1 == 0 {
        return 0;
    }
    let clock = &http.quota_clock;
    let (quota, period) = match PLAN_QUOTAS.get(plan) {
        Some(q) if q.quota != 0 && q.period != PERIOD_NONE => (q.quota, q.period),
        _ => return 0,
    };
    // UTC from the request path's CLOCK_MONOTONIC reading: no clock read of its own.
    let utc_ns = now.wrapping_add(clock.utc_offset_ns);
    let (tag, end) = window_of_ns(period, utc_ns, clock);
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
    let limit = match take_from(current, tag, quota) {
        Take::Over => limit_with_top_up(quota, top_up(&key), current, tag),
        Take::Within(_) => quota,
    };
    for _ in 0..ATTEMPTS {
        let next = match take_from(current, tag, limit) {
            Take::Over => break,
            Take::Within(next) => next,
        };
        let (seen, swapped) = word.compare_exchange(current, next);
        if swapped {
            return TAKEN | u64::from(Usage::from_word(next).tag);
        }
        current = seen;
    }
    // Whole seconds to the window's end, at least 1 (`end` is in seconds: the ns are rounded
    // down, so the retry is never early by more than the second it is in).
    end.saturating_sub(utc_ns / 1_000_000_000).max(1)
}

/// Gives back the place [`take`] took (`taken`, its answer; nothing when it took none) in the
/// key's quota: the key's rate refused the request. One attempt: should another CPU change the
/// word at that instant, the place stays taken — a request too many counted, never one too few.
#[inline(never)]
pub fn give_back(hash: u64, taken: u64) {
    if taken & TAKEN == 0 {
        return;
    }
    let tag = taken & !TAKEN;
    let Some(ptr) = QUOTAS.get_ptr_mut(hash) else {
        return;
    };
    // SAFETY: a lookup in QUOTAS of this run; an 8-byte aligned u64 value.
    let word = unsafe { Word::new(ptr) };
    let current = word.load();
    let usage = Usage::from_word(current);
    if u64::from(usage.tag) == tag && usage.used > 0 {
        let _ = word.compare_exchange(current, current - 1);
    }
}

/// The key's top-up word (`quota::TopUp`; 0 when it has none).
#[inline(always)]
fn top_up(key: &u64) -> u64 {
    // SAFETY: a plain u64 value of QUOTA_TOPUPS, copied out.
    unsafe { QUOTA_TOPUPS.get(key) }.copied().unwrap_or(0)
}

/// The key's quota word, created (zero: nothing used) on its first request.
#[inline(always)]
pub fn usage_word(key: &u64) -> Option<Word> {
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
