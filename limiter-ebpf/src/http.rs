//! API keys at the NIC: a TCP segment to one of `[http] ports` that passed its source's limit.
//!
//! A segment with payload is a request when it starts like one: the scanner
//! (`limiter_common::http`) finds its key in the first `WINDOW` bytes, copied into per-CPU
//! scratch and read by a `bpf_loop` callback a few words per round; the token is hashed with
//! the configured secret the same way, and the request is charged to that hash's bucket. Over
//! the limit, the segment becomes the answer: a complete `429` with FIN, sent back with
//! `XDP_TX`. The gateway never sees the request; its socket, still waiting, is released by the
//! client's next segment on that connection (its ACK of the answer, its FIN, the rest of a
//! body), which this program turns into a reset at the sequence number the gateway expects.
//!
//! `FLOWS` remembers each connection's last decided request: a retransmitted copy of it gets
//! the same verdict without a second charge, and it tells the reset when to happen.
//!
//! Out of reach, by design: IPv6 with extension headers before TCP, IPv4 fragments, TLS (passed
//! and counted), and a key header that is not in the segment that starts its request.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_csum_diff, bpf_loop, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use core::ffi::c_void;
use limiter_common::{
    bucket::{retry_after_ns, Limit, NANOS_PER_SEC},
    charge,
    http::{
        checksum_added, checksum_replaced, is_tls_handshake, reply_headers, reset_headers,
        retry_digits, slot_sum, words, KeyHeaders, Scan, Scanner, Segment, Span, ANSWER_BYTES,
        BUFFER, HEADERS_BYTES, MAX_L2, MAX_SLOTS, RETRY_DIGITS, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
        WINDOW,
    },
    keyhash::KeyHasher,
    maps::{
        Counter, DatapathConfig, FlowKey, FlowState, FAMILY_IPV4, FAMILY_IPV6, FLOW_ANSWERED,
        FLOW_PASSED, FLOW_RESET, HTTP_KEEP_ALIVE, QUOTA_ANSWERS,
    },
    quota::TAKEN,
};

use crate::charging::{charge_key_at, count, Decision};
use crate::maps::{ANSWERS, API_KEYS, FLOWS, HTTP_SCRATCH};
use crate::parse::{ptr_at, read};
use crate::quota;

const IPPROTO_TCP: u8 = 6;
const TCP_HDR_LEN: usize = 20;
/// Option bytes where the timestamps option is looked for: two NOPs and its 10 bytes.
const TS_OPTION_AREA: usize = 12;
/// TCP option bytes at most (a 60-byte header), and options walked at most.
const MAX_OPTIONS: usize = 40;
const TCP_OPT_NOP: u8 = 1;
const TCP_OPT_SACK: u8 = 5;
/// Where `strip_sack` keeps the options as they were, in the frame buffer.
const OLD_COPY: usize = 64;
/// How far past the answered request a client's segment may start and still belong to that
/// request's connection (its ACK and FIN start right after it; the rest of a body further).
const SAME_CONNECTION: u32 = 1 << 20;

/// Per-CPU working memory of one request: far too big for the stack.
#[repr(C)]
pub struct Scratch {
    bytes: [u8; BUFFER],
    scanner: Scanner,
    hasher: KeyHasher,
    span: Span,
    segment: Segment,
    /// The connection of the segment, and what is decided for it (map helpers take them from
    /// here: the stack is too small).
    flow: FlowKey,
    decided: FlowState,
    /// The quota check's answer while the key's rate is charged (`quota::give_back` needs it
    /// after): kept here, not in a register, so that the verifier walks the charge once for
    /// every answer rather than once for each.
    quota_taken: u64,
    frame: [u8; HEADERS_BYTES],
}

/// What `bpf_loop` hands its callbacks: it must live on the stack.
#[repr(C)]
struct LoopContext {
    scratch: *mut Scratch,
    headers: *const KeyHeaders,
}

