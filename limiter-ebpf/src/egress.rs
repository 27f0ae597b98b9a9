//! The gateway's side of a connection kept open after a 429 (`[http] keep_alive`): a TC egress
//! program on the same interface rewrites the gateway's segments into the client's view — its
//! sequence number plus the 429s' bytes the gateway never sent, its acknowledgement plus the
//! requests' bytes the gateway never got — as the XDP program rewrites the client's segments
//! the other way (see `http`). Connections without a 429 on them, and every other packet, go
//! through untouched.

use aya_ebpf::{helpers::generated::bpf_skb_load_bytes, programs::TcContext};
use core::ffi::c_void;
use limiter_common::maps::{FlowKey, CONFIG_HTTP, FAMILY_IPV4, FAMILY_IPV6, HTTP_KEEP_ALIVE};

use crate::maps::{CONFIG, FLOWS};

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const VLAN_TAG_LEN: usize = 4;
const MAX_VLAN_TAGS: usize = 2;
const IPPROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;
const TCP_HDR_LEN: usize = 20;
/// `BPF_F_PSEUDO_HDR` is not wanted (sequence numbers are not in the pseudo-header); the low
/// bits of the flags give the field's size.
const CSUM_FIELD_4: u64 = 4;
const TCP_OPT_NOP: u8 = 1;
const TCP_OPT_SACK: u8 = 5;
const MAX_OPTIONS: usize = 40;

/// Rewrites the segment when it belongs to a connection whose views came apart.
#[inline(always)]
pub fn shift(ctx: &TcContext) -> Option<()> {
    let config = CONFIG.get(0)?;
    if config.flags & CONFIG_HTTP == 0 || config.http.flags & HTTP_KEEP_ALIVE == 0 {
        return None;
    }
    let mut ether_type = u16::from_be(ctx.load::<u16>(12).ok()?);
    let mut l3 = ETH_HDR_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !matches!(ether_type, 0x8100 | 0x88A8 | 0x9100) {
            break;
        }
        ether_type = u16::from_be(ctx.load::<u16>(l3 + 2).ok()?);
        l3 += VLAN_TAG_LEN;
    }
    let mut flow = FlowKey {
        client: [0; 16],
        gateway: [0; 16],
        client_port: 0,
        gateway_port: 0,
        family: 0,
    };
    let l4 = match ether_type {
        ETH_P_IPV4 => {
            let hdr = ctx.load::<[u8; 20]>(l3).ok()?;
            if hdr[9] != IPPROTO_TCP || u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3fff != 0 {
                return None;
            }
            flow.gateway[..4].copy_from_slice(&hdr[12..16]);
            flow.client[..4].copy_from_slice(&hdr[16..20]);
            flow.family = u32::from(FAMILY_IPV4);
            l3 + usize::from(hdr[0] & 0x0f) * 4
        }
        ETH_P_IPV6 => {
            let hdr = ctx.load::<[u8; 40]>(l3).ok()?;
            if hdr[6] != IPPROTO_TCP {
                return None;
            }
            flow.gateway.copy_from_slice(&hdr[8..24]);
            flow.client.copy_from_slice(&hdr[24..40]);
            flow.family = u32::from(FAMILY_IPV6);
            l3 + 40
        }
        _ => return None,
    };
    let tcp = ctx.load::<[u8; TCP_HDR_LEN]>(l4).ok()?;
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    if !config.http.is_http_port(sport) {
        return None;
    }
    flow.gateway_port = sport;
    flow.client_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    // SAFETY: FLOWS values are plain data; copied at once.
    let state = unsafe { *FLOWS.get(flow)? };
    if !state.shifted() {
        return None;
    }
    let header_len = usize::from(tcp[12] >> 4) * 4;
    strip_sack(ctx, l4, header_len);
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    let new_seq = seq.wrapping_add(state.gateway_shift);
    replace(ctx, l4, 4, seq, new_seq)?;
    if tcp[13] & TCP_ACK != 0 {
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        replace(ctx, l4, 8, ack, ack.wrapping_add(state.client_shift))?;
    }
    Some(())
}

/// Writes `new` over the 32-bit field at `l4 + at` that held `old`, and the TCP checksum.
#[inline(always)]
fn replace(ctx: &TcContext, l4: usize, at: usize, old: u32, new: u32) -> Option<()> {
    let (old, new) = (old.to_be(), new.to_be());
    ctx.store(l4 + at, &new, 0).ok()?;
    ctx.l4_csum_replace(l4 + 16, u64::from(old), u64::from(new), CSUM_FIELD_4)
        .ok()
}

/// Turns a SACK option into NOPs (its blocks are in the gateway's view), fixing the checksum.
#[inline(always)]
fn strip_sack(ctx: &TcContext, l4: usize, header_len: usize) -> Option<()> {
    // Option words: 1 to 10 (a 24- to 60-byte header).
    let words = (header_len / 4).saturating_sub(TCP_HDR_LEN / 4);
    if words == 0 || words > MAX_OPTIONS / 4 {
        return None;
    }
    // 4 to 40 bytes, in a form the verifier sees as never 0 (and at most 64).
    let n = (((words - 1) & 15) + 1) * 4;
    let mut options = [0u8; 64];
    // SAFETY: `n` (4 to 64) bytes into a 64-byte buffer on the stack.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            (l4 + TCP_HDR_LEN) as u32,
            options.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    // Where stacks put it: first, or after the timestamps, each time after two NOPs (see the
    // XDP side's `sack_option`).
    let mut sack = None;
    for at in [0usize, 12] {
        if options[at] == TCP_OPT_NOP
            && options[at + 1] == TCP_OPT_NOP
            && options[at + 2] == TCP_OPT_SACK
        {
            let len = usize::from(options[at + 3]);
            if len >= 2 && at + 2 + len <= n {
                sack = Some((at + 2, at + 2 + len));
            }
            break;
        }
    }
    let (start, end) = sack?;
    // Rewritten a 32-bit word at a time, the checksum with each (options are word-aligned).
    for w in 0..MAX_OPTIONS / 4 {
        let at = w * 4;
        if at >= n || at + 4 <= start || at >= end {
            continue;
        }
        let old = [
            options[at],
            options[at + 1],
            options[at + 2],
            options[at + 3],
        ];
        let mut new = old;
        for (k, byte) in new.iter_mut().enumerate() {
            if at + k >= start && at + k < end {
                *byte = TCP_OPT_NOP;
            }
        }
        let (old, new) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
        ctx.store(l4 + TCP_HDR_LEN + at, &new, 0).ok()?;
        ctx.l4_csum_replace(l4 + 16, u64::from(old), u64::from(new), CSUM_FIELD_4)
            .ok()?;
    }
    Some(())
}
