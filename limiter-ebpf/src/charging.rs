//! Charging a key's bucket — a source's or an API key's — and what goes with it: creating the
//! bucket on a key's first packet (within `[agent] new_keys_per_sec`), the compare-and-swap on
//! its TAT, the key's counters, the exhaustion event, and the global counters. `main` (the
//! programs) and `http` (the request path) call it; it calls neither.
//!
//! The clock: a packet of a key far over its limit is dropped on the coarse clock — the jiffies
//! counter — when that proves it over (see [`coarse_proof`]); every other decision, and every
//! pass, is taken on the precise clock, read at most once per packet ([`Clock`]).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    programs::XdpContext,
};
use aya_log_ebpf::{info, warn};
use core::ptr::read_volatile;
use limiter_common::{
    bucket::{admit, over_limit_until, Limit, FULL_BUCKET_TAT},
    maps::{
        counter_index, drop_tally_slot, BucketKey, BucketState, Counter, DatapathConfig, DropTally,
        ExhaustionEvent, BUCKET_EXHAUSTED_NOTIFIED, CONFIG_LIMIT_NEW_KEYS, EVENTS_PER_SEC_PER_CPU,
        EVENT_BURST_PER_CPU, EVENT_DRY_RUN,
    },
};

use crate::maps::{BUCKETS, COUNTERS, DROP_TALLIES, EVENTS, EVENT_BUDGET, NEW_KEYS};
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

/// The kernel's timer tick, ns (`sys::tick_ns`): one step of the coarse clock, the jiffies
/// counter; 0 turns the coarse-clock fast path off. Set by the agent at load time, like
/// `IFACE_SLOT`.
#[unsafe(no_mangle)]
static TICK_NS: u64 = 0;

/// The coarse clock's base, as this program learnt it: the least `now - jiffies · tick` seen on
/// a packet that read the jiffies counter and then the precise clock. The kernel moves jiffies
/// and the time of their last update in step (a whole tick per jiffy), so `update - jiffies ·
/// tick` is a constant and every such sample is at or above it: jiffies `j` then mean a precise
/// time before `base + (j + 1) · tick`, plus the delay of a late tick ([`LATE_TICK`]).
/// `i64::MAX` until the first sample. Written only when a sample lowers it.
static mut JIFFIES_BASE: i64 = i64::MAX;

/// Jiffies until which the fast path pauses, because the precise clock was found further ahead
/// of the jiffies than the fast path assumes (a stalled tick: a virtual CPU its host did not
/// run, say). Written only when that is found.
static mut COARSE_PAUSED_UNTIL: u64 = 0;

/// How long the fast path pauses after the jiffies were found late, ns.
const COARSE_PAUSE_NS: u64 = 1_000_000_000;

/// The delay of a tick's handling the fast path allows for, in ticks: 1 / this.
const LATE_TICK: u64 = 4;

/// One drop in this many of a key goes the precise way even when the coarse clock would prove
/// it, so that the jiffies' lag is checked on keys that never pass (a power of two).
const COARSE_SAMPLE: u64 = 64;

/// The precise clock (`bpf_ktime_get_ns`, CLOCK_MONOTONIC), read once per packet at most, and
/// only by a packet that needs it.
pub struct Clock(u64);

impl Clock {
    /// Not read yet.
    #[inline(always)]
    pub const fn unread() -> Clock {
        Clock(0)
    }

    /// Already read: `now`.
    #[inline(always)]
    const fn read_at(now: u64) -> Clock {
        Clock(now)
    }

    /// The precise time of this packet; the first call reads the clock (CLOCK_MONOTONIC is
    /// never 0 once the system runs).
    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            // SAFETY: a helper without arguments.
            self.0 = unsafe { bpf_ktime_get_ns() };
        }
        self.0
    }
}

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

/// Charges one packet to `key`'s bucket, creating the bucket on the key's first; the clock is
/// read only when the coarse one cannot prove the packet over the limit.
#[inline(always)]
pub fn charge_key(
    ctx: &XdpContext,
    config: &DatapathConfig,
    key: &BucketKey,
    limit: &Limit,
    clock: &mut Clock,
    dry_run: bool,
) -> Decision {
    charge_key_with(ctx, config, key, limit, clock, true, dry_run)
}

/// Charges one request to `key`'s bucket as [`charge_key`] does, at `now`, read already: the
/// coarse clock has nothing to save then (and leaving it out keeps the request path within the
/// verifier's bounds).
#[inline(always)]
pub fn charge_key_at(
    ctx: &XdpContext,
    config: &DatapathConfig,
    key: &BucketKey,
    limit: &Limit,
    now: u64,
    dry_run: bool,
) -> Decision {
    let mut clock = Clock::read_at(now);
    charge_key_with(ctx, config, key, limit, &mut clock, false, dry_run)
}

