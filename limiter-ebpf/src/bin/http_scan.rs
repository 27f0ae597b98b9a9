//! An experiment for API keys (issue 11): the request scanner of `limiter_common::http` run by
//! an XDP program over a window of a TCP segment's payload, copied into per-CPU scratch. The
//! verdict tells what it found, for `BPF_PROG_TEST_RUN`: `XDP_DROP` a key, `XDP_PASS` no key,
//! `XDP_TX` not HTTP, `XDP_ABORTED` a packet it cannot scan.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_loop, bpf_xdp_load_bytes},
    macros::map,
    macros::xdp,
    maps::PerCpuArray,
    programs::XdpContext,
};
use core::ffi::c_void;
use limiter_common::http::{KeyHeaders, Scan, Scanner, WINDOW};

/// The window and the scanner, per CPU: far too big for the stack.
#[repr(C)]
pub struct Scratch {
    bytes: [u8; WINDOW],
    scanner: Scanner,
    len: u32,
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// What `bpf_loop` hands the callback: it must live on the stack.
#[repr(C)]
struct LoopContext {
    scratch: *mut Scratch,
}

/// One word (8 bytes) of the window: the callback `bpf_loop` calls, verified once (a loop of 2048
/// rounds of the state machine, unrolled by the verifier, is far beyond its million instructions).
#[inline(never)]
extern "C" fn scan_word(index: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the LoopContext on the caller's stack, its pointer a per-CPU map value.
    let scratch = unsafe { &mut *(*(ctx as *mut LoopContext)).scratch };
    let offset = index.wrapping_mul(8);
    if offset >= scratch.len || !scratch.scanner.wants_more() {
        return 1;
    }
    let at = offset as usize & (WINDOW - 8);
    // SAFETY: 8 bytes inside the scratch value (`at` is a multiple of 8 below WINDOW - 7).
    let word = unsafe { (scratch.bytes.as_ptr().add(at) as *const u64).read_unaligned() };
    let valid = (scratch.len - offset).min(8);
    scratch.scanner.step_word(offset as u16, word, valid);
    0
}

const ETH_LEN: usize = 14;

#[xdp]
pub fn http_scan(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_LEN + 20 > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: inside the packet, checked above.
    let (ihl, proto) = unsafe {
        let ip = (start + ETH_LEN) as *const u8;
        (usize::from(ip.read() & 0x0f) * 4, ip.add(9).read())
    };
    if proto != 6 || ihl < 20 {
        return xdp_action::XDP_ABORTED;
    }
    // The checks on the pointers themselves, as the verifier follows them.
    let tcp = start + ETH_LEN + ihl;
    if tcp + 20 > end {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: inside the packet, checked above.
    let doff = unsafe { usize::from(((tcp + 12) as *const u8).read() >> 4) * 4 };
    if doff < 20 || tcp + doff >= end {
        return xdp_action::XDP_ABORTED;
    }
    let payload = tcp + doff - start;
    // 1 to WINDOW, in a form the verifier sees as such (the helper refuses a length that
    // could be 0 or more than the buffer).
    let len = (((end - start - payload).min(WINDOW) - 1) & (WINDOW - 1)) + 1;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: a per-CPU array value of this run, WINDOW bytes; `len` is 1 to WINDOW.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            payload as u32,
            (*scratch).bytes.as_mut_ptr().cast(),
            len as u32,
        )
    };
    if loaded != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let Ok(headers) = KeyHeaders::new(&[b"x-api-key", b"authorization"]) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: as above.
    unsafe {
        (*scratch).scanner = Scanner::new(&headers);
        (*scratch).len = len as u32;
    }
    let mut context = LoopContext { scratch };
    // SAFETY: the callback and its stack context, as bpf_loop takes them.
    unsafe {
        bpf_loop(
            len.div_ceil(8) as u32,
            scan_word as *mut c_void,
            (&mut context as *mut LoopContext).cast(),
            0,
        )
    };
    // SAFETY: as above.
    let scanner = unsafe { (*scratch).scanner };
    match scanner.finish() {
        Scan::Key(_) => xdp_action::XDP_DROP,
        Scan::NoKey => xdp_action::XDP_PASS,
        Scan::NotHttp => xdp_action::XDP_TX,
    }
}
