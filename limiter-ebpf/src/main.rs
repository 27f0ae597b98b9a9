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

mod maps;
mod parse;

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    maps::lpm_trie::Key as LpmKey,
    programs::XdpContext,
};
use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use limiter_common::{
    bucket::{admit, Limit, FULL_BUCKET_TAT},
    maps::{
        BucketKey, BucketState, Counter, DatapathConfig, RuleEntry, ACTION_ALLOW, ACTION_DENY,
        CONFIG_DRY_RUN, CONFIG_HAS_RULES_V4, CONFIG_HAS_RULES_V6, DEFAULT_RULE_ID, FAMILY_IPV4,
        FAMILY_IPV6, RULE_SHARED,
    },
};
use maps::{BUCKETS, CONFIG, COUNTERS, RULES_V4, RULES_V6};
use parse::{Parsed, Source};

/// How often a packet retries its compare-and-swap when other CPUs update the same bucket at the
/// same moment. When every attempt loses, the packet is dropped (and counted as a contention
/// drop): other CPUs are passing this key's packets right now, and passing one more could exceed
/// `burst + rate·t`. Losing 4 times in a row takes a single key hammered from several CPUs at
/// once, i.e. a key far over its limit anyway.
const CAS_ATTEMPTS: u32 = 4;

const EEXIST: i32 = 17;

#[xdp]
pub fn limiter(ctx: XdpContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return xdp_action::XDP_PASS;
    };
    if config.valid == 0 {
        count(Counter::Unconfigured);
        return xdp_action::XDP_PASS;
    }
    let source = match parse::classify(&ctx) {
        Parsed::Source(source) => source,
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
    let (key, limit) = match rule {
        None => (
            source_key(&source, config, DEFAULT_RULE_ID, None),
            config.default_limit,
        ),
        Some(rule) if rule.action == ACTION_ALLOW => {
            count(Counter::AllowedByRule);
            return xdp_action::XDP_PASS;
        }
        Some(rule) if rule.action == ACTION_DENY => {
            count(Counter::DeniedByRule);
            if dry_run {
                count(Counter::WouldDrop);
                return xdp_action::XDP_PASS;
            }
            return xdp_action::XDP_DROP;
        }
        Some(rule) => {
            let shared = (rule.flags & RULE_SHARED != 0).then_some(rule.prefix_len);
            (source_key(&source, config, rule.id, shared), rule.limit)
        }
    };
    charge_key(&key, &limit, dry_run)
}

/// Gives one tracked key a full bucket. Run by the agent through `BPF_PROG_TEST_RUN` with the
/// `BucketKey` as packet data; returns `XDP_PASS` when the key was tracked, `XDP_DROP` when not.
/// Only the bucket's TAT is written: counters the datapath adds to at the same time stay intact.
#[xdp]
pub fn limiter_reset(ctx: XdpContext) -> u32 {
    let Some(key) = parse::ptr_at::<BucketKey>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // Map helpers take keys from the stack.
    let key = unsafe { *key };
    match BUCKETS.get_ptr_mut(key) {
        Some(state) => {
            unsafe { write_volatile(addr_of_mut!((*state).tat_ns), FULL_BUCKET_TAT) };
            xdp_action::XDP_PASS
        }
        None => xdp_action::XDP_DROP,
    }
}

/// The rule with the longest prefix containing the source, if the agent configured any.
#[inline(always)]
fn find_rule(source: &Source, config: &DatapathConfig) -> Option<RuleEntry> {
    match source {
        Source::V4(addr) if config.flags & CONFIG_HAS_RULES_V4 != 0 => {
            RULES_V4.get(LpmKey::new(32, *addr)).copied()
        }
        Source::V6(addr) if config.flags & CONFIG_HAS_RULES_V6 != 0 => {
            RULES_V6.get(LpmKey::new(128, *addr)).copied()
        }
        _ => None,
    }
}

