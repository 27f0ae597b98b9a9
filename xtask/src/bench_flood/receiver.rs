//! The receiver: its XDP link (the arm's program swapped in place), the kernel thread that runs
//! its NAPI poll, and the counters a measurement reads.

use super::ns::within;
use anyhow::{bail, ensure, Context};
use aya::programs::Xdp;
use limiter_common::sys::bpf;
use limiter_tests::netns::Netns;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// `BPF_LINK_CREATE` / `BPF_LINK_UPDATE` and the XDP attach type (linux/bpf.h).
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_XDP: u32 = 37;

/// An XDP BPF link on the receiving veth whose program is replaced in place between arms.
pub(super) struct XdpLink {
    fd: OwnedFd,
}

impl XdpLink {
    pub(super) fn create(ns: &Netns, iface: &str, program: &Xdp) -> anyhow::Result<XdpLink> {
        let prog_fd = program.fd()?.as_fd().as_raw_fd();
        let iface = iface.to_owned();
        within(ns, move || {
            let name = std::ffi::CString::new(iface.clone())?;
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {iface}");
            // union bpf_attr's link_create: prog_fd, target_ifindex, attach_type, flags, and
            // zeroes for the rest.
            let mut attr = [0u32; 16];
            attr[0] = prog_fd as u32;
            attr[1] = ifindex;
            attr[2] = BPF_XDP;
            // SAFETY: a link_create member without pointers, zero-padded to the size given.
            let fd = unsafe { bpf(BPF_LINK_CREATE, &mut attr) }.context("BPF_LINK_CREATE (XDP)")?;
            Ok(XdpLink {
                // SAFETY: the kernel returned a new file descriptor, owned by nothing else.
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            })
        })?
    }

    pub(super) fn replace(&self, program: &Xdp) -> anyhow::Result<()> {
        let mut attr = [0u32; 16];
        attr[0] = self.fd.as_raw_fd() as u32;
        attr[1] = program.fd()?.as_fd().as_raw_fd() as u32;
        // SAFETY: a link_update member (link, new program) without pointers, zero-padded.
        unsafe { bpf(BPF_LINK_UPDATE, &mut attr) }.context("BPF_LINK_UPDATE")?;
        Ok(())
    }
}

/// The kernel thread that runs the receiving veth's NAPI poll (threaded NAPI).
pub(super) struct NapiThread {
    pub(super) pid: i32,
    pub(super) comm: String,
}

impl NapiThread {
    /// The thread named `napi/IFACE-ID` (truncated to the 15 characters a name keeps).
    pub(super) fn find(iface: &str) -> anyhow::Result<NapiThread> {
        let mut found = NapiThread::find_all(iface, 1).context(
            "threaded NAPI did not take effect, so the receiver would run on the generator's CPU",
        )?;
        Ok(found.remove(0))
    }

    /// Every thread named `napi/IFACE-ID`: one per queue of a veth with several.
    pub(super) fn find_all(iface: &str, expected: usize) -> anyhow::Result<Vec<NapiThread>> {
        let mut prefix = format!("napi/{iface}-");
        prefix.truncate(15);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut found = Vec::new();
            for entry in std::fs::read_dir("/proc")?.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
                    if comm.trim().starts_with(&prefix) {
                        found.push(NapiThread {
                            pid,
                            comm: comm.trim().to_owned(),
                        });
                    }
                }
            }
            if found.len() == expected {
                found.sort_by(|a, b| a.comm.cmp(&b.comm));
                return Ok(found);
            }
            ensure!(
                found.len() < expected && Instant::now() < deadline,
                "{} NAPI threads {prefix}… for the receiving veth, expected {expected}",
                found.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn pin(&self, cpu: usize) -> anyhow::Result<()> {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(self.pid), &set)
            .with_context(|| format!("pinning {} to CPU {cpu}", self.comm))?;
        // SAFETY: plain system call.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, self.pid as u32, -10) };
        Ok(())
    }

    /// The CPU the thread last ran on (field 39 of `/proc/PID/stat`).
    pub(super) fn last_cpu(&self) -> Option<usize> {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let after_comm = &text[text.rfind(')')? + 2..];
        after_comm.split_whitespace().nth(36)?.parse().ok()
    }
}

/// What the scheduler says of a thread (`/proc/TID/schedstat`): the time it ran and the time it
/// waited, runnable, for a CPU, ns.
pub(super) struct Schedstat {
    pub(super) run_ns: u64,
    pub(super) wait_ns: u64,
}

