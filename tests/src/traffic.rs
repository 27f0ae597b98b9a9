//! UDP clients in the client namespace and a counting receiver in the gateway namespace.

use crate::netns::Netns;
use nix::sys::socket::{setsockopt, sockopt};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The port the receiver listens on.
pub const PORT: u16 = 9000;

/// One client: a UDP socket bound to one source address.
pub struct Client {
    pub addr: IpAddr,
    socket: UdpSocket,
}

impl Client {
    pub fn new(ns: &Netns, addr: IpAddr) -> Client {
        let socket = ns.run(move || {
            UdpSocket::bind(SocketAddr::new(addr, 0))
                .unwrap_or_else(|e| panic!("binding {addr}: {e}"))
        });
        Client { addr, socket }
    }

    /// Sends one datagram; false when the kernel refused it (e.g. a full queue).
    pub fn send(&self, to: SocketAddr) -> bool {
        self.socket.send_to(b"limiter test", to).is_ok()
    }

    /// Sends `count` datagrams back to back; returns how many the kernel took.
    pub fn burst(&self, to: SocketAddr, count: u64) -> u64 {
        (0..count).filter(|_| self.send(to)).count() as u64
    }
}

/// What a flood did.
#[derive(Debug, Clone)]
pub struct FloodReport {
    /// Datagrams the kernel took, per client (in the order given).
    pub sent: Vec<u64>,
    /// From the first send to the last.
    pub elapsed: Duration,
}

/// Sends from every client in turn, as fast as possible, for `duration` (or until `stop`).
pub fn flood(
    clients: &[&Client],
    to: SocketAddr,
    duration: Duration,
    stop: &AtomicBool,
) -> FloodReport {
    flood_to(clients, &vec![to; clients.len()], duration, stop)
}

/// Like [`flood`], each client sending to its own destination.
pub fn flood_to(
    clients: &[&Client],
    to: &[SocketAddr],
    duration: Duration,
    stop: &AtomicBool,
) -> FloodReport {
    let mut sent = vec![0u64; clients.len()];
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        for (i, client) in clients.iter().enumerate() {
            sent[i] += client.send(to[i]) as u64;
        }
        rounds += 1;
        // Leave the other core some room for the agent and the CLI.
        if rounds.is_multiple_of(256) {
            std::thread::yield_now();
        }
    }
    FloodReport {
        sent,
        elapsed: start.elapsed(),
    }
}

/// A flood running on its own thread until stopped.
pub struct BackgroundFlood {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<FloodReport>>,
}

impl BackgroundFlood {
    pub fn start(clients: Vec<Arc<Client>>, to: SocketAddr) -> BackgroundFlood {
        let to = vec![to; clients.len()];
        BackgroundFlood::start_to(clients, to)
    }

    /// Each client sending to its own destination.
    pub fn start_to(clients: Vec<Arc<Client>>, to: Vec<SocketAddr>) -> BackgroundFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let refs: Vec<&Client> = clients.iter().map(|c| c.as_ref()).collect();
            flood_to(&refs, &to, Duration::from_secs(3600), &flag)
        });
        BackgroundFlood {
            stop,
            handle: Some(handle),
        }
    }

    pub fn stop(mut self) -> FloodReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("flood thread")
    }
}

impl Drop for BackgroundFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Counts datagrams arriving at the gateway, per source address.
pub struct Receiver {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<HashMap<IpAddr, u64>>>,
}

