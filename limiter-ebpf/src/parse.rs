//! Bounded header walk. Every read is checked against the packet's end right before it, as the
//! verifier demands. What the program does not limit (non-IP, neighbour discovery) and what it
//! cannot parse are told apart, and both pass.
//!
//! The walk:
//! - Ethernet, then at most [`MAX_VLAN_TAGS`] 802.1Q / 802.1ad tags; an IP ethertype goes on,
//!   any other ethertype is [`Parsed::NotLimited`] (a tag beyond the bound is [`Parsed::Unparsed`]).
//! - IPv4: version 4 and IHL ≥ 5 in a 20-byte header inside the packet: keyed by its source,
//!   options, fragments and all (options cut short included: the source is known).
//! - IPv6: version 6 and the 40-byte header inside the packet, then at most
//!   [`MAX_EXT_HEADERS`] extension headers, each wholly inside the packet. ICMPv6 neighbour and
//!   router discovery (types 133–137, with the 4-byte ICMPv6 header inside the packet) and
//!   link-local MLD are [`Parsed::NotLimited`]; everything else is keyed by its source —
//!   another upper layer, a non-first fragment, and also one extension header too many or one
//!   cut short: once the source is read, its rules and bucket apply whatever follows it, so
//!   that no shape of header chain gets a denied or flooding source through.
//!
//! [`Parsed::Unparsed`] is left for packets whose source cannot be read: a fixed header that is
//! cut short or not of its version, a VLAN tag beyond the bound.
//!
//! Notes on the verifier: a read at a variable offset (past the IPv6 extension headers) is
//! always at least 2 bytes wide. For a 1-byte read LLVM rewrites the check `p + 1 > end` into
//! `end > p`, from which the verifier learns no range when `p` carries a variable offset, and
//! rejects the read. The header walk's offset stays below 64 KiB (the verifier's limit for
//! packet offsets): at most 22 bytes of Ethernet and VLAN, 40 of IPv6 and
//! [`MAX_EXT_HEADERS`] × 2 KiB of extension headers.

use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

const ETH_HDR_LEN: usize = 14;
/// Offset of the ethertype in the Ethernet header.
const ETH_TYPE_OFFSET: usize = 12;
/// Bytes a VLAN tag adds (TCI and the inner ethertype after the tag's own TPID).
const VLAN_TAG_LEN: usize = 4;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// 802.1Q customer tag.
const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (QinQ).
const ETH_P_8021AD: u16 = 0x88A8;
/// Pre-standard QinQ service tag.
const ETH_P_QINQ1: u16 = 0x9100;

/// VLAN tags parsed at most (QinQ: a service tag and a customer tag).
pub const MAX_VLAN_TAGS: usize = 2;

const IPV4_MIN_HDR_LEN: usize = 20;
/// Offset of the source address inside the IPv4 header.
const IPV4_SRC_OFFSET: usize = 12;

const IPV6_HDR_LEN: usize = 40;
/// Offset of the next-header field inside the IPv6 header.
const IPV6_NEXT_HDR_OFFSET: usize = 6;
/// Offset of the source address inside the IPv6 header.
const IPV6_SRC_OFFSET: usize = 8;

/// IPv6 extension headers skipped at most before the upper-layer header; a packet with more is
/// keyed by its source without looking further. Each is at most 2 KiB, so the walk stays far below the verifier's
/// 64 KiB packet offset limit.
pub const MAX_EXT_HEADERS: usize = 6;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MOBILITY: u8 = 135;

/// The fragment header's fixed length.
const IPV6_FRAG_HDR_LEN: usize = 8;

/// The ICMPv6 header: type, code, checksum.
const ICMPV6_HDR_LEN: usize = 4;
/// ICMPv6 router solicitation; 134 router advertisement, 135 neighbour solicitation,
/// 136 neighbour advertisement and 137 redirect follow it: neighbour and router discovery.
const ICMPV6_ND_FIRST: u8 = 133;
const ICMPV6_ND_LAST: u8 = 137;
/// The hop limit every genuine neighbour-discovery message carries.
const ND_HOP_LIMIT: u8 = 255;
/// ICMPv6 multicast listener query, report and done (MLDv1), and MLDv2 report.
const MLD_QUERY: u8 = 130;
const MLD_DONE: u8 = 132;
const MLDV2_REPORT: u8 = 143;
/// The hop limit every genuine MLD message carries.
const MLD_HOP_LIMIT: u8 = 1;

