//! The traffic generator of `cargo xtask bench` (flood throughput): an XDP program run with
//! `BPF_PROG_TEST_RUN` in live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`) on one template frame,
//! an IPv4/UDP packet. For every frame it writes a source address (and the IPv4 header checksum
//! that goes with it) and a UDP destination port, then returns `XDP_TX`: the kernel sends the
//! frame out of the interface named by the run's `ingress_ifindex` — the sending end of a veth
//! pair — so that it reaches the peer as an XDP frame, as from a NIC.
//!
//! Live frames come from a page pool whose pages keep what an earlier run wrote into them, so
//! every field that differs between frames is written on every frame.
//!
//! - flood frames: the source is `flood_base` + (the frame counter, or a pseudo-random number)
//!   masked with `flood_mask`, to `flood_port`;
//! - well-behaved frames: one frame in `well_every_mask + 1` (or every frame with `only_well`)
//!   comes from one of `well_mask + 1` fixed sources `well_base`, `well_base + 1`, … in turn, to
//!   `well_port`; `GEN_SENT` counts them per source.
//!
//! With `pace_interval_ns` set, frames leave one per interval: a frame ahead of its slot waits
//! for it here, reading the clock (a frame may lag its slot by up to `pace_slack_ns`, so that a
//! pause of the thread is caught up by one batch at most; `held` counts frames that gave up
//! waiting). The bench paces the generator to what the receiver takes, so that the veth ring
//! overflows little: on a veth, a frame that finds the ring full (or that the generator drops)
//! goes back to the run's page pool from the generator's CPU while the receiver returns its
//! frames there too, and the contention on the pool's lock would load the receiver — a NIC
//! drops what its ring cannot hold at no cost to the host.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Written by the bench before each run; index 0. Addresses are host-order IPv4.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenConfig {
    pub flood_base: u32,
    /// Flood sources − 1 (a power of two − 1).
    pub flood_mask: u32,
    /// 1: a pseudo-random flood source per frame; 0: the sources in turn.
    pub random: u32,
    /// 0: no well-behaved frames; else 1.
    pub well: u32,
    pub well_base: u32,
    /// Well-behaved sources − 1 (a power of two − 1).
    pub well_mask: u32,
    /// A frame is a well-behaved one when `counter & well_every_mask == 0`.
    pub well_every_mask: u32,
    /// log2(well_every_mask + 1): the frame counter shifted by it picks the source.
    pub well_every_shift: u32,
    /// 1: every frame is a well-behaved one.
    pub only_well: u32,
    pub flood_port: u32,
    pub well_port: u32,
    /// Ones' complement sum (unfolded) of the template's IPv4 header with its source address
    /// and checksum zeroed.
    pub header_sum: u32,
    pub _pad: u32,
    /// 0: every frame is sent; else the time between two frames.
    pub pace_interval_ns: u64,
    pub pace_slack_ns: u64,
}

/// Per CPU: frames sent, frames held back by the pacing, the state of the pseudo-random
/// sources, and the pacing's next slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenState {
    pub frames: u64,
    pub held: u64,
    pub rng: u64,
    pub next_ns: u64,
}

/// Well-behaved sources at most.
const MAX_WELL: u32 = 64;

/// Clock reads a frame waits for its slot at most (~25 ns each).
const MAX_SPINS: u32 = 4096;

#[map]
static GEN_CONFIG: Array<GenConfig> = Array::with_max_entries(1, 0);

#[map]
static GEN_STATE: PerCpuArray<GenState> = PerCpuArray::with_max_entries(1, 0);

/// Frames generated per well-behaved source, per CPU.
#[map]
static GEN_SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_WELL, 0);

const ETH_LEN: usize = 14;
const IP_CHECKSUM_AT: usize = ETH_LEN + 10;
const IP_SOURCE_AT: usize = ETH_LEN + 12;
const UDP_DEST_PORT_AT: usize = ETH_LEN + 20 + 2;

#[xdp]
pub fn xdp_gen(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + UDP_DEST_PORT_AT + 2 > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(config) = GEN_CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(state) = GEN_STATE.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU map value, this CPU's, for the length of this run.
    let state = unsafe { &mut *state };
    if config.pace_interval_ns != 0 {
        // SAFETY: a helper without arguments.
        let mut now = unsafe { bpf_ktime_get_ns() };
        let earliest = now.saturating_sub(config.pace_slack_ns);
        let slot = if state.next_ns > earliest {
            state.next_ns
        } else {
            earliest
        };
        // Ahead of its slot: wait for it here (bounded), rather than drop the frame.
        let mut spins = 0;
        while now < slot && spins < MAX_SPINS {
            // SAFETY: a helper without arguments.
            now = unsafe { bpf_ktime_get_ns() };
            spins += 1;
        }
        if now < slot {
            state.held += 1;
        }
        state.next_ns = slot + config.pace_interval_ns;
    }
    let n = state.frames;
    state.frames = n.wrapping_add(1);
    let well =
        config.well != 0 && (config.only_well != 0 || (n as u32) & config.well_every_mask == 0);
    let (source, port) = if well {
        let turn = if config.only_well != 0 {
            n
        } else {
            n >> config.well_every_shift
        };
        let client = (turn as u32) & config.well_mask;
        if let Some(sent) = GEN_SENT.get_ptr_mut(client) {
            // SAFETY: this CPU's slot.
            unsafe { *sent += 1 };
        }
        (config.well_base.wrapping_add(client), config.well_port)
    } else if config.random != 0 {
        state.rng = state
            .rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let r = (state.rng >> 32) as u32;
        (
            config.flood_base.wrapping_add(r & config.flood_mask),
            config.flood_port,
        )
    } else {
        (
            config
                .flood_base
                .wrapping_add((n as u32) & config.flood_mask),
            config.flood_port,
        )
    };
    let mut sum = config.header_sum + (source >> 16) + (source & 0xffff);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let checksum = !(sum as u16);
    // SAFETY: all three fields lie before `end`, checked above.
    unsafe {
        ((start + IP_SOURCE_AT) as *mut [u8; 4]).write_unaligned(source.to_be_bytes());
        ((start + IP_CHECKSUM_AT) as *mut [u8; 2]).write_unaligned(checksum.to_be_bytes());
        ((start + UDP_DEST_PORT_AT) as *mut [u8; 2]).write_unaligned((port as u16).to_be_bytes());
    }
    xdp_action::XDP_TX
}