/// One round of the scanner: the callback `bpf_loop` runs, verified once.
#[inline(never)]
extern "C" fn scan_round(_index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the LoopContext on the caller's stack; its pointers are a per-CPU map
    // value of this run and the CONFIG map value.
    let (scratch, headers) = unsafe {
        let context = &*(ctx as *const LoopContext);
        (&mut *context.scratch, &*context.headers)
    };
    if scratch.scanner.round(headers, &scratch.bytes) {
        0
    } else {
        1
    }
}

/// One 8-byte word of the token into the hash.
#[inline(never)]
extern "C" fn hash_word(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: as in `scan_round`.
    let scratch = unsafe { &mut *(*(ctx as *const LoopContext)).scratch };
    let at = index.wrapping_mul(8);
    if at >= WINDOW as u32 || at + 8 > scratch.span.len {
        return 1;
    }
    let word = words::load(&scratch.bytes, scratch.span.start + at, 0);
    scratch.hasher.write_word(word);
    0
}

/// A client's TCP segment to the gateway, parsed into scratch: where its payload is.
struct Tcp {
    flags: u8,
    /// Where the TCP header starts, and its length.
    l4: usize,
    header_len: usize,
    payload: usize,
    payload_len: u32,
}

/// Handles a packet that passed its source's limit when `[http]` is set: `None` when it goes
/// on as any passed packet, else the action (counted here).
#[inline(always)]
pub fn on_passed(ctx: &XdpContext, config: &DatapathConfig, packet: &Passed) -> u32 {
    handle(ctx, config, packet).unwrap_or(GO_ON)
}

/// What [`on_passed`] answers when the packet goes on as any passed packet.
pub const GO_ON: u32 = u32::MAX;

/// A packet that passed its source's limit.
#[derive(Clone, Copy)]
pub struct Passed {
    /// Where its IP header starts.
    pub l3: usize,
    pub ipv6: bool,
    /// The clock the source's bucket was charged at.
    pub now: u64,
    pub dry_run: bool,
}

#[inline(always)]
fn handle(ctx: &XdpContext, config: &DatapathConfig, packet: &Passed) -> Option<u32> {
    let Passed {
        l3,
        ipv6,
        now,
        dry_run,
    } = *packet;
    let scratch = HTTP_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU array value of this run: no other CPU touches it, and nothing else in
    // this run holds a reference to it.
    let scratch = unsafe { &mut *scratch };
    let tcp = parse(ctx, config, l3, ipv6, scratch)?;
    if tcp.flags & TCP_SYN != 0 {
        // A new connection on this address and port pair: what was decided for an older one
        // no longer applies.
        // By reference on purpose (clippy would copy the key onto the stack, which is full).
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = FLOWS.remove(&scratch.flow);
        return None;
    }
    if tcp.flags & TCP_RST != 0 {
        return None;
    }
    let mut before = Shifts::default();
    match decide(ctx, config, &tcp, scratch, &mut before, now, dry_run) {
        Some(action) => Some(action),
        // Goes on to the gateway: in its view of the connection (one place for every path, so
        // that the verifier walks the rewriting once). Only while `keep_alive` is on, as the
        // egress program: a reload that turns it off leaves both sides unshifted.
        None if config.http.flags & HTTP_KEEP_ALIVE != 0
            && (before.client != 0 || before.gateway != 0) =>
        {
            shift(ctx, &tcp, scratch, &before);
            None
        }
        None => None,
    }
}

