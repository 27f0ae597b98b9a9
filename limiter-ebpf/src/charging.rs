//! Charging a key's bucket — a source's or an API key's — and what goes with it: creating the
//! bucket on a key's first packet (within `[agent] new_keys_per_sec`), the compare-and-swap on
//! its TAT, the key's counters, the exhaustion event, and the global counters. `main` (the
//! programs) and `http` (the request path) call it; it calls neither.

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use aya_log_ebpf::{info, warn};
use core::ptr::read_volatile;
use limiter_common::{
    bucket::{admit, Limit, FULL_BUCKET_TAT},
    maps::{
        counter_index, BucketKey, BucketState, Counter, DatapathConfig, ExhaustionEvent,
        BUCKET_EXHAUSTED_NOTIFIED, CONFIG_LIMIT_NEW_KEYS, EVENTS_PER_SEC_PER_CPU,
        EVENT_BURST_PER_CPU, EVENT_DRY_RUN,
    },
};

use crate::maps::{BUCKETS, COUNTERS, EVENTS, EVENT_BUDGET, NEW_KEYS};
use crate::shared::{Bucket, Word};

/// How often a packet retries its compare-and-swap when other CPUs update the same bucket at the
/// same moment. Each attempt decides on the TAT the last one found, so a bucket emptied meanwhile
/// ends the loop as an ordinary drop; an attempt is lost only to another CPU's packet that
/// passed in between. Losing every one of them — a packet is dropped then, and counted as a
/// contention drop, since passing it could exceed `burst + rate·t` — takes as many packets
/// passed on other CPUs within the few nanoseconds of this loop: with tokens left, that does
/// not happen (the two-CPU test asserts none), so a packet is dropped only when its bucket is
/// empty. A bounded loop; the verifier walks it once per attempt.
pub const CAS_ATTEMPTS: u32 = 32;

const EEXIST: i32 = 17;

/// The per-CPU bound on exhaustion events, as a token bucket of its own.
const EVENT_LIMIT: Limit = Limit::new(EVENTS_PER_SEC_PER_CPU, EVENT_BURST_PER_CPU);

/// Which interface's counters this instance of the program adds to; the agent sets it at load
/// time (a read-only global: the verifier folds it into a constant).
#[unsafe(no_mangle)]
static IFACE_SLOT: u32 = 0;

/// What charging a key decided (the key's own counters are kept; the caller counts the
/// packet's verdict).
pub enum Decision {
    /// Within the limit.
    Pass,
    /// Over the limit; the key's TAT.
    Over(u64),
    /// A new key refused by `[agent] new_keys_per_sec` (counted).
    Refused,
    /// A new key the map could not take: not tracked, not limited (counted).
    Untracked,
}

/// Charges one packet (or request) to `key`'s bucket, creating the bucket on the key's first.
#[inline(always)]
pub fn charge_key(
    ctx: &XdpContext,
    config: &DatapathConfig,
    key: &BucketKey,
    limit: &Limit,
    now: u64,
    dry_run: bool,
) -> Decision {
    if let Some(state) = BUCKETS.get_ptr_mut(key) {
        // SAFETY: a lookup in BUCKETS of this run.
        return charge(ctx, key, unsafe { Bucket::new(state) }, now, limit, dry_run);
    }
    // First packet of this key. Over `[agent] new_keys_per_sec` it is refused and no key is
    // created: a flood from ever new (spoofed) sources then neither passes on fresh buckets nor
    // evicts the tracked keys of the clients already there.
    if config.flags & CONFIG_LIMIT_NEW_KEYS != 0 && !new_key_allowed(now, &config.new_key_limit) {
        count(Counter::NewKeysRefused);
        return Decision::Refused;
    }
    // A full bucket, less this packet.
    let first = admit(FULL_BUCKET_TAT, now, limit);
    let over = first.is_none();
    let fresh = BucketState {
        tat_ns: first.unwrap_or(FULL_BUCKET_TAT),
        passed: !over as u64,
        dropped: (over && !dry_run) as u64,
        would_drop: (over && dry_run) as u64,
        flags: if over { BUCKET_EXHAUSTED_NOTIFIED } else { 0 },
    };
    match BUCKETS.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(Counter::KeysCreated);
            if over {
                exhausted(ctx, key, now, dry_run);
                Decision::Over(fresh.tat_ns)
            } else {
                Decision::Pass
            }
        }
        // Another CPU created the bucket between our lookup and insert: charge that one.
        Err(err) if err == -EEXIST => match BUCKETS.get_ptr_mut(key) {
            // SAFETY: a lookup in BUCKETS of this run.
            Some(state) => charge(ctx, key, unsafe { Bucket::new(state) }, now, limit, dry_run),
            None => insert_failed(),
        },
        Err(_) => insert_failed(),
    }
}

/// Takes one key creation from the allowance shared by all CPUs. Only an allowed creation
/// writes (a compare-and-swap); a refusal only reads.
#[inline(always)]
fn new_key_allowed(now: u64, limit: &Limit) -> bool {
    let Some(tat) = NEW_KEYS.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a lookup in NEW_KEYS of this run; an array value of one u64.
    let tat = unsafe { Word::new(tat) };
    matches!(take(tat, now, limit), Taken::Passed(_))
}

