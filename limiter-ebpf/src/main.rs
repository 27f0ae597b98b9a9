//! The XDP program: for every packet, find the client's key, charge its token bucket, pass or drop.
//!
//! The agent writes `CONFIG`; this program owns the buckets in `BUCKETS` (the agent only resets
//! them, through `limiter_reset`) and counts into `COUNTERS`.
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
    programs::XdpContext,
};
use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use limiter_common::{
    bucket::{admit, Limit, FULL_BUCKET_TAT},
    maps::{BucketKey, BucketState, Counter, DatapathConfig, FAMILY_IPV4},
};
use maps::{BUCKETS, CONFIG, COUNTERS};

/// How often a packet retries its compare-and-swap when other CPUs update the same bucket at the
/// same moment. When every attempt loses, the packet is dropped: other CPUs are passing this key's
/// packets right now, and passing one more could exceed `burst + rate·t`. Losing 4 times in a row
/// takes a single key hammered from several CPUs at once, i.e. a key far over its limit anyway.
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
    let Some(key) = source_key(&ctx, config) else {
        count(Counter::NotLimited);
        return xdp_action::XDP_PASS;
    };
    charge_key(&key, &config.default_limit)
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

/// The key a packet is counted under: its source address masked to the configured prefix.
#[inline(always)]
fn source_key(ctx: &XdpContext, config: &DatapathConfig) -> Option<BucketKey> {
    let source = parse::ipv4_source(ctx)?;
    let prefix_len = if config.ipv4_prefix > 32 {
        32
    } else {
        config.ipv4_prefix
    };
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len)
    };
    let masked = (u32::from_be_bytes(source) & mask).to_be_bytes();
    let mut addr = [0u8; 16];
    addr[0] = masked[0];
    addr[1] = masked[1];
    addr[2] = masked[2];
    addr[3] = masked[3];
    Some(BucketKey {
        family: FAMILY_IPV4,
        prefix_len,
        addr,
    })
}

/// Charges one packet to `key`'s bucket, creating the bucket on the key's first packet.
#[inline(always)]
fn charge_key(key: &BucketKey, limit: &Limit) -> u32 {
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(state) = BUCKETS.get_ptr_mut(key) {
        return charge(state, now, limit);
    }
    // First packet of this key: a full bucket, less this packet.
    let first = admit(FULL_BUCKET_TAT, now, limit);
    let fresh = BucketState {
        tat_ns: first.unwrap_or(FULL_BUCKET_TAT),
        passed: first.is_some() as u64,
        dropped: first.is_none() as u64,
        rule_id: 0,
        flags: 0,
    };
    match BUCKETS.insert(key, fresh, BPF_NOEXIST as u64) {
        Ok(()) => verdict(first.is_some()),
        // Another CPU created the bucket between our lookup and insert: charge that one.
        Err(err) if err == -EEXIST => match BUCKETS.get_ptr_mut(key) {
            Some(state) => charge(state, now, limit),
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
fn charge(state: *mut BucketState, now: u64, limit: &Limit) -> u32 {
    let tat = unsafe { addr_of_mut!((*state).tat_ns) };
    let mut current = unsafe { read_volatile(tat) };
    let mut passed = false;
    for _ in 0..CAS_ATTEMPTS {
        let Some(next) = admit(current, now, limit) else {
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
    let counter = if passed {
        unsafe { addr_of_mut!((*state).passed) }
    } else {
        unsafe { addr_of_mut!((*state).dropped) }
    };
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1) };
    verdict(passed)
}

#[inline(always)]
fn verdict(passed: bool) -> u32 {
    if passed {
        count(Counter::Passed);
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