/// What a segment to an HTTP port gets: `None` when it goes on to the gateway. `before` is set
/// to how far the connection's two views had come apart before it.
#[inline(always)]
fn decide(
    ctx: &XdpContext,
    config: &DatapathConfig,
    tcp: &Tcp,
    scratch: &mut Scratch,
    before: &mut Shifts,
    now: u64,
    dry_run: bool,
) -> Option<u32> {
    let keep_alive = config.http.flags & HTTP_KEEP_ALIVE != 0;
    let seq = scratch.segment.seq;
    // By reference on purpose (see `handle`).
    #[allow(clippy::needless_borrows_for_generic_args)]
    let known = FLOWS.get_ptr_mut(&scratch.flow);
    if let Some(state) = known {
        // SAFETY: a lookup in FLOWS of this run; only its plain fields are read and written
        // (two CPUs racing on one connection's segments is a client's own doing).
        let state = unsafe { &mut *state };
        *before = Shifts::of(state);
        if tcp.payload_len > 0 && seq == state.seq {
            count(Counter::Retransmits);
            return match state.verdict {
                FLOW_PASSED => None,
                _ => Some(answer(ctx, scratch, state.plan, state.retry_s, keep_alive).0),
            };
        }
        let after = seq.wrapping_sub(state.seq.wrapping_add(state.len));
        if keep_alive {
            // The client's ACK of a 429 and nothing else: the gateway never sent those bytes.
            if state.shifted()
                && tcp.payload_len == 0
                && tcp.flags & (TCP_FIN | TCP_RST | TCP_SYN) == 0
                && after == 0
                && scratch.segment.ack == state.answer_end
            {
                return Some(xdp_action::XDP_DROP);
            }
        } else if after < SAME_CONNECTION {
            match state.verdict {
                FLOW_ANSWERED => {
                    state.verdict = FLOW_RESET;
                    return Some(reset(ctx, scratch, state.seq));
                }
                // The gateway's socket is gone: its stack resets the client; nothing to scan.
                FLOW_RESET => return None,
                _ => {}
            }
        }
    }
    if tcp.payload_len == 0 {
        return None;
    }
    let before = *before;
    request(ctx, config, tcp, known, &before, scratch, now, dry_run)
}

/// How far the client's view of a connection is ahead of the gateway's (see `FlowState`).
#[derive(Clone, Copy, Default)]
struct Shifts {
    client: u32,
    gateway: u32,
    answer_end: u32,
}

impl Shifts {
    fn of(state: &FlowState) -> Shifts {
        Shifts {
            client: state.client_shift,
            gateway: state.gateway_shift,
            answer_end: state.answer_end,
        }
    }
}

/// Rewrites a client's segment into the gateway's view of a connection whose views came apart
/// (`[http] keep_alive`): its sequence number less the bytes the gateway never got, its
/// acknowledgement less the bytes the gateway never sent, SACK blocks (in the client's view)
/// turned into NOPs. Then it goes on as any passed packet.
#[inline(never)]
fn shift(ctx: &XdpContext, tcp: &Tcp, scratch: &mut Scratch, shifts: &Shifts) {
    strip_sack(ctx, tcp, scratch);
    let seg = &scratch.segment;
    let seq = seg.seq.wrapping_sub(shifts.client);
    let ack = if tcp.flags & TCP_ACK != 0 {
        seg.ack.wrapping_sub(shifts.gateway)
    } else {
        seg.ack
    };
    let Some(header) = ptr_at::<[u8; TCP_HDR_LEN]>(ctx, tcp.l4) else {
        return;
    };
    // SAFETY: the 20 bytes are inside the packet (`ptr_at`); plain bytes.
    unsafe {
        let header = &mut *header.cast_mut();
        let check = u16::from_be_bytes([header[16], header[17]]);
        let check = checksum_replaced(checksum_replaced(check, seg.seq, seq), seg.ack, ack);
        header[4..8].copy_from_slice(&seq.to_be_bytes());
        header[8..12].copy_from_slice(&ack.to_be_bytes());
        header[16..18].copy_from_slice(&check.to_be_bytes());
    }
}

