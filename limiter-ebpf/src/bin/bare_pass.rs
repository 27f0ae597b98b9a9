//! For `cargo xtask bench` (flood throughput): an XDP program that passes every packet and does
//! nothing else, attached to the receiving veth in the arms without an XDP program of their own
//! (no filter, nftables, iptables), so that the generator's XDP frames become packets of the
//! network stack there, as a NIC's would.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bare_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