impl Receiver {
    pub fn start(ns: &Netns, addr: IpAddr) -> Receiver {
        let bind = SocketAddr::new(addr, PORT);
        let socket =
            ns.run(move || UdpSocket::bind(bind).unwrap_or_else(|e| panic!("binding {bind}: {e}")));
        // Passed packets are few; a large buffer makes sure none is lost before it is counted.
        let _ = setsockopt(&socket, sockopt::RcvBuf, &(8 << 20));
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut counts = HashMap::new();
            let mut buf = [0u8; 2048];
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((_, from)) => *counts.entry(from.ip()).or_insert(0) += 1,
                    Err(_) if flag.load(Ordering::Relaxed) => return counts,
                    Err(_) => {}
                }
            }
        });
        Receiver {
            addr: bind,
            stop,
            handle: Some(handle),
        }
    }

    /// Stops after the queue has drained; returns the counts per source.
    pub fn finish(mut self) -> HashMap<IpAddr, u64> {
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().expect("receiver thread")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Sends hand-made Ethernet frames out of an interface (an AF_PACKET socket): sources no socket
/// could bind, such as a flood from thousands of random addresses.
pub struct RawSender {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
}

impl RawSender {
    pub fn new(ns: &Netns, ifname: &str) -> RawSender {
        let name = std::ffi::CString::new(ifname).unwrap();
        let (fd, ifindex) = ns.run(move || {
            use std::os::fd::FromRawFd;
            // Protocol 0: the socket only sends.
            // SAFETY: a plain syscall with constant arguments.
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(
                raw >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: `name` is a NUL-terminated string that outlives the call.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(ifindex != 0, "no interface {name:?}");
            (
                // SAFETY: `raw` is a socket just opened, owned by nothing else.
                unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) },
                ifindex as i32,
            )
        });
        RawSender { fd, ifindex }
    }

    /// Sends one frame; false when the kernel refused it.
    pub fn send(&self, frame: &[u8]) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        // SAFETY: the frame and the address are valid for the call, their lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        sent == frame.len() as isize
    }
}

/// An Ethernet + IPv4 + UDP frame from `src` to `dst`:`port`, between the test bed's MACs.
pub fn ipv4_udp_frame(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, port: u16) -> Vec<u8> {
    use crate::frame::{ethernet, udp, Ipv4, ETH_P_IPV4};
    let ip = Ipv4::udp(src.octets(), dst.octets()).packet(&udp(40000, port, b"limiter test"));
    ethernet(
        crate::netns::GATEWAY_MAC_BYTES,
        crate::netns::CLIENT_MAC_BYTES,
        ETH_P_IPV4,
        &ip,
    )
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    try_pin_to_cpu(cpu).unwrap_or_else(|e| panic!("{e}"));
}

fn try_pin_to_cpu(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)
        .map_err(|e| format!("CPU {cpu} does not fit a CPU set: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pinning a thread to CPU {cpu}: {e}"))
}