/// Turns a SACK option of the segment into NOPs (its blocks are in the sender's view of the
/// connection, which the other side does not share), fixing the checksum.
#[inline(always)]
fn strip_sack(ctx: &XdpContext, tcp: &Tcp, scratch: &mut Scratch) {
    // Option words: 1 to 10 (a 24- to 60-byte header).
    let words = (tcp.header_len / 4).saturating_sub(TCP_HDR_LEN / 4);
    if words == 0 || words > MAX_OPTIONS / 4 {
        return;
    }
    // 4 to 40 bytes, in a form the verifier sees as never 0 (and at most 64).
    let n = (((words - 1) & 15) + 1) * 4;
    let options = &mut scratch.frame;
    // SAFETY: 1 to 40 bytes into the 128-byte frame buffer of this per-CPU value.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            (tcp.l4 + TCP_HDR_LEN) as u32,
            options.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if loaded != 0 {
        return;
    }
    let Some((start, end)) = sack_option(options, n) else {
        return;
    };
    // The options as they were at OLD_COPY, and NOPs over the SACK option in place.
    for i in 0..MAX_OPTIONS {
        options[OLD_COPY + i] = options[i];
        if i >= start && i < end {
            options[i] = TCP_OPT_NOP;
        }
    }
    // SAFETY: both ranges are inside the frame buffer (up to 64 bytes at 0 and at OLD_COPY);
    // the length is a multiple of 4, as the helper wants.
    let diff = unsafe {
        bpf_csum_diff(
            options.as_mut_ptr().add(OLD_COPY).cast(),
            n as u32,
            options.as_mut_ptr().cast(),
            n as u32,
            0,
        )
    };
    // SAFETY: the same bytes, back into the packet (the helper checks its bounds).
    let stored = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            (tcp.l4 + TCP_HDR_LEN) as u32,
            options.as_mut_ptr().cast(),
            n as u32,
        )
    };
    if stored != 0 || diff < 0 {
        return;
    }
    if let Some(header) = ptr_at::<[u8; TCP_HDR_LEN]>(ctx, tcp.l4) {
        // SAFETY: inside the packet (`ptr_at`); plain bytes.
        unsafe {
            let header = &mut *header.cast_mut();
            let check = u16::from_be_bytes([header[16], header[17]]);
            let check = checksum_added(check, diff as u32);
            header[16..18].copy_from_slice(&check.to_be_bytes());
        }
    }
}

/// Where the SACK option lies among `n` option bytes, if it is where stacks put it: first, or
/// after the timestamps (`NOP NOP TS`), each time after two NOPs (Linux, the BSDs and Windows
/// do so). A fixed layout rather than a walk of the options: the walk's paths multiply beyond
/// what the verifier takes.
#[inline(always)]
fn sack_option(options: &[u8; HEADERS_BYTES], n: usize) -> Option<(usize, usize)> {
    for at in [0, TS_OPTION_AREA] {
        if options[at] == TCP_OPT_NOP
            && options[at + 1] == TCP_OPT_NOP
            && options[at + 2] == TCP_OPT_SACK
        {
            let len = usize::from(options[at + 3]);
            let end = at + 2 + len;
            return (len >= 2 && end <= n).then_some((at + 2, end));
        }
    }
    None
}

/// Remembers what was decided for the connection's request: in place when the connection is
/// known already (a keep-alive connection's next request), else a new entry.
#[inline(always)]
fn remember(scratch: &Scratch, known: Option<*mut FlowState>) {
    match known {
        // SAFETY: the lookup of this run (see `handle`).
        Some(state) => unsafe { *state = scratch.decided },
        None => {
            // By reference on purpose (see `handle`).
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = FLOWS.insert(&scratch.flow, &scratch.decided, 0);
        }
    }
}

