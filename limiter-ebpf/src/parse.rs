//! Bounded header walk. Every read is checked against the packet's end first, as the verifier
//! demands. What the program does not limit (non-IP, neighbour discovery) and what it cannot
//! parse are told apart, and both pass.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// Offset of the source address inside the IPv4 header.
const IPV4_SRC_OFFSET: usize = 12;
/// Offset of the source address inside the IPv6 header.
const IPV6_SRC_OFFSET: usize = 8;

/// The source address of a packet the program limits.
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What a packet is, as far as limiting goes.
pub enum Parsed {
    /// An IP packet from this source: limited.
    Source(Source),
    /// Never limited: non-IP (ARP …), IPv6 neighbour and router discovery.
    NotLimited,
    /// Truncated, malformed or beyond the header walk's bound: passed and counted.
    Unparsed,
}

/// A pointer to a `T` at `offset` bytes into the packet, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Classifies an Ethernet frame.
#[inline(always)]
pub fn classify(ctx: &XdpContext) -> Parsed {
    let Some(ether_type) = read::<[u8; 2]>(ctx, 12).map(u16::from_be_bytes) else {
        return Parsed::Unparsed;
    };
    match ether_type {
        ETH_P_IPV4 => ipv4(ctx, ETH_HDR_LEN),
        ETH_P_IPV6 => ipv6(ctx, ETH_HDR_LEN),
        _ => Parsed::NotLimited,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(version_ihl) = read::<u8>(ctx, offset) else {
        return Parsed::Unparsed;
    };
    // Version 4, and a header length of at least the 20-byte minimum.
    if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
        return Parsed::Unparsed;
    }
    match read::<[u8; 4]>(ctx, offset + IPV4_SRC_OFFSET) {
        Some(source) => Parsed::Source(Source::V4(source)),
        None => Parsed::Unparsed,
    }
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(version) = read::<u8>(ctx, offset) else {
        return Parsed::Unparsed;
    };
    if version >> 4 != 6 {
        return Parsed::Unparsed;
    }
    match read::<[u8; 16]>(ctx, offset + IPV6_SRC_OFFSET) {
        Some(source) => Parsed::Source(Source::V6(source)),
        None => Parsed::Unparsed,
    }
}