impl Schedstat {
    pub(super) fn read(tid: i32) -> anyhow::Result<Schedstat> {
        let path = format!("/proc/{tid}/schedstat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let mut fields = text.split_whitespace().map(|v| v.parse::<u64>());
        match (fields.next(), fields.next()) {
            (Some(Ok(run_ns)), Some(Ok(wait_ns))) => Ok(Schedstat { run_ns, wait_ns }),
            _ => bail!("{path}: {text}"),
        }
    }
}

/// NET_RX softirqs per CPU (`/proc/softirqs`).
pub(super) fn net_rx_softirqs() -> anyhow::Result<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/softirqs")?;
    text.lines()
        .find_map(|line| {
            let rest = line.trim_start().strip_prefix("NET_RX:")?;
            Some(
                rest.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect(),
            )
        })
        .context("no NET_RX line in /proc/softirqs")
}

/// rx packets of `iface` in `ns`, read once.
pub(super) fn rx_packets_once(ns: &Netns, iface: &str) -> anyhow::Result<u64> {
    StackFiles::open(ns, iface)?.rx_packets()
}

/// The receiver's counters: its veth's rx packets, as `ip -s link` shows them (`/proc/net/dev`
/// of the namespace: the driver's `ndo_get_stats64`), and the IPv4/UDP counters of the
/// namespace (`/proc/net/snmp`).
pub(super) struct StackCounters {
    pub(super) rx_packets: u64,
    /// Frames that found the veth's ring full (the sender's `ndo_xdp_xmit` could not queue).
    pub(super) rx_dropped: u64,
    /// Datagrams UDP took: delivered to a socket, to no socket (NoPorts), or refused by a full
    /// socket (InErrors). Every flood packet the filter passes gets to UDP, so this counts them.
    udp: u64,
    /// Datagrams UDP delivered to a socket (InDatagrams).
    pub(super) udp_delivered: u64,
    /// IPv4 InHdrErrors (bad checksums included) + InAddrErrors.
    pub(super) bad_headers: u64,
}

impl StackCounters {
    pub(super) fn passed(&self) -> u64 {
        self.udp
    }
}

/// `/proc/net/dev` and `/proc/net/snmp` of the receiver's namespace, opened once from a thread
/// inside it (a `/proc/net` file stays bound to the namespace it was opened in), so that a
/// reading is two system calls each, from any thread.
pub(super) struct StackFiles {
    iface: String,
    dev: std::fs::File,
    snmp: std::fs::File,
}

impl StackFiles {
    pub(super) fn open(ns: &Netns, iface: &str) -> anyhow::Result<StackFiles> {
        let (dev, snmp) = within(ns, || {
            anyhow::Ok((
                std::fs::File::open("/proc/thread-self/net/dev")?,
                std::fs::File::open("/proc/thread-self/net/snmp")?,
            ))
        })??;
        Ok(StackFiles {
            iface: iface.to_owned(),
            dev,
            snmp,
        })
    }

    /// The veth's rx packets alone.
    pub(super) fn rx_packets(&self) -> anyhow::Result<u64> {
        Ok(self.dev_counters()?.0)
    }

    /// rx packets and rx drops of the veth (the drops: frames that found its ring full).
    fn dev_counters(&self) -> anyhow::Result<(u64, u64)> {
        let dev = read_whole(&self.dev)?;
        dev.lines()
            .find_map(|line| {
                let (name, rest) = line.split_once(':')?;
                if name.trim() != self.iface {
                    return None;
                }
                let fields: Vec<u64> = rest
                    .split_whitespace()
                    .map(|v| v.parse().unwrap_or(0))
                    .collect();
                Some((*fields.get(1)?, *fields.get(3)?))
            })
            .with_context(|| format!("no {} in /proc/net/dev", self.iface))
    }

    pub(super) fn read(&self) -> anyhow::Result<StackCounters> {
        let (rx_packets, rx_dropped) = self.dev_counters()?;
        let snmp = snmp(&read_whole(&self.snmp)?);
        let get = |name: &str| snmp.get(name).copied().unwrap_or(0);
        Ok(StackCounters {
            rx_packets,
            rx_dropped,
            udp: get("Udp.InDatagrams") + get("Udp.NoPorts") + get("Udp.InErrors"),
            udp_delivered: get("Udp.InDatagrams"),
            bad_headers: get("Ip.InHdrErrors") + get("Ip.InAddrErrors"),
        })
    }
}

/// A `/proc` file read again from its start.
fn read_whole(file: &std::fs::File) -> anyhow::Result<String> {
    use std::io::{Read, Seek};
    let mut file = file;
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// `/proc/net/snmp` as "Proto.Name" → value.
fn snmp(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((proto, names)), Some((_, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(value) = value.parse() {
                out.insert(format!("{proto}.{name}"), value);
            }
        }
    }
    out
}