#[inline(always)]
fn is_mld(icmp_type: u8) -> bool {
    (MLD_QUERY..=MLD_DONE).contains(&icmp_type) || icmp_type == MLDV2_REPORT
}

/// fe80::/10 or ::.
#[inline(always)]
fn is_link_local_or_unspecified(addr: &[u32; 4]) -> bool {
    let [first, second, ..] = addr[0].to_ne_bytes();
    (first == 0xfe && second & 0xc0 == 0x80) || addr.iter().all(|w| *w == 0)
}

/// The source address of a packet the program limits (see `limiter_common::charge`).
pub use limiter_common::charge::Source;

/// The 32-bit word at `p` in the packet, in one load.
///
/// The address is often unaligned (the IP header starts 14 bytes into the frame), so a plain
/// `read` would be undefined behaviour, and `read_unaligned` makes LLVM emit four byte loads on
/// BPF. The load is written in BPF assembly instead: one `ldxw`, which the verifier accepts at
/// any alignment on every architecture with efficient unaligned access (x86-64, arm64), where
/// the JIT emits one load too.
///
/// # Safety
///
/// The caller checked that the 4 bytes from `p` are inside the packet.
#[inline(always)]
unsafe fn packet_word(p: *const u8) -> u32 {
    let word: u64;
    // SAFETY: the 4 bytes are inside the packet (the caller's promise); the instruction reads
    // them and nothing else, at any alignment, and writes only `word` (zero-extended).
    unsafe {
        core::arch::asm!(
            "{word} = *(u32 *)({p} + 0)",
            word = lateout(reg) word,
            p = in(reg) p,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    word as u32
}

/// What a packet is, as far as limiting goes.
pub enum Parsed {
    /// An IP packet from this source, its IP header at this offset: limited.
    Source(Source, usize),
    /// Never limited: non-IP (ARP …), IPv6 neighbour and router discovery.
    NotLimited,
    /// Its source cannot be read (truncated or malformed fixed header, too many VLAN tags):
    /// passed and counted.
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

/// The `T` at `offset` bytes into the packet, if the packet is long enough.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the `T` is inside the packet; read at any alignment.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

/// Whether the packet has `len` bytes from `offset` on (`len` ≥ 1).
#[inline(always)]
fn has(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    ptr_at::<u8>(ctx, offset + len - 1).is_some()
}

#[inline(always)]
fn is_vlan(ether_type: u16) -> bool {
    matches!(ether_type, ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ1)
}

/// Classifies an Ethernet frame.
#[inline(always)]
pub fn classify(ctx: &XdpContext) -> Parsed {
    let Some(ether_type) = read::<[u8; 2]>(ctx, ETH_TYPE_OFFSET) else {
        return Parsed::Unparsed;
    };
    let mut ether_type = u16::from_be_bytes(ether_type);
    // Where the header after the (last) ethertype starts.
    let mut l3 = ETH_HDR_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        // The tag: TCI (2 bytes), then the inner ethertype.
        let Some(inner) = read::<[u8; 2]>(ctx, l3 + 2) else {
            return Parsed::Unparsed;
        };
        ether_type = u16::from_be_bytes(inner);
        l3 += VLAN_TAG_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        // A third tag: beyond the bound.
        t if is_vlan(t) => Parsed::Unparsed,
        _ => Parsed::NotLimited,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(hdr) = ptr_at::<[u8; IPV4_MIN_HDR_LEN]>(ctx, l3) else {
        return Parsed::Unparsed;
    };
    // SAFETY: `ptr_at` checked that the 20 bytes are inside the packet; single fields are read.
    let (version_ihl, source) = unsafe {
        let hdr = hdr.cast::<u8>();
        (hdr.read(), packet_word(hdr.add(IPV4_SRC_OFFSET)))
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    // Version 4, and a header length of at least the 20-byte minimum …
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HDR_LEN {
        return Parsed::Unparsed;
    }
    // Options cut short or not, the source is known: it is keyed by it.
    Parsed::Source(Source::v4(source), l3)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Parsed {
    let Some(hdr) = ptr_at::<[u8; IPV6_HDR_LEN]>(ctx, l3) else {
        return Parsed::Unparsed;
    };
    // SAFETY: `ptr_at` checked that the 40 bytes are inside the packet; single fields are read.
    let (version, mut next, hop_limit, source) = unsafe {
        let hdr = hdr.cast::<u8>();
        (
            hdr.read() >> 4,
            hdr.add(IPV6_NEXT_HDR_OFFSET).read(),
            hdr.add(IPV6_NEXT_HDR_OFFSET + 1).read(),
            [0, 4, 8, 12].map(|at| packet_word(hdr.add(IPV6_SRC_OFFSET + at))),
        )
    };
    if version != 6 {
        return Parsed::Unparsed;
    }
    let mut offset = l3 + IPV6_HDR_LEN;
    // One round per header: up to MAX_EXT_HEADERS extension headers, then the upper layer.
    for round in 0..=MAX_EXT_HEADERS {
        match next {
            IPPROTO_ICMPV6 => {
                // Type, code, checksum: the whole ICMPv6 header, and never a 1-byte read at a
                // variable offset (see the module's notes on the verifier).
                let Some([icmp_type, ..]) = read::<[u8; ICMPV6_HDR_LEN]>(ctx, offset) else {
                    return Parsed::Source(Source::v6(source), l3);
                };
                // Neighbour discovery is only valid with hop limit 255 (RFC 4861 §6.1, §7.1):
                // anything else claiming to be ND is no ND, and is limited like other traffic
                // rather than let through unlimited.
                if (ICMPV6_ND_FIRST..=ICMPV6_ND_LAST).contains(&icmp_type)
                    && hop_limit == ND_HOP_LIMIT
                {
                    return Parsed::NotLimited;
                }
                // Multicast listener discovery keeps the link's multicast working (and ND with
                // it): link-local by rule — hop limit 1, from a link-local or the unspecified
                // address (RFC 3810 §5, §7.4) — so it cannot be a remote client's traffic.
                if is_mld(icmp_type)
                    && hop_limit == MLD_HOP_LIMIT
                    && is_link_local_or_unspecified(&source)
                {
                    return Parsed::NotLimited;
                }
                return Parsed::Source(Source::v6(source), l3);
            }
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MOBILITY | IPPROTO_AH
            | IPPROTO_FRAGMENT => {}
            // TCP, UDP, ESP, No Next Header, anything else: limited by the source.
            _ => return Parsed::Source(Source::v6(source), l3),
        }
        if round == MAX_EXT_HEADERS {
            // One extension header too many: keyed by the source all the same.
            return Parsed::Source(Source::v6(source), l3);
        }
        let len = match next {
            IPPROTO_FRAGMENT => {
                let Some(frag) = read::<[u8; IPV6_FRAG_HDR_LEN]>(ctx, offset) else {
                    return Parsed::Source(Source::v6(source), l3);
                };
                // The fragment offset: the upper 13 bits of bytes 2–3.
                if u16::from_be_bytes([frag[2], frag[3]]) >> 3 != 0 {
                    // A later fragment does not carry the upper-layer header.
                    return Parsed::Source(Source::v6(source), l3);
                }
                next = frag[0];
                IPV6_FRAG_HDR_LEN
            }
            _ => {
                // Next header, then the length, not counting the first 8 bytes: in 4-byte
                // units for AH, in 8-byte units for the others.
                let Some([nh, units]) = read::<[u8; 2]>(ctx, offset) else {
                    return Parsed::Source(Source::v6(source), l3);
                };
                let len = if next == IPPROTO_AH {
                    (usize::from(units) + 2) * 4
                } else {
                    (usize::from(units) + 1) * 8
                };
                next = nh;
                len
            }
        };
        // The whole extension header must be inside the packet.
        if !has(ctx, offset, len) {
            return Parsed::Source(Source::v6(source), l3);
        }
        offset += len;
    }
    Parsed::Source(Source::v6(source), l3)
}