/// A segment with payload that may start a request: scan, hash, charge, answer.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn request(
    ctx: &XdpContext,
    config: &DatapathConfig,
    tcp: &Tcp,
    known: Option<*mut FlowState>,
    before: &Shifts,
    scratch: &mut Scratch,
    now: u64,
    dry_run: bool,
) -> Option<u32> {
    // 1 to WINDOW bytes, in a form the verifier sees as such.
    let len = (((tcp.payload_len as usize).min(WINDOW) - 1) & (WINDOW - 1)) + 1;
    // SAFETY: a per-CPU map value of BUFFER ≥ WINDOW bytes; `len` is 1 to WINDOW.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            tcp.payload as u32,
            scratch.bytes.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    if len >= 2 && is_tls_handshake(scratch.bytes[0], scratch.bytes[1]) {
        count(Counter::TlsHandshakes);
        return None;
    }
    scratch.scanner = Scanner::new(len as u32);
    let mut context = LoopContext {
        scratch,
        headers: &config.http.key_headers,
    };
    // SAFETY: the callback and its stack context, as bpf_loop takes them.
    unsafe {
        bpf_loop(
            WINDOW as u32 + 1,
            scan_round as *mut c_void,
            (&mut context as *mut LoopContext).cast(),
            0,
        )
    };
    let span = match scratch.scanner.finish() {
        Scan::Key(span) => span,
        Scan::NoKey => {
            count(Counter::KeylessRequests);
            return None;
        }
        Scan::NotHttp => {
            count(Counter::NotHttp);
            return None;
        }
    };
    let [k0, k1] = config.http.secret;
    scratch.span = span;
    scratch.hasher = KeyHasher::new(k0, k1);
    // SAFETY: as above.
    unsafe {
        bpf_loop(
            WINDOW as u32 / 8,
            hash_word as *mut c_void,
            (&mut context as *mut LoopContext).cast(),
            0,
        )
    };
    let full = span.len & !7;
    let tail = words::load(&scratch.bytes, span.start + full, 0);
    let hash = scratch.hasher.finish_tail(tail, span.len & 7);
    count(Counter::KeyedRequests);

    let (key, limit, plan) = charge::api_key_charge(
        hash,
        config,
        API_KEYS.get_ptr(hash).map(|entry| {
            // SAFETY: a lookup in API_KEYS of this run, copied at once.
            unsafe { &*entry }
        }),
    );
    let seq = scratch.segment.seq;
    let decided = |verdict: u32, retry_s: u64| FlowState {
        seq,
        len: tcp.payload_len,
        verdict,
        plan,
        retry_s,
        client_shift: before.client,
        gateway_shift: before.gateway,
        answer_end: before.answer_end,
        _pad: 0,
    };
    // The key's quota (its plan's): within it, the request takes its place at once and gives
    // it back if its rate refuses it; used up, the request is refused before its rate is
    // charged.
    let quota = quota::take(hash, plan, &config.http, now);
    scratch.quota_taken = quota;
    // Which 429 answers: the plan's for its rate, or for its quota.
    let mut answer_slot = plan;
    let retry_s = if quota != 0 && quota & TAKEN == 0 {
        count(Counter::OverQuota);
        answer_slot = plan + QUOTA_ANSWERS;
        quota
    } else {
        let retry_s = match charge_key_at(ctx, config, &key, &limit, now, dry_run) {
            Decision::Pass | Decision::Untracked => {
                scratch.decided = decided(FLOW_PASSED, 0);
                remember(scratch, known);
                return None;
            }
            Decision::Over(tat) => retry_seconds(tat, now, &limit),
            Decision::Refused => 1,
        };
        quota::give_back(hash, scratch.quota_taken);
        retry_s
    };
    if dry_run {
        count(Counter::WouldDrop);
        return Some(xdp_action::XDP_PASS);
    }
    let keep_alive = config.http.flags & HTTP_KEEP_ALIVE != 0;
    let ack = scratch.segment.ack;
    let (action, sent) = answer(ctx, scratch, answer_slot, retry_s, keep_alive);
    let mut state = decided(FLOW_ANSWERED, retry_s);
    state.plan = answer_slot;
    if keep_alive && action == xdp_action::XDP_TX {
        // The connection stays: from now on the client is `payload_len` bytes ahead of what
        // the gateway got, and has `sent` bytes the gateway never sent.
        state.client_shift = state.client_shift.wrapping_add(tcp.payload_len);
        state.gateway_shift = state.gateway_shift.wrapping_add(sent);
        state.answer_end = ack.wrapping_add(sent);
    }
    scratch.decided = state;
    remember(scratch, known);
    Some(action)
}

/// Whole seconds until the key's next request would pass, at least 1.
#[inline(always)]
fn retry_seconds(tat: u64, now: u64, limit: &Limit) -> u64 {
    let ns = retry_after_ns(tat, now, limit);
    ns.div_ceil(NANOS_PER_SEC).max(1)
}