#[inline(always)]
fn charge_key_with(
    ctx: &XdpContext,
    config: &DatapathConfig,
    key: &BucketKey,
    limit: &Limit,
    clock: &mut Clock,
    try_coarse: bool,
    dry_run: bool,
) -> Decision {
    if let Some(state) = BUCKETS.get_ptr_mut(key) {
        // SAFETY: a lookup in BUCKETS of this run.
        let bucket = unsafe { Bucket::new(state) };
        let notified = bucket.flags().load() & BUCKET_EXHAUSTED_NOTIFIED != 0;
        let coarse = if try_coarse && notified {
            coarse_proof(bucket, limit)
        } else {
            Coarse::Unused
        };
        if let Coarse::Over(tat) = coarse {
            count(Counter::CoarseDrops);
            return over(bucket, key, notified, tat, dry_run);
        }
        let now = clock.now();
        if let Coarse::Undecided(jiffies) = coarse {
            learn_jiffies(jiffies, now);
        }
        return charge(ctx, key, bucket, notified, now, limit, dry_run);
    }
    let now = clock.now();
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
            Some(state) => {
                // SAFETY: a lookup in BUCKETS of this run.
                let bucket = unsafe { Bucket::new(state) };
                let notified = bucket.flags().load() & BUCKET_EXHAUSTED_NOTIFIED != 0;
                charge(ctx, key, bucket, notified, now, limit, dry_run)
            }
            None => insert_failed(),
        },
        Err(_) => insert_failed(),
    }
}

/// What the coarse clock said of a packet.
enum Coarse {
    /// Not asked: the fast path is off, or cannot tell for this key.
    Unused,
    /// Read (these jiffies) but not proof enough: the precise clock decides.
    Undecided(u64),
    /// Over the limit whatever the precise time: the key's TAT.
    Over(u64),
}

/// The fast path of a key far over its limit. The jiffies counter (read for a fraction of a
/// ns: the verifier inlines it; the precise clock costs tens) gives a time no earlier than the
/// precise one (see [`JIFFIES_BASE`]); a key over its limit then was over it at the precise time
/// too (`over_limit_until`). Only for a key whose exhaustion was already reported (the drop that
/// reports it goes the precise way) and whose refill interval is longer than a tick and a late
/// tick's delay (else the jiffies can hardly ever prove anything: not read at all). A pass is
/// only ever decided on the precise clock.
#[inline(always)]
fn coarse_proof(bucket: Bucket, limit: &Limit) -> Coarse {
    if !jiffies_can_prove(limit) {
        return Coarse::Unused;
    }
    let tick = tick_ns();
    // SAFETY: a helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    // SAFETY: words of this program's .data, written whole (see `learn_jiffies`).
    let (paused_until, base) = unsafe {
        (
            read_volatile(&raw const COARSE_PAUSED_UNTIL),
            read_volatile(&raw const JIFFIES_BASE),
        )
    };
    if jiffies < paused_until {
        return Coarse::Unused;
    }
    // The key's over-limit count picks the samples.
    if base == i64::MAX || over_so_far() % COARSE_SAMPLE == COARSE_SAMPLE - 1 {
        return Coarse::Undecided(jiffies);
    }
    let latest = latest_ns(base, jiffies, tick);
    let tat = bucket.tat().load();
    if over_limit_until(tat, latest, limit) {
        Coarse::Over(tat)
    } else {
        Coarse::Undecided(jiffies)
    }
}

/// Whether the jiffies can ever prove a packet of a key under `limit` over it: the fast path is
/// on, and the refill interval is longer than a tick and a late tick's delay (else the jiffies
/// are not read at all).
#[inline(always)]
fn jiffies_can_prove(limit: &Limit) -> bool {
    let tick = tick_ns();
    tick != 0 && limit.interval_ns > tick + tick / LATE_TICK
}

/// The latest precise time `jiffies` allow, ns.
#[inline(always)]
fn latest_ns(base: i64, jiffies: u64, tick: u64) -> u64 {
    let next = (jiffies + 1).wrapping_mul(tick) + tick / LATE_TICK;
    base.wrapping_add(next as i64) as u64
}

/// On a packet that read the jiffies and then the precise clock: learns the base from them, and
/// checks the fast path's assumption — the precise time before the latest the jiffies allow.
/// When it is not (a tick that stalled), the fast path pauses for a second, on this interface's
/// program, and the time is counted.
#[inline(always)]
fn learn_jiffies(jiffies: u64, now: u64) {
    let tick = tick_ns();
    let sample = (now as i64).wrapping_sub(jiffies.wrapping_mul(tick) as i64);
    // SAFETY: words of this program's .data; an aligned u64 is never torn, and CPUs writing at
    // once each write a value that is safe on its own (a sample is never below the base; a
    // pause is a second ahead).
    unsafe {
        let base = read_volatile(&raw const JIFFIES_BASE);
        if sample < base {
            core::ptr::write_volatile(&raw mut JIFFIES_BASE, sample);
        } else if now > latest_ns(base, jiffies, tick) {
            count(Counter::CoarseClockLate);
            // (`tick` is not 0 here: the fast path is off then; `max` tells the compiler.)
            let pause = jiffies + COARSE_PAUSE_NS / tick.max(1);
            core::ptr::write_volatile(&raw mut COARSE_PAUSED_UNTIL, pause);
        }
    }
}

