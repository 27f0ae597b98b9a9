//! For `cargo xtask bench` (flood throughput): an XDP program that reads a packet's IPv4 source
//! address and drops the packet — the least any filter by source must do. Next to the bare
//! `XDP_DROP`, which never touches the packet, it shows what the first read of a packet costs
//! (its bytes are not in this CPU's caches yet).
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

const ETH_LEN: usize = 14;
const IP_SOURCE_AT: usize = ETH_LEN + 12;

#[xdp]
pub fn read_drop(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + IP_SOURCE_AT + 4 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: within the packet, checked above.
    let source = unsafe { ((start + IP_SOURCE_AT) as *const [u8; 4]).read_unaligned() };
    // The verdict depends on the bytes read, so the read stays.
    if source == [0; 4] {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}