/// Reads the IP and TCP headers of a segment to one of `[http] ports` into `scratch.segment`.
#[inline(always)]
fn parse(
    ctx: &XdpContext,
    config: &DatapathConfig,
    l3: usize,
    ipv6: bool,
    scratch: &mut Scratch,
) -> Option<Tcp> {
    let l3 = l3.min(MAX_L2);
    // The fields that say whether this is a TCP segment to an HTTP port first; the addresses
    // are copied only for one that is.
    let (l4, ip_end) = if ipv6 {
        let hdr = read::<[u8; 8]>(ctx, l3)?;
        if hdr[6] != IPPROTO_TCP {
            return None;
        }
        let l4 = l3 + 40;
        (l4, l4 + usize::from(u16::from_be_bytes([hdr[4], hdr[5]])))
    } else {
        let hdr = read::<[u8; 10]>(ctx, l3)?;
        // TCP, and no fragment (DF alone is fine).
        if hdr[9] != IPPROTO_TCP || u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3fff != 0 {
            return None;
        }
        (
            l3 + usize::from(hdr[0] & 0x0f) * 4,
            l3 + usize::from(u16::from_be_bytes([hdr[2], hdr[3]])),
        )
    };
    let tcp = read::<[u8; TCP_HDR_LEN]>(ctx, l4)?;
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    if !config.http.is_http_port(dport) {
        return None;
    }
    let seg = &mut scratch.segment;
    if ipv6 {
        seg.src = read::<[u8; 16]>(ctx, l3 + 8)?;
        seg.dst = read::<[u8; 16]>(ctx, l3 + 24)?;
    } else {
        seg.src = [0; 16];
        seg.dst = [0; 16];
        seg.src[..4].copy_from_slice(&read::<[u8; 4]>(ctx, l3 + 12)?);
        seg.dst[..4].copy_from_slice(&read::<[u8; 4]>(ctx, l3 + 16)?);
    }
    let header_len = usize::from(tcp[12] >> 4) * 4;
    if header_len < TCP_HDR_LEN {
        return None;
    }
    let payload = l4 + header_len;
    let frame_len = ctx.data_end() - ctx.data();
    // The IP length bounds the payload (a short frame has Ethernet padding after it).
    let end = ip_end.min(frame_len);
    let payload_len = end.saturating_sub(payload) as u32;

    seg.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    seg.dport = dport;
    seg.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    seg.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    seg.payload_len = payload_len;
    seg.ipv6 = ipv6 as u32;
    seg.l2_len = l3 as u32;
    let flags = tcp[13];
    scratch.flow = FlowKey {
        client: seg.src,
        gateway: seg.dst,
        client_port: seg.sport,
        gateway_port: dport,
        family: if ipv6 {
            u32::from(FAMILY_IPV6)
        } else {
            u32::from(FAMILY_IPV4)
        },
    };
    let l2_len = l3.clamp(1, MAX_L2);
    // SAFETY: the Ethernet header and tags (`l3` bytes, 14 to 22 from the parse), into a
    // MAX_L2-byte array of this per-CPU value.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, seg.l2.as_mut_ptr().cast(), l2_len as u32) } != 0 {
        return None;
    }
    timestamps(ctx, l4, header_len, scratch);
    Some(Tcp {
        flags,
        l4,
        header_len,
        payload,
        payload_len,
    })
}

/// The TCP timestamps option of the segment, if it has one (the answer echoes it: a stack
/// that negotiated timestamps drops segments without them). It is looked for where stacks put
/// it — first, after up to two NOPs (Linux, BSDs and Windows send `NOP NOP TS` on data
/// segments, SACK blocks after it); elsewhere it is not found, and the answer goes without.
#[inline(always)]
fn timestamps(ctx: &XdpContext, l4: usize, header_len: usize, scratch: &mut Scratch) {
    let seg = &mut scratch.segment;
    seg.has_ts = 0;
    if header_len < TCP_HDR_LEN + TS_OPTION_AREA {
        return;
    }
    let Some(options) = read::<[u8; TS_OPTION_AREA]>(ctx, l4 + TCP_HDR_LEN) else {
        return;
    };
    let at = match options {
        [8, 10, ..] => 0,
        [1, 8, 10, ..] => 1,
        [1, 1, 8, 10, ..] => 2,
        _ => return,
    };
    let word = |k: usize| {
        let b = |i: usize| options[(at + k + i).min(TS_OPTION_AREA - 1)];
        u32::from_be_bytes([b(0), b(1), b(2), b(3)])
    };
    seg.ts_val = word(2);
    seg.ts_ecr = word(6);
    seg.has_ts = 1;
}

