//! The raw `bpf(2)` system call, for the commands aya 0.14 does not offer (batch lookups and
//! updates, BPF links replaced in place): one wrapper for the agent, the tests and the
//! benchmarks.

use std::io;

/// `bpf(cmd, attr, sizeof(*attr))`: the kernel's non-negative answer (a file descriptor for the
/// commands that make one, else 0), or the error it set.
///
/// # Safety
///
/// `attr` must be the member of `union bpf_attr` that `cmd` reads, laid out as the kernel's,
/// unused bytes zeroed; every pointer in it must point to memory of the size the command reads
/// or writes through it, alive for the call. The kernel may write into `attr`.
pub unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<i32> {
    // SAFETY: the caller vouches for `attr`; its size is passed with it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as u32,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret as i32)
}

/// The kernel's timer tick, ns: the resolution of `CLOCK_MONOTONIC_COARSE` (`TICK_NSEC`), the
/// step of the jiffies counter — the coarse clock of the datapath's fast path (its
/// [`TICK_GLOBAL`]). 0 (the fast path off) when the kernel does not tell.
///
/// [`TICK_GLOBAL`]: crate::maps::TICK_GLOBAL
pub fn tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } != 0 {
        return 0;
    }
    res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64
}

/// CLOCK_REALTIME less CLOCK_MONOTONIC now, ns: what turns the datapath's clock into UTC for
/// quota windows (`QuotaClock::utc_offset_ns`). Read as the closest of a few tries (the two
/// clocks are read one after the other), so it is good to a microsecond or so.
pub fn utc_offset_ns() -> u64 {
    let read = |clock| {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to write.
        unsafe { libc::clock_gettime(clock, &mut now) };
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    };
    (0..3)
        .map(|_| {
            let before = read(libc::CLOCK_MONOTONIC);
            let real = read(libc::CLOCK_REALTIME);
            let after = read(libc::CLOCK_MONOTONIC);
            // The realtime read's moment on the monotonic clock is between the two.
            (
                after - before,
                real.wrapping_sub(before + (after - before) / 2),
            )
        })
        .min_by_key(|(spread, _)| *spread)
        .map_or(0, |(_, offset)| offset)
}
