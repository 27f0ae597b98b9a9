//! The XDP program: for every packet, find the client's key, charge its token bucket, pass or drop.
//!
//! parse → classify (rules) → key → charge the bucket → count. The agent writes `CONFIG` and the
//! rule tries; this program owns the buckets in `BUCKETS` (the agent only resets them, through
//! `limiter_reset`) and counts into `COUNTERS`.
#![no_std]
#![no_main]
// The atomic intrinsics are the only read-modify-write atomics that lower on the BPF target
// (`core::sync::atomic` has none there: the target declares no CAS).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// One unaligned 32-bit packet load in BPF assembly (see `parse::packet_word`).
#![feature(asm_experimental_arch)]

mod egress;
mod http;
mod maps;
mod parse;
mod runtime;
mod shared;

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST, TC_ACT_OK},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    maps::lpm_trie::Key as LpmKey,
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{info, warn};
use core::ptr::read_volatile;
use limiter_common::{
    bucket::{admit, Limit, FULL_BUCKET_TAT},
    charge::{self, words_to_bytes, Charge},
    maps::{
        counter_index, BucketKey, BucketState, Counter, DatapathConfig, ExhaustionEvent,
        ResetRequest, RuleEntry, BUCKET_EXHAUSTED_NOTIFIED, CONFIG_DRY_RUN, CONFIG_HTTP,
        CONFIG_LIMIT_NEW_KEYS, EVENTS_PER_SEC_PER_CPU, EVENT_BURST_PER_CPU, EVENT_DRY_RUN,
    },
};
use maps::{
    BUCKETS, CONFIG, COUNTERS, EVENTS, EVENT_BUDGET, NEW_KEYS, OVERRIDES_V4, OVERRIDES_V6,
    RULES_V4, RULES_V6,
};
use parse::{Parsed, Source};
use shared::{Bucket, Word};

/// How often a packet retries its compare-and-swap when other CPUs update the same bucket at the
/// same moment. Each attempt decides on the TAT the last one found, so a bucket emptied meanwhile
/// ends the loop as an ordinary drop; an attempt is lost only to another CPU's packet that
/// passed in between. Losing every one of them — a packet is dropped then, and counted as a
/// contention drop, since passing it could exceed `burst + rate·t` — takes as many packets
/// passed on other CPUs within the few nanoseconds of this loop: with tokens left, that does
/// not happen (the two-CPU test asserts none), so a packet is dropped only when its bucket is
/// empty. A bounded loop; the verifier walks it once per attempt.
const CAS_ATTEMPTS: u32 = 32;

const EEXIST: i32 = 17;

/// The per-CPU bound on exhaustion events, as a token bucket of its own.
const EVENT_LIMIT: Limit = Limit::new(EVENTS_PER_SEC_PER_CPU, EVENT_BURST_PER_CPU);

/// Which interface's counters this instance of the program adds to; the agent sets it at load
/// time (a read-only global: the verifier folds it into a constant).
#[unsafe(no_mangle)]
static IFACE_SLOT: u32 = 0;

