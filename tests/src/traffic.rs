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
    let mut sent = vec![0u64; clients.len()];
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        for (i, client) in clients.iter().enumerate() {
            sent[i] += client.send(to) as u64;
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
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let refs: Vec<&Client> = clients.iter().map(|c| c.as_ref()).collect();
            flood(&refs, to, Duration::from_secs(3600), &flag)
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
