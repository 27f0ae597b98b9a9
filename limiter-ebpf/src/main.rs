//! The XDP program: for every packet, find the client's key, charge its token bucket, pass or drop.
//!
//! parse → classify (rules) → key → charge the bucket (`charging`) → count; then, for a request
//! on an `[http]` port, its API key (`http`). The agent writes `CONFIG` and the rule tries; this
//! program owns the buckets in `BUCKETS` (the agent only resets them, through `limiter_reset`)
//! and counts into `COUNTERS`. `limiter_egress` (`egress`) is the TC side of `[http] keep_alive`.
#![no_std]
#![no_main]
// The atomic intrinsics are the only read-modify-write atomics that lower on the BPF target
// (`core::sync::atomic` has none there: the target declares no CAS).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// One unaligned 32-bit packet load in BPF assembly (see `parse::packet_word`).
#![feature(asm_experimental_arch)]

mod charging;
mod egress;
mod http;
mod maps;
mod parse;
mod quota;
mod runtime;
mod shared;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    macros::{classifier, xdp},
    maps::lpm_trie::Key as LpmKey,
    programs::{TcContext, XdpContext},
};
use charging::{charge_key, count, Clock, Decision, CAS_ATTEMPTS};
use limiter_common::{
    bucket::FULL_BUCKET_TAT,
    charge::{self, words_to_bytes, RuleAction},
    maps::{
        Counter, DatapathConfig, QuotaAdjust, ResetRequest, RuleEntry, ADJUST_BUSY, ADJUST_DONE,
        ADJUST_LATER_WINDOW, BUCKET_EXHAUSTED_NOTIFIED, CONFIG_DRY_RUN, CONFIG_HTTP,
    },
    quota::adjusted,
};
use maps::{BUCKETS, CONFIG, OVERRIDES_V4, OVERRIDES_V6, RULES_V4, RULES_V6};
use parse::{Parsed, Source};
use shared::Bucket;

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
    match charge::rule_action(rule.as_ref()) {
        RuleAction::Limit => {}
        RuleAction::Allow => {
            count(Counter::AllowedByRule);
            return xdp_action::XDP_PASS;
        }
        RuleAction::Deny => {
            count(Counter::DeniedByRule);
            if dry_run {
                count(Counter::WouldDrop);
                return xdp_action::XDP_PASS;
            }
            return xdp_action::XDP_DROP;
        }
    }
    let (key, limit) = charge::bucket_of(&source, config, rule.as_ref());
    let mut clock = Clock::unread();
    match charge_key(&ctx, config, &key, &limit, &mut clock, dry_run) {
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
            // Read already: a pass is decided on the precise clock.
            now: clock.now(),
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

/// Moves one API key's quota count by a signed number of requests, in the window the request
/// names (fleet mode: a host's count made to say what its lease leaves it). Run by the agent
/// through `BPF_PROG_TEST_RUN` with a `QuotaAdjust` as packet data; a compare-and-swap, so that
/// requests the datapath counts at the same moment stay counted. Answers `ADJUST_*`.
#[xdp]
pub fn limiter_quota_adjust(ctx: XdpContext) -> u32 {
    let Some(request) = parse::ptr_at::<QuotaAdjust>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `ptr_at` checked the request is inside the packet; copied for the map helpers.
    let request = unsafe { request.read_unaligned() };
    let Some(word) = quota::usage_word(&request.hash) else {
        return ADJUST_BUSY;
    };
    let mut current = word.load();
    for _ in 0..CAS_ATTEMPTS {
        let Some(next) = adjusted(current, request.tag, request.delta) else {
            return ADJUST_LATER_WINDOW;
        };
        let (seen, swapped) = word.compare_exchange(current, next);
        if swapped {
            return ADJUST_DONE;
        }
        current = seen;
    }
    ADJUST_BUSY
}

/// The rule in force for the source (see `limiter_common::charge::find_rule`), looked up in the
/// override and rule tries of its family.
#[inline(always)]
fn find_rule(source: &Source, config: &DatapathConfig) -> Option<RuleEntry> {
    if source.is_ipv4() {
        let key = LpmKey::new(32, source.words()[0].to_ne_bytes());
        charge::find_rule(
            true,
            config,
            || OVERRIDES_V4.get(&key).copied(),
            || RULES_V4.get(&key).copied(),
        )
    } else {
        let key = LpmKey::new(128, words_to_bytes(source.words()));
        charge::find_rule(
            false,
            config,
            || OVERRIDES_V6.get(&key).copied(),
            || RULES_V6.get(&key).copied(),
        )
    }
}
