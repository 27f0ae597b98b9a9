//! The traffic generator: `xdp_gen` (limiter-ebpf/src/bin/xdp_gen.rs) run with
//! `BPF_PROG_TEST_RUN` in live-frames mode on the generator's CPU, in the sender's namespace.

use super::ns::within;
use crate::bench::{self, INTERRUPTED};
use anyhow::{bail, Context};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::Ebpf;
use limiter_tests::frame;
use limiter_tests::netns::Netns;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

/// Frames per `test_run` of the generator (a signal ends one early: [`stop_generator`]), and
/// frames per batch within one (the kernel's maximum is 256).
pub(super) const CHUNK: u32 = 1 << 20;
/// Frames per `test_run` with [`Load::SameForAll`]: one call for a whole run. The generator
/// sleeps ~20–30 ms at the end of every call (in the kernel, here), which a fixed rate would
/// have to make up in a burst.
///
/// [`Load::SameForAll`]: super::model::Load::SameForAll
pub(super) const CHUNK_SAME_LOAD: u32 = 1 << 26;
pub(super) const BATCH: u32 = 256;
/// Frames per batch with [`Load::SameForAll`]. The generator hands a batch to the veth at once,
/// so the receiving ring (256 frames) takes a batch's worth in one go: a receiver that keeps
/// up on average still loses frames whenever its thread is slow to wake for a batch of 256.
/// Batches of 64 arrive more as a NIC's frames do, and still leave the generator the speed to
/// catch up ([`FixedRate`]); smaller ones do not.
///
/// [`Load::SameForAll`]: super::model::Load::SameForAll
/// [`FixedRate`]: super::pacer::FixedRate
pub(super) const BATCH_SAME_LOAD: u32 = 64;

/// Well-behaved sources the generator can count.
const MAX_WELL: u32 = 64;

/// The generator's configuration (`GEN_CONFIG` of limiter-ebpf/src/bin/xdp_gen.rs: the same
/// layout).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct GenConfig {
    pub(super) flood_base: u32,
    pub(super) flood_mask: u32,
    pub(super) random: u32,
    pub(super) well: u32,
    pub(super) well_base: u32,
    pub(super) well_mask: u32,
    pub(super) well_every_mask: u32,
    pub(super) well_every_shift: u32,
    pub(super) only_well: u32,
    pub(super) flood_port: u32,
    pub(super) well_port: u32,
    pub(super) header_sum: u32,
    pub(super) _pad: u32,
    pub(super) pace_interval_ns: u64,
    pub(super) pace_slack_ns: u64,
}

/// `GEN_STATE` of the generator.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct GenState {
    pub(super) frames: u64,
    pub(super) held: u64,
    pub(super) rng: u64,
    pub(super) next_ns: u64,
}

// SAFETY: #[repr(C)] plain data without padding.
unsafe impl aya::Pod for GenConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for GenState {}

pub(super) struct Sender<'a> {
    pub(super) ns: &'a Netns,
    pub(super) ifindex: u32,
}

/// The generator's maps (its program stays in its `Ebpf`).
pub(super) struct Generator {
    pub(super) config: Array<MapData, GenConfig>,
    pub(super) state: PerCpuArray<MapData, GenState>,
    pub(super) sent: PerCpuArray<MapData, u64>,
}

pub(super) fn load_generator(path: &Path) -> anyhow::Result<(Ebpf, Generator)> {
    let mut ebpf = bench::load_plain(path, &["xdp_gen"])?;
    let config = Array::try_from(ebpf.take_map("GEN_CONFIG").context("no GEN_CONFIG")?)?;
    let state = PerCpuArray::try_from(ebpf.take_map("GEN_STATE").context("no GEN_STATE")?)?;
    let sent = PerCpuArray::try_from(ebpf.take_map("GEN_SENT").context("no GEN_SENT")?)?;
    Ok((
        ebpf,
        Generator {
            config,
            state,
            sent,
        },
    ))
}

impl Generator {
    pub(super) fn configure(&mut self, config: GenConfig) -> anyhow::Result<()> {
        self.config.set(0, config, 0)?;
        Ok(())
    }

    pub(super) fn clear_sent(&mut self) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        for i in 0..MAX_WELL {
            self.sent
                .set(i, PerCpuValues::try_from(vec![0u64; cpus])?, 0)?;
        }
        Ok(())
    }
}

/// How the generator runs: frames per batch, and frames per `BPF_PROG_TEST_RUN` call — one
/// call (`once`), or calls until stopped; and on which CPU (`GENERATOR_CPU` but in scenario
/// (d): a veth hands a frame to the receiving queue of the CPU that sends it).
#[derive(Clone, Copy)]
pub(super) struct Calls {
    pub(super) batch: u32,
    pub(super) repeat: u32,
    pub(super) once: bool,
    pub(super) cpu: usize,
}

/// Runs the generator on `calls.cpu`, in the sender's namespace: one call, or calls until
/// `stop` ([`stop_generator`]). Its thread's id is in `tid` while it runs.
pub(super) fn generate(
    program: &Xdp,
    sender: &Sender,
    frame: &[u8],
    calls: Calls,
    stop: &AtomicBool,
    tid: &AtomicI32,
) -> anyhow::Result<()> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let md: [u32; 6] = [0, frame.len() as u32, 0, sender.ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
    within(sender.ns, || {
        limiter_tests::traffic::pin_to_cpu(calls.cpu);
        // Ahead of ordinary work on the machine (this thread only).
        // SAFETY: plain system call on this thread.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, -10) };
        // SAFETY: plain system call.
        tid.store(unsafe { libc::gettid() }, Ordering::Relaxed);
        let result = (|| loop {
            if !calls.once && stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let result = program.test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: calls.repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(calls.batch),
                ..TestRunOptions::new()
            });
            match result {
                Ok(_) => {}
                Err(ProgramError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    return Err(e).context("BPF_PROG_TEST_RUN of the generator (live frames)")
                }
            }
            if calls.once {
                return Ok(());
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted");
            }
        })();
        tid.store(0, Ordering::Relaxed);
        result
    })?
}

/// The signal that ends a call of the generator early (`BPF_PROG_TEST_RUN` returns `EINTR` when
/// one is pending); its handler does nothing.
const STOP_SIGNAL: libc::c_int = libc::SIGUSR1;

pub(super) fn install_stop_signal() -> anyhow::Result<()> {
    extern "C" fn nothing(_: libc::c_int) {}
    // SAFETY: a handler that does nothing, installed without SA_RESTART.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = nothing as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(STOP_SIGNAL, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("sigaction");
        }
    }
    Ok(())
}

/// Stops the generator running in `thread`: `stop`, and [`STOP_SIGNAL`] to its thread (its id
/// in `tid`) until it is done — again and again, in case one came between two calls.
pub(super) fn stop_generator<T>(
    stop: &AtomicBool,
    tid: &AtomicI32,
    thread: &std::thread::ScopedJoinHandle<'_, T>,
) {
    stop.store(true, Ordering::Relaxed);
    while !thread.is_finished() {
        let tid = tid.load(Ordering::Relaxed);
        if tid != 0 {
            // SAFETY: plain system call, to a thread of this process.
            unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, STOP_SIGNAL) };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Ones' complement sum of the frame's IPv4 header, source address and checksum left out: what
/// the generator adds each frame's source to for its checksum.
pub(super) fn header_sum(frame: &[u8]) -> u32 {
    let mut header = frame[frame::IPV4_AT..frame::IPV4_AT + 20].to_vec();
    header[10..12].fill(0);
    header[12..16].fill(0);
    frame::ones_sum(&header)
}
