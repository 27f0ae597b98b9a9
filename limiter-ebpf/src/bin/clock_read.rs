//! The clock alternatives of the datapath, for `cargo xtask bench`: each program reads one clock
//! once and drops the packet, so its cost less that of `bare_drop` is the cost of the read.
//!
//! - `clock_ktime`: `bpf_ktime_get_ns`, CLOCK_MONOTONIC — what the datapath reads today.
//! - `clock_coarse`: `bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC_COARSE (advances once a tick).
//! - `clock_jiffies`: `bpf_jiffies64`, the tick counter itself (no userspace clock matches it).
//!
//! The value decides the verdict (a zero clock passes), so the read cannot be optimised away and
//! every program has the same shape.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};

#[inline(always)]
fn verdict(now: u64) -> u32 {
    if now == 0 {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

#[xdp]
pub fn clock_ktime(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    verdict(unsafe { bpf_ktime_get_ns() })
}

#[xdp]
pub fn clock_coarse(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    verdict(unsafe { bpf_ktime_get_coarse_ns() })
}

#[xdp]
pub fn clock_jiffies(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    verdict(unsafe { bpf_jiffies64() })
}