// Inlined into the entry the macro makes: left to LLVM, a datapath this size becomes a
// function of its own, and every packet pays a BPF-to-BPF call (≈ 7 ns, measured).
#[xdp]
#[inline(always)]
pub fn limiter(ctx: XdpContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if config.valid == 0 {
        count(Counter::Unconfigured);
        return xdp_action::XDP_PASS;
    }
    let (source, l3) = match parse::classify(&ctx) {
        Parsed::Source(source, l3) => (source, l3),
        Parsed::NotLimited => {
            count(Counter::NotLimited);
            return xdp_action::XDP_PASS;
        }
        Parsed::Unparsed => {
            count(Counter::Unparsed);
            return xdp_action::XDP_PASS;
        }
    };
    let dry_run = config.flags & CONFIG_DRY_RUN != 0;
    let rule = find_rule(&source, config);
    let (key, limit) = match charge::charge(&source, config, rule.as_ref()) {
        Charge::Bucket { key, limit } => (key, limit),
        Charge::Allow => {
            count(Counter::AllowedByRule);
            return xdp_action::XDP_PASS;
        }
        Charge::Deny => {
            count(Counter::DeniedByRule);
            if dry_run {
                count(Counter::WouldDrop);
                return xdp_action::XDP_PASS;
            }
            return xdp_action::XDP_DROP;
        }
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match charge_key(&ctx, config, &key, &limit, now, dry_run) {
        Decision::Pass => {}
        // Counted as an insert failure: a key that cannot be tracked is not limited.
        Decision::Untracked => return xdp_action::XDP_PASS,
        Decision::Over(_) | Decision::Refused => return over_limit(dry_run),
    }
    // Within its source's limit: an HTTP request is charged to its API key too.
    if config.flags & CONFIG_HTTP != 0 {
        let packet = http::Passed {
            l3,
            ipv6: !source.is_ipv4(),
            now,
            dry_run,
        };
        let action = http::on_passed(&ctx, config, &packet);
        if action != http::GO_ON {
            return action;
        }
    }
    count(Counter::Passed);
    xdp_action::XDP_PASS
}

/// A packet over its source's limit: dropped, or counted and passed in dry run.
#[inline(always)]
fn over_limit(dry_run: bool) -> u32 {
    if dry_run {
        count(Counter::WouldDrop);
        xdp_action::XDP_PASS
    } else {
        count(Counter::Dropped);
        xdp_action::XDP_DROP
    }
}

/// The gateway's segments of connections kept open after a 429 (`[http] keep_alive`), into
/// the client's view; everything else untouched. Attached to the egress of each interface.
#[classifier]
pub fn limiter_egress(ctx: TcContext) -> i32 {
    let _ = egress::shift(&ctx);
    TC_ACT_OK
}

/// Gives one tracked key a full bucket, or brings its TAT down to a bound. Run by the agent
/// through `BPF_PROG_TEST_RUN` with a `ResetRequest` as packet data; returns `XDP_PASS` when the
/// key was tracked, `XDP_DROP` when not. Only the bucket's TAT is written: counters the datapath
/// adds to at the same time stay intact.
#[xdp]
pub fn limiter_reset(ctx: XdpContext) -> u32 {
    let Some(request) = parse::ptr_at::<ResetRequest>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `ptr_at` checked the request is inside the packet; map helpers take keys from the
    // stack, hence the copy.
    let request = unsafe { request.read_unaligned() };
    let Some(state) = BUCKETS.get_ptr_mut(request.key) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: a lookup in BUCKETS of this run.
    let bucket = unsafe { Bucket::new(state) };
    if request.tat_at_most == FULL_BUCKET_TAT {
        bucket.tat().store(FULL_BUCKET_TAT);
        // A full bucket is not exhausted: its next exhaustion is a new event.
        bucket.flags().clear(BUCKET_EXHAUSTED_NOTIFIED);
    } else {
        // Lower it, never raise it: packets passed meanwhile keep their place.
        let tat = bucket.tat();
        let mut current = tat.load();
        for _ in 0..CAS_ATTEMPTS {
            if current <= request.tat_at_most {
                break;
            }
            let (seen, swapped) = tat.compare_exchange(current, request.tat_at_most);
            if swapped {
                break;
            }
            current = seen;
        }
    }
    xdp_action::XDP_PASS
}

/// The rule in force for the source (see `limiter_common::charge::find_rule`), looked up in the
/// override and rule tries of its family.
#[inline(always)]
fn find_rule(source: &Source, config: &DatapathConfig) -> Option<RuleEntry> {
    match source {
        Source::V4(addr) => {
            let key = LpmKey::new(32, addr.to_ne_bytes());
            charge::find_rule(
                true,
                config,
                || OVERRIDES_V4.get(&key).copied(),
                || RULES_V4.get(&key).copied(),
            )
        }
        Source::V6(addr) => {
            let key = LpmKey::new(128, words_to_bytes(*addr));
            charge::find_rule(
                false,
                config,
                || OVERRIDES_V6.get(&key).copied(),
                || RULES_V6.get(&key).copied(),
            )
        }
    }
}

/// What charging a key decided (the key's own counters are kept; the caller counts the
/// packet's verdict).
enum Decision {
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
fn charge_key(
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
fn count(counter: Counter) {
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
