//! Bounded header walk. Every read is checked against the packet's end first, as the verifier
//! demands; anything that does not parse is reported as `None` and the packet passes.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
/// Offset of the source address inside the IPv4 header.
const IPV4_SRC_OFFSET: usize = 12;

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

/// The IPv4 source address of an Ethernet frame carrying IPv4, in network byte order.
#[inline(always)]
pub fn ipv4_source(ctx: &XdpContext) -> Option<[u8; 4]> {
    let ether_type = u16::from_be(unsafe { *ptr_at::<u16>(ctx, 12)? });
    if ether_type != ETH_P_IPV4 {
        return None;
    }
    let version_ihl = unsafe { *ptr_at::<u8>(ctx, ETH_HDR_LEN)? };
    // Version 4, and a header length of at least the 20-byte minimum.
    if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
        return None;
    }
    let source = ptr_at::<[u8; 4]>(ctx, ETH_HDR_LEN + IPV4_SRC_OFFSET)?;
    Some(unsafe { *source })
}