/// Turns the request's frame into the 429 of plan slot `plan` with `retry_s` seconds, back to
/// the client; with `keep_alive` the connection stays open. Counted: a 429 sent, or an answer
/// that could not be built (then dropped). The action, and the payload bytes sent.
#[inline(always)]
fn answer(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    plan: u32,
    retry_s: u64,
    keep_alive: bool,
) -> (u32, u32) {
    match build_answer(ctx, scratch, plan, retry_s, keep_alive) {
        Some(sent) => {
            count(Counter::Rejected);
            (xdp_action::XDP_TX, sent)
        }
        None => {
            count(Counter::AnswersFailed);
            (xdp_action::XDP_DROP, 0)
        }
    }
}

#[inline(always)]
fn build_answer(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    plan: u32,
    retry_s: u64,
    keep_alive: bool,
) -> Option<u32> {
    let answer = ANSWERS.get(plan).or_else(|| ANSWERS.get(0))?;
    let len = answer.len as usize;
    if len == 0 || len > ANSWER_BYTES {
        return None;
    }
    let digits = retry_digits(retry_s);
    let mut sum = u64::from(answer.sum);
    for (i, slot) in answer.slots.iter().enumerate() {
        if (i as u32) < answer.slot_count {
            sum += u64::from(slot_sum(u32::from(*slot), &digits));
        }
    }
    let headers = reply_headers(
        &scratch.segment,
        len as u32,
        sum,
        keep_alive,
        &mut scratch.frame,
    ) as usize;
    let headers = headers.clamp(1, HEADERS_BYTES);
    let len = len.clamp(1, ANSWER_BYTES);
    resize(ctx, headers + len)?;
    store(ctx, 0, scratch.frame.as_ptr(), headers)?;
    store(ctx, headers, answer.bytes.as_ptr(), len)?;
    let mut digits = digits;
    for i in 0..MAX_SLOTS {
        if (i as u32) < answer.slot_count {
            let at = headers + usize::from(answer.slots[i]);
            store(ctx, at, digits.as_mut_ptr(), RETRY_DIGITS)?;
        }
    }
    Some(len as u32)
}

/// Turns the client's segment into a reset to the gateway at `seq` (the answered request's
/// first byte: where the gateway's socket waits). Counted.
#[inline(always)]
fn reset(ctx: &XdpContext, scratch: &mut Scratch, seq: u32) -> u32 {
    let headers = reset_headers(&scratch.segment, seq, &mut scratch.frame) as usize;
    let headers = headers.clamp(1, HEADERS_BYTES);
    if resize(ctx, headers).is_none() || store(ctx, 0, scratch.frame.as_ptr(), headers).is_none() {
        // Left as it was: the gateway's stack answers it, and its socket times out in the end.
        return xdp_action::XDP_PASS;
    }
    count(Counter::GatewayResets);
    xdp_action::XDP_PASS
}

/// Makes the frame `len` bytes long: grown at the front (the headroom every XDP frame has),
/// else at the back, or cut at the back.
#[inline(always)]
fn resize(ctx: &XdpContext, len: usize) -> Option<()> {
    let current = ctx.data_end() - ctx.data();
    if len > current {
        let grow = (len - current) as i32;
        // SAFETY: the helpers check the frame's bounds themselves.
        let grown = unsafe {
            bpf_xdp_adjust_head(ctx.ctx, -grow) == 0 || bpf_xdp_adjust_tail(ctx.ctx, grow) == 0
        };
        grown.then_some(())
    } else if len < current {
        // SAFETY: as above.
        (unsafe { bpf_xdp_adjust_tail(ctx.ctx, len as i32 - current as i32) } == 0).then_some(())
    } else {
        Some(())
    }
}

/// Writes `len` bytes from `from` at `offset` of the frame.
#[inline(always)]
fn store(ctx: &XdpContext, offset: usize, from: *const u8, len: usize) -> Option<()> {
    // SAFETY: `from` holds at least `len` bytes (the callers' arrays); the helper checks the
    // frame's bounds.
    let stored =
        unsafe { bpf_xdp_store_bytes(ctx.ctx, offset as u32, from as *mut c_void, len as u32) };
    (stored == 0).then_some(())
}