/// Runs the calling thread (only) ahead of ordinary work, at nice -10.
fn try_raise_priority() -> Result<(), String> {
    // SAFETY: plain system calls about this thread.
    let raised = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as u32, -10) };
    if raised == 0 {
        Ok(())
    } else {
        Err(format!(
            "raising a sender's priority: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Makes `iface` (in `ns`) transmit what is sent on CPU `q` on its tx queue `q`, for each of its
/// first `queues` queues (XPS, transmit packet steering, through the namespace's sysfs).
///
/// On a veth pair, a packet sent on tx queue `q` of one end is put on rx queue `q` of the peer,
/// and the peer's XDP program runs for that queue in a NAPI poll scheduled by — and so run on —
/// the CPU that queued the packet: the sender's. Without steering, the tx queue comes from a hash
/// of the flow, and two flows may well share a queue; then one CPU's NAPI poll would run both
/// flows' packets one after the other. With it, senders pinned to CPUs 0 and 1 have their packets
/// charged by the XDP program on CPUs 0 and 1, at the same time, whatever their ports hash to.
pub fn steer_tx_queues_by_cpu(ns: &Netns, iface: &str, queues: usize) {
    for queue in 0..queues {
        let path = format!("/sys/class/net/{iface}/queues/tx-{queue}/xps_cpus");
        let mask = format!("{:x}", 1u64 << queue);
        // `ip netns exec` mounts the namespace's own sysfs, where its interfaces are.
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, "sh", "-c"])
            .arg(format!("echo {mask} > {path}"))
            .output()
            .expect("running ip netns exec");
        assert!(
            out.status.success(),
            "steering tx queue {queue} of {iface} to CPU {queue} ({path}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// When one `send` began and when it returned.
#[derive(Debug, Clone, Copy)]
pub struct SendTimes {
    pub began: Instant,
    pub returned: Instant,
}

/// What one sender of a [`PinnedFlood`] did.
#[derive(Debug, Clone)]
pub struct PinnedSenderReport {
    pub cpu: usize,
    /// Datagrams the kernel took.
    pub sent: u64,
    pub first: SendTimes,
    pub last: SendTimes,
    /// The send that took longest (the thread was preempted, or waited for socket memory).
    pub slowest: SendTimes,
}

impl SendTimes {
    pub fn took(&self) -> Duration {
        self.returned - self.began
    }
}

/// Clients flooding one destination at once, each from a thread of its own pinned to its CPU,
/// as fast as they can, for a fixed time.
pub struct PinnedFlood {
    handles: Vec<JoinHandle<PinnedSenderReport>>,
    /// When the senders were released, all at once.
    pub started: Instant,
}

impl PinnedFlood {
    /// Starts one sender per `(client, cpu)`; returns once every sender is pinned and released.
    /// Each stamps every send before and after (the clock is the vDSO's, a few tens of ns), so
    /// that a thread preempted just before its first or after its last send does not stretch
    /// the window it reports.
    pub fn start(senders: Vec<(Arc<Client>, usize)>, to: SocketAddr, duration: Duration) -> Self {
        let go = Arc::new(std::sync::Barrier::new(senders.len() + 1));
        let handles = senders
            .into_iter()
            .map(|(client, cpu)| {
                let go = Arc::clone(&go);
                std::thread::spawn(move || {
                    // Pinned, and ahead of ordinary work (nice -10): on two CPUs, whatever else
                    // runs would otherwise take its time from one sender, and the flows would
                    // not run side by side.
                    let ready = try_pin_to_cpu(cpu).and_then(|()| try_raise_priority());
                    // Released (or failed) together: a sender that failed must not leave the
                    // others waiting at the barrier.
                    go.wait();
                    if let Err(e) = ready {
                        panic!("{e}");
                    }
                    let send = || {
                        let began = Instant::now();
                        let ok = client.send(to);
                        (
                            ok as u64,
                            SendTimes {
                                began,
                                returned: Instant::now(),
                            },
                        )
                    };
                    let (mut sent, first) = send();
                    let deadline = first.began + duration;
                    let (mut last, mut slowest) = (first, first);
                    while last.returned < deadline {
                        let (ok, times) = send();
                        sent += ok;
                        last = times;
                        if last.took() > slowest.took() {
                            slowest = last;
                        }
                    }
                    PinnedSenderReport {
                        cpu,
                        sent,
                        first,
                        last,
                        slowest,
                    }
                })
            })
            .collect();
        go.wait();
        PinnedFlood {
            handles,
            started: Instant::now(),
        }
    }

    /// Whether every sender has finished.
    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    /// Waits for every sender to finish; their reports, in the order given.
    pub fn join(self) -> Vec<PinnedSenderReport> {
        self.handles
            .into_iter()
            .map(|h| h.join().expect("a pinned sender panicked"))
            .collect()
    }
}

/// The agent's packet counters (`COUNTERS`, one value per CPU), read through its pin under the
/// agent's `--pin-path`, as they are in the kernel — not as the agent sums them.
pub struct PinnedCounters {
    map: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
}

impl PinnedCounters {
    pub fn open(pin_path: &std::path::Path) -> PinnedCounters {
        let pin = pin_path.join(limiter_common::maps::COUNTERS_MAP);
        let data = aya::maps::MapData::from_pin(&pin)
            .unwrap_or_else(|e| panic!("opening the pinned map {}: {e}", pin.display()));
        let map = aya::maps::Map::from_map_data(data)
            .and_then(aya::maps::PerCpuArray::try_from)
            .unwrap_or_else(|e| panic!("{} is not a per-CPU array of u64: {e}", pin.display()));
        PinnedCounters { map }
    }

    /// `counter` of the first interface the agent attached to, per possible CPU.
    pub fn per_cpu(&self, counter: limiter_common::maps::Counter) -> Vec<u64> {
        let index = limiter_common::maps::counter_index(0, counter);
        self.map
            .get(&index, 0)
            .unwrap_or_else(|e| panic!("reading COUNTERS[{index}] ({counter:?}): {e}"))
            .iter()
            .copied()
            .collect()
    }
}
