//! Network namespaces joined by a veth pair.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip` with `args`, panicking with its output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs `work` on a thread that has entered this namespace. Sockets it creates stay in the
    /// namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        run_in(&self.name, work)
    }
}

/// Runs `work` on a thread that has entered the namespace named `name` (see [`Netns::run`]).
pub fn run_in<T: Send + 'static>(name: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        work()
    })
    .join()
    .expect("the thread inside the namespace panicked")
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A gateway namespace and a client namespace joined by a veth pair, on 198.18.0.0/24.
/// The gateway is 198.18.0.1; the clients may send from any of `client_addrs`.
pub struct TestNet {
    /// Deleted before `gateway`: field order is drop order.
    pub clients: Netns,
    pub gateway: Netns,
    /// The gateway's end of the veth pair, where the XDP program goes.
    pub gateway_if: String,
    pub client_if: String,
    pub gateway_addr: Ipv4Addr,
    pub client_addrs: Vec<Ipv4Addr>,
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

const GATEWAY_MAC: &str = "02:00:c6:12:00:01";
const CLIENT_MAC: &str = "02:00:c6:12:00:02";
/// The same MACs as bytes, for hand-made frames.
pub const GATEWAY_MAC_BYTES: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x01];
pub const CLIENT_MAC_BYTES: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];

impl TestNet {
    /// `clients` source addresses 198.18.0.10, .11, …; `queues` rx/tx queues on each veth end
    /// (2 lets two CPUs deliver packets at once).
    pub fn new(clients: u8, queues: u8) -> TestNet {
        crate::require_root();
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let gateway = Netns::new(format!("lgw{id}"));
        let client_ns = Netns::new(format!("lcl{id}"));
        let gateway_if = format!("lg{id}");
        let client_if = format!("lc{id}");
        let queues = queues.to_string();
        ip(&[
            "link",
            "add",
            &gateway_if,
            "address",
            GATEWAY_MAC,
            "numrxqueues",
            &queues,
            "numtxqueues",
            &queues,
            "netns",
            &gateway.name,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "address",
            CLIENT_MAC,
            "numrxqueues",
            &queues,
            "numtxqueues",
            &queues,
            "netns",
            &client_ns.name,
        ]);
        let gateway_addr = Ipv4Addr::new(198, 18, 0, 1);
        ip(&[
            "-n",
            &gateway.name,
            "addr",
            "add",
            "198.18.0.1/24",
            "dev",
            &gateway_if,
        ]);
        ip(&[
            "-n",
            &gateway.name,
            "addr",
            "add",
            "2001:2::1/48",
            "dev",
            &gateway_if,
            "nodad",
        ]);
        ip(&[
            "-n",
            &client_ns.name,
            "addr",
            "add",
            "198.18.0.2/24",
            "dev",
            &client_if,
        ]);
        let client_addrs: Vec<Ipv4Addr> = (0..clients)
            .map(|i| Ipv4Addr::new(198, 18, 0, 10 + i))
            .collect();
        for addr in &client_addrs {
            ip(&[
                "-n",
                &client_ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &client_if,
            ]);
        }
        ip(&["-n", &gateway.name, "link", "set", &gateway_if, "up"]);
        ip(&["-n", &client_ns.name, "link", "set", &client_if, "up"]);
        // Static neighbours: a flood's first packets must not wait in (and overflow) the queue
        // of an unresolved neighbour, so every packet sent reaches the XDP program.
        ip(&[
            "-n",
            &client_ns.name,
            "neigh",
            "replace",
            "198.18.0.1",
            "lladdr",
            GATEWAY_MAC,
            "dev",
            &client_if,
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            &client_ns.name,
            "-6",
            "neigh",
            "replace",
            "2001:2::1",
            "lladdr",
            GATEWAY_MAC,
            "dev",
            &client_if,
            "nud",
            "permanent",
        ]);
        TestNet {
            clients: client_ns,
            gateway,
            gateway_if,
            client_if,
            gateway_addr,
            client_addrs,
        }
    }

    /// A UDP client in the clients' namespace, sending from the `i`th client address.
    pub fn client(&self, i: usize) -> crate::traffic::Client {
        crate::traffic::Client::new(&self.clients, IpAddr::V4(self.client_addrs[i]))
    }

    /// One client per client address, shareable with flood threads.
    pub fn every_client(&self) -> Vec<std::sync::Arc<crate::traffic::Client>> {
        (0..self.client_addrs.len())
            .map(|i| std::sync::Arc::new(self.client(i)))
            .collect()
    }

    pub fn gateway_ip(&self) -> IpAddr {
        IpAddr::V4(self.gateway_addr)
    }

    /// The gateway's IPv6 address (2001:2::1, on-link /48 with the clients).
    pub fn gateway_ip6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1))
    }

    /// Gives the client namespace another source address (IPv4 in 198.18.0.0/24, IPv6 in
    /// 2001:2::/48), usable at once (no duplicate address detection).
    pub fn add_client_addr(&self, addr: IpAddr) {
        let cidr = match addr {
            IpAddr::V4(a) => format!("{a}/24"),
            IpAddr::V6(a) => format!("{a}/48"),
        };
        ip(&[
            "-n",
            &self.clients.name,
            "addr",
            "add",
            &cidr,
            "dev",
            &self.client_if,
            "nodad",
        ]);
    }
}
