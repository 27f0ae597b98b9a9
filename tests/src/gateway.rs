//! A real API gateway on the test bed: nginx (Debian `nginx-light`) in the gateway namespace,
//! serving a small JSON answer and writing its access log; HTTP/1.1 clients in the clients'
//! namespace, over TCP from any client address; and the bare `XDP_PASS` the clients' veth end
//! needs so that frames the limiter answers with (`XDP_TX`) are received there (a veth drops
//! `XDP_TX` frames when its peer has no XDP program).

use crate::netns::TestNet;
use aya::programs::{Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port nginx listens on, on 198.18.0.1 and 2001:2::1.
pub const GATEWAY_PORT: u16 = 8080;
/// What nginx answers with: the file `/ok.json`.
pub const OK_BODY: &str = "{\"ok\":true}\n";

/// nginx in the gateway namespace; stopped (and its files removed) on drop.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

/// What an nginx of the test bed does besides serving `/ok.json` on the gateway's port.
#[derive(Clone, Debug, Default)]
pub struct NginxOptions {
    /// Lines in `http { }` (a `limit_req_zone` …).
    pub http: String,
    /// Lines in `location / { }` (a `limit_req` …).
    pub location: String,
    /// Listen on 127.0.0.1:PORT instead of the gateway's addresses (behind a proxy).
    pub loopback_port: Option<u16>,
    /// Pin the worker to this CPU.
    pub cpu: Option<usize>,
    /// `listen … deferred` (TCP_DEFER_ACCEPT): a connection is accepted only once its first
    /// data arrives.
    pub deferred: bool,
}

impl Nginx {
    /// Starts nginx with one worker and waits until it accepts connections.
    pub fn start(net: &TestNet) -> Nginx {
        Nginx::start_with(net, &NginxOptions::default())
    }

    /// Starts nginx with `options`.
    pub fn start_with(net: &TestNet, options: &NginxOptions) -> Nginx {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        std::fs::create_dir_all(root.join("www")).unwrap();
        std::fs::write(root.join("www/ok.json"), OK_BODY).unwrap();
        let deferred = if options.deferred { " deferred" } else { "" };
        let listen = match options.loopback_port {
            Some(port) => format!("listen 127.0.0.1:{port}{deferred};"),
            None => format!(
                "listen 198.18.0.1:{GATEWAY_PORT}{deferred};\n        listen [2001:2::1]:{GATEWAY_PORT}{deferred};"
            ),
        };
        let affinity = match options.cpu {
            Some(cpu) => format!("worker_cpu_affinity {};", cpu_mask(cpu)),
            None => String::new(),
        };
        let conf = format!(
            "user root;
worker_processes 1;
{affinity}
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    {http}
    server {{
        {listen}
        root {root}/www;
        default_type application/json;
        location / {{
            {location}
        }}
    }}
}}
",
            root = root.display(),
            http = options.http,
            location = options.location,
        );
        std::fs::write(root.join("nginx.conf"), conf).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &net.gateway.name, "nginx", "-p"])
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running nginx (Debian nginx-light; `cargo xtask setup` installs it)");
        let mut nginx = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (host, port) = match options.loopback_port {
            Some(port) => ("127.0.0.1", port),
            None => ("198.18.0.1", GATEWAY_PORT),
        };
        loop {
            let up = net
                .gateway
                .run(move || std::net::TcpStream::connect((host, port)).is_ok());
            if up {
                return nginx;
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let mut err = String::new();
                let _ = nginx.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("nginx exited ({status}): {err}{}", nginx.error_log());
            }
            if Instant::now() >= deadline {
                let listening = Command::new("ip")
                    .args(["netns", "exec", &net.gateway.name, "ss", "-tln"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                panic!(
                    "nginx does not accept connections on {host}:{port} after 10 s: {}\nlistening \
                     in {}: {listening}",
                    nginx.error_log(),
                    net.gateway.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// The statuses in the access log once it has at least `n` (nginx writes a request's line
    /// after its response: the last one may take a moment), or after 3 s.
    pub fn logged_statuses_once(&self, n: usize) -> Vec<u16> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.logged_statuses().len() < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.logged_statuses()
    }

    /// The statuses of the requests in the access log, in order.
    pub fn logged_statuses(&self) -> Vec<u16> {
        // `… "GET /ok.json HTTP/1.1" 200 12 "-" "-"`: the status follows the quoted request.
        self.access_log()
            .lines()
            .filter_map(|line| {
                line.split('"')
                    .nth(2)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The worker processes' pids (children of the master).
    pub fn workers(&self) -> Vec<u32> {
        let master = self.child.id();
        let children = std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
            .unwrap_or_default();
        children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

/// nginx's `worker_cpu_affinity` mask of one CPU: `1` for CPU 0, `10` for CPU 1, …
fn cpu_mask(cpu: usize) -> String {
    let mut mask = "1".to_owned();
    mask.push_str(&"0".repeat(cpu));
    mask
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (a SIGKILL would orphan them); SIGKILL to
    /// everything left after 5 s.
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let workers = self.workers();
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for worker in workers {
            let _ = kill(Pid::from_raw(worker as i32), Signal::SIGKILL);
        }
    }
}

/// A bare `XDP_PASS` on the clients' veth end, detached on drop.
pub struct ClientPass {
    _ebpf: Ebpf,
}

impl ClientPass {
    pub fn attach(net: &TestNet) -> ClientPass {
        let path = crate::object::object_path().with_file_name("bare_pass");
        let iface = net.client_if.clone();
        let ebpf = net.clients.run(move || {
            let mut ebpf = EbpfLoader::new()
                .load_file(&path)
                .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
            let program: &mut Xdp = ebpf
                .program_mut("bare_pass")
                .expect("the bare_pass program")
                .try_into()
                .unwrap();
            program.load().expect("loading bare_pass");
            program
                .attach(&iface, XdpMode::Driver)
                .unwrap_or_else(|e| panic!("attaching bare_pass to {iface}: {e}"));
            ebpf
        });
        ClientPass { _ebpf: ebpf }
    }
}

/// An HTTP response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (the first of that name), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A client connection from `from` to the gateway, made in the clients' namespace.
pub struct Connection {
    stream: std::net::TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    /// Connects from `from` (a client address) to the gateway's port.
    pub fn open(net: &TestNet, from: IpAddr) -> Connection {
        let to: IpAddr = match from {
            IpAddr::V4(_) => net.gateway_ip(),
            IpAddr::V6(_) => net.gateway_ip6(),
        };
        Connection::open_in(&net.clients.name, from, to)
    }

    /// Connects from `from` to `to`'s gateway port, in the namespace named `netns`.
    pub fn open_in(netns: &str, from: IpAddr, to: IpAddr) -> Connection {
        let socket = crate::netns::run_in(netns, move || {
            let domain = if from.is_ipv4() {
                Domain::IPV4
            } else {
                Domain::IPV6
            };
            let socket = Socket::new(domain, Type::STREAM, None).expect("a TCP socket");
            socket
                .bind(&SocketAddr::new(from, 0).into())
                .unwrap_or_else(|e| panic!("binding to {from}: {e}"));
            socket
                .connect_timeout(
                    &SocketAddr::new(to, GATEWAY_PORT).into(),
                    Duration::from_secs(5),
                )
                .unwrap_or_else(|e| panic!("connecting to {to}:{GATEWAY_PORT}: {e}"));
            socket
        });
        let stream: std::net::TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Connection {
            stream,
            buffer: Vec::new(),
        }
    }

    /// Like [`Connection::get`], `None` when the connection fails or closes first.
    pub fn try_get(&mut self, header: Option<&str>) -> Option<Response> {
        self.exchange(header).ok()
    }

    /// Sends `GET /ok.json` with `header` (such as `X-API-Key: T`) and reads the response;
    /// panics, saying what was read, when the connection fails or closes first.
    pub fn get(&mut self, header: Option<&str>) -> Response {
        self.exchange(header).unwrap_or_else(|e| {
            panic!(
                "{e}; read so far: {:?}",
                String::from_utf8_lossy(&self.buffer)
            )
        })
    }

    fn exchange(&mut self, header: Option<&str>) -> std::io::Result<Response> {
        let mut request =
            "GET /ok.json HTTP/1.1\r\nHost: gw\r\nUser-Agent: limiter-tests\r\n".to_owned();
        if let Some(header) = header {
            request.push_str(header);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        self.stream.write_all(request.as_bytes())?;
        self.read_response()
    }

    fn read_response(&mut self) -> std::io::Result<Response> {
        let mut chunk = [0u8; 4096];
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut fields);
            if let Ok(httparse::Status::Complete(head)) = parsed.parse(&self.buffer) {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).trim().to_owned(),
                        )
                    })
                    .collect();
                let status = parsed.code.unwrap_or(0);
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                if self.buffer.len() >= head + length {
                    let body = self.buffer[head..head + length].to_vec();
                    self.buffer.drain(..head + length);
                    return Ok(Response {
                        status,
                        headers,
                        body,
                    });
                }
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the connection closed before a whole response",
                ));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `bytes` as they are (not a request: a TLS ClientHello, say).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("sending");
    }

    /// Whether the server closed the connection (EOF within 5 s, nothing more sent).
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }
}

/// `GET /ok.json` on a connection of its own.
pub fn get_once(net: &TestNet, from: IpAddr, header: Option<&str>) -> Response {
    Connection::open(net, from).get(header)
}

/// Sockets of the gateway's port in the gateway namespace other than its listening ones (as
/// `ss` lists them).
pub fn gateway_connections(net: &TestNet) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.gateway.name, "ss", "-Htan"])
        .output()
        .expect("running ss (iproute2)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.starts_with("LISTEN"))
        .filter(|line| line.contains(&format!(":{GATEWAY_PORT} ")))
        .map(str::to_owned)
        .collect()
}