/// The bucket could not be created (the LRU map could not free an entry). The packet passes:
/// a limiter that cannot track a key must not black-hole it. Counted, so it shows in metrics.
#[inline(always)]
fn insert_failed() -> Decision {
    count(Counter::InsertFailed);
    Decision::Untracked
}

/// Charges one packet to an existing bucket.
#[inline(always)]
fn charge(
    ctx: &XdpContext,
    key: &BucketKey,
    bucket: Bucket,
    now: u64,
    limit: &Limit,
    dry_run: bool,
) -> Decision {
    let taken = take(bucket.tat(), now, limit);
    let passed = matches!(taken, Taken::Passed(_));
    // The exhaustion flag: one load of the value already at hand on the common paths (a pass,
    // a drop of a key already reported); a write only when the key changes state.
    let notified = bucket.flags().load() & BUCKET_EXHAUSTED_NOTIFIED != 0;
    match taken {
        // Cleared only once the key has a packet to spare after this one: a key held at its
        // rate passes a packet now and then and is still exhausted — no new event for it.
        Taken::Passed(tat) => {
            if notified && admit(tat, now, limit).is_some() {
                bucket.flags().clear(BUCKET_EXHAUSTED_NOTIFIED);
            }
        }
        Taken::OverLimit(_) => {
            if !notified {
                let before = bucket.flags().fetch_or(BUCKET_EXHAUSTED_NOTIFIED);
                // Of the CPUs that found it clear at once, only the one that set it reports.
                if before & BUCKET_EXHAUSTED_NOTIFIED == 0 {
                    exhausted(ctx, key, now, dry_run);
                }
            }
        }
        Taken::Contended(_) => count(Counter::ContentionDrops),
    }
    let counter = if passed {
        bucket.passed()
    } else if dry_run {
        bucket.would_drop()
    } else {
        bucket.dropped()
    };
    counter.increment();
    match taken {
        Taken::Passed(_) => Decision::Pass,
        Taken::OverLimit(tat) | Taken::Contended(tat) => Decision::Over(tat),
    }
}

/// What [`take`] did with one packet.
enum Taken {
    /// Admitted: the GCRA TAT is now this.
    Passed(u64),
    /// Over the limit: nothing written; the TAT found.
    OverLimit(u64),
    /// Every compare-and-swap lost to another CPU; the TAT last found.
    Contended(u64),
}

/// Takes one packet from the GCRA at `tat`: a compare-and-swap of the TAT, retried a bounded
/// number of times when another CPU updated it first.
#[inline(always)]
fn take(tat: Word, now: u64, limit: &Limit) -> Taken {
    let mut current = tat.load();
    for _ in 0..CAS_ATTEMPTS {
        let Some(next) = admit(current, now, limit) else {
            return Taken::OverLimit(current);
        };
        let (seen, swapped) = tat.compare_exchange(current, next);
        if swapped {
            return Taken::Passed(next);
        }
        current = seen;
    }
    Taken::Contended(current)
}

/// `key` has just become exhausted: tells the agent through the ring buffer, within this CPU's
/// budget of events. Runs once per transition, so its map lookup and log lines stay off the
/// per-packet paths.
#[inline(always)]
fn exhausted(ctx: &XdpContext, key: &BucketKey, now: u64, dry_run: bool) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array value of this run: no other CPU touches it, and nothing else in
    // this run holds a reference to it.
    let budget = unsafe { &mut *budget };
    match admit(budget.tat_ns, now, &EVENT_LIMIT) {
        Some(tat) => budget.tat_ns = tat,
        None => {
            count(Counter::EventsSuppressed);
            return;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<ExhaustionEvent>(0) else {
        count(Counter::EventsLost);
        budget.lost += 1;
        if budget.lost == 1 {
            warn!(
                ctx,
                "exhaustion events ring buffer full: events are lost (and counted) until the agent reads it"
            );
        }
        return;
    };
    entry.write(ExhaustionEvent {
        key: *key,
        at_ns: now,
        iface_slot: iface_slot(),
        flags: if dry_run { EVENT_DRY_RUN } else { 0 },
    });
    entry.submit(0);
    if budget.lost != 0 {
        info!(
            ctx,
            "exhaustion events flow again; {} were lost to a full ring buffer on this CPU",
            budget.lost
        );
        budget.lost = 0;
    }
}

/// Adds one to a counter of this interface (per CPU, so no atomics needed).
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_index(iface_slot(), counter)) {
        // SAFETY: a per-CPU array value of this run: no other CPU touches it.
        unsafe { *slot += 1 };
    }
}

/// This instance's interface slot. Read through a volatile load so that the compiler does not
/// fold the global's initial value (the loader sets it; the verifier then folds it).
#[inline(always)]
fn iface_slot() -> u32 {
    // SAFETY: a read of a static, never written by this program.
    unsafe { read_volatile(&IFACE_SLOT) }
}