/// The key a packet is counted under: its source address masked to the configured prefix, or to
/// the rule's CIDR (`shared`), under `rule_id`.
#[inline(always)]
fn source_key(
    source: &Source,
    config: &DatapathConfig,
    rule_id: u32,
    shared: Option<u32>,
) -> BucketKey {
    let mut addr = [0u8; 16];
    let (family, width, prefix) = match source {
        Source::V4(a) => {
            addr[..4].copy_from_slice(a);
            (FAMILY_IPV4, 32, config.ipv4_prefix)
        }
        Source::V6(a) => {
            addr.copy_from_slice(a);
            (FAMILY_IPV6, 128, config.ipv6_prefix)
        }
    };
    let prefix = match shared {
        Some(len) => len,
        None => prefix,
    };
    let prefix = if prefix > width { width } else { prefix };
    // Clear the bits past `prefix`, a byte at a time.
    for (i, byte) in addr.iter_mut().enumerate() {
        let start = (i as u32) * 8;
        if start >= prefix {
            *byte = 0;
        } else if prefix - start < 8 {
            *byte &= 0xffu8 << (8 - (prefix - start));
        }
    }
    BucketKey {
        family,
        prefix_len: prefix as u8,
        _pad: 0,
        rule_id,
        addr,
    }
}

/// Charges one packet to `key`'s bucket, creating the bucket on the key's first packet.
#[inline(always)]
fn charge_key(key: &BucketKey, limit: &Limit, dry_run: bool) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(state) = BUCKETS.get_ptr_mut(key) {
        return charge(state, now, limit, dry_run);
    }
    // First packet of this key: a full bucket, less this packet.
    let first = admit(FULL_BUCKET_TAT, now, limit);
    let over = first.is_none();
    let fresh = BucketState {
        tat_ns: first.unwrap_or(FULL_BUCKET_TAT),
        passed: !over as u64,
        dropped: (over && !dry_run) as u64,
        would_drop: (over && dry_run) as u64,
        flags: 0,
        _pad: 0,
    };
    match BUCKETS.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => {
            count(Counter::KeysCreated);
            verdict(!over, dry_run)
        }
        // Another CPU created the bucket between our lookup and insert: charge that one.
        Err(err) if err == -EEXIST => match BUCKETS.get_ptr_mut(key) {
            Some(state) => charge(state, now, limit, dry_run),
            None => insert_failed(),
        },
        Err(_) => insert_failed(),
    }
}

/// The bucket could not be created (the LRU map could not free an entry). The packet passes:
/// a limiter that cannot track a key must not black-hole it. Counted, so it shows in metrics.
#[inline(always)]
fn insert_failed() -> u32 {
    count(Counter::InsertFailed);
    xdp_action::XDP_PASS
}

/// Charges one packet to an existing bucket: a compare-and-swap of its TAT, retried a bounded
/// number of times when another CPU updated it first.
#[inline(always)]
fn charge(state: *mut BucketState, now: u64, limit: &Limit, dry_run: bool) -> u32 {
    let tat = unsafe { addr_of_mut!((*state).tat_ns) };
    let mut current = unsafe { read_volatile(tat) };
    let mut passed = false;
    let mut over_limit = false;
    for _ in 0..CAS_ATTEMPTS {
        let Some(next) = admit(current, now, limit) else {
            over_limit = true;
            break;
        };
        let (seen, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, current, next,
            )
        };
        if swapped {
            passed = true;
            break;
        }
        current = seen;
    }
    if !passed && !over_limit {
        count(Counter::ContentionDrops);
    }
    let counter = if passed {
        unsafe { addr_of_mut!((*state).passed) }
    } else if dry_run {
        unsafe { addr_of_mut!((*state).would_drop) }
    } else {
        unsafe { addr_of_mut!((*state).dropped) }
    };
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1) };
    verdict(passed, dry_run)
}

#[inline(always)]
fn verdict(passed: bool, dry_run: bool) -> u32 {
    if passed {
        count(Counter::Passed);
        xdp_action::XDP_PASS
    } else if dry_run {
        count(Counter::WouldDrop);
        xdp_action::XDP_PASS
    } else {
        count(Counter::Dropped);
        xdp_action::XDP_DROP
    }
}

/// Adds one to a global counter (per CPU, so no atomics needed).
#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
