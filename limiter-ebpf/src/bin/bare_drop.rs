//! The floor of `cargo xtask bench`: an XDP program that drops every packet and does nothing
//! else. Its cost under `BPF_PROG_TEST_RUN` is what running any XDP program costs there (the
//! kernel's loop, the dispatcher, the call); the limiter's numbers are reported as ratios to it.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bare_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