#[inline(always)]
fn tick_ns() -> u64 {
    // SAFETY: a read of a static, never written by this program.
    unsafe { read_volatile(&TICK_NS) }
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

/// Charges one packet to an existing bucket. `notified`: its exhaustion flag as read.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn charge(
    ctx: &XdpContext,
    key: &BucketKey,
    bucket: Bucket,
    notified: bool,
    now: u64,
    limit: &Limit,
    dry_run: bool,
) -> Decision {
    match take(bucket.tat(), now, limit) {
        // The exhaustion flag is cleared only once the key has a packet to spare after this
        // one: a key held at its rate passes a packet now and then and is still exhausted — no
        // new event for it.
        Taken::Passed(tat) => {
            if notified && admit(tat, now, limit).is_some() {
                bucket.flags().clear(BUCKET_EXHAUSTED_NOTIFIED);
            }
            bucket.passed().increment();
            Decision::Pass
        }
        Taken::OverLimit(tat) => {
            if !notified {
                let before = bucket.flags().fetch_or(BUCKET_EXHAUSTED_NOTIFIED);
                // Of the CPUs that found it clear at once, only the one that set it reports.
                if before & BUCKET_EXHAUSTED_NOTIFIED == 0 {
                    exhausted(ctx, key, now, dry_run);
                }
            }
            over(bucket, key, notified, tat, dry_run)
        }
        Taken::Contended(tat) => {
            count(Counter::ContentionDrops);
            over(bucket, key, notified, tat, dry_run)
        }
    }
}

/// Counts a packet over the limit on its key — dropped, or would-drop in dry run. A key
/// reported exhausted already (`notified`) is most likely over its limit again and again: its
/// drops are counted in this CPU's tally when it can have it (see `DropTally`), else in the
/// bucket.
#[inline(always)]
fn over(bucket: Bucket, key: &BucketKey, notified: bool, tat: u64, dry_run: bool) -> Decision {
    let tallied = notified && Tally::of(key).is_some_and(|tally| tally.count(key, dry_run));
    if !tallied {
        if dry_run {
            bucket.would_drop().increment();
        } else {
            bucket.dropped().increment();
        }
    }
    Decision::Over(tat)
}

/// This CPU's drop tally slot for a key (see `DropTally`).
#[derive(Clone, Copy)]
struct Tally {
    slot: *mut DropTally,
}

impl Tally {
    #[inline(always)]
    fn of(key: &BucketKey) -> Option<Tally> {
        let slot = DROP_TALLIES.get_ptr_mut(drop_tally_slot(key))?;
        Some(Tally { slot })
    }

    /// Counts a drop of `key` here: when the slot is the key's, or empty, or found idle long
    /// enough to be taken over (see [`take_over`]). `false`: another key's, busy — the drop is
    /// to be counted in the bucket.
    #[inline(always)]
    fn count(self, key: &BucketKey, dry_run: bool) -> bool {
        // SAFETY: a per-CPU array value of this run: no other CPU touches it, and nothing else
        // in this run holds a reference to it.
        let tally = unsafe { &mut *self.slot };
        if tally.key != *key && !take_over(tally, key) {
            return false;
        }
        if dry_run {
            tally.would_drop += 1;
        } else {
            tally.dropped += 1;
        }
        true
    }
}

/// Gives `tally` to `key` if it may have it (`DropTally::may_take`), what it held going to its
/// old key's bucket (gone, evicted: to nothing). Out of line: the key counting in its own slot,
/// the path of every packet of a flood, does not carry it.
#[inline(never)]
fn take_over(tally: &mut DropTally, key: &BucketKey) -> bool {
    // SAFETY: a helper without arguments.
    if !tally.may_take(unsafe { bpf_jiffies64() }) {
        return false;
    }
    if !tally.is_empty() {
        // The key is read by the helper from the map value itself.
        #[allow(clippy::needless_borrows_for_generic_args)]
        if let Some(state) = BUCKETS.get_ptr_mut(&tally.key) {
            // SAFETY: a lookup in BUCKETS of this run.
            let bucket = unsafe { Bucket::new(state) };
            bucket.dropped().add(tally.dropped);
            bucket.would_drop().add(tally.would_drop);
        }
    }
    *tally = DropTally {
        key: *key,
        probe_count: u64::MAX,
        ..DropTally::default()
    };
    true
}

/// How many packets over their limit this CPU has had on this interface (dropped, or let
/// through by dry run): a count that moves with every one — the coarse clock's samples are
/// picked by it.
#[inline(always)]
fn over_so_far() -> u64 {
    let slot = iface_slot();
    let read = |counter| {
        COUNTERS
            .get(counter_index(slot, counter))
            .copied()
            .unwrap_or(0)
    };
    read(Counter::Dropped).wrapping_add(read(Counter::WouldDrop))
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
