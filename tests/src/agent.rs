//! The real agent, run in the gateway namespace, and the real CLI talking to it.

use crate::netns::TestNet;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A bpffs mounted in the host's mount namespace, so pins survive `ip netns exec` (which mounts a
/// fresh /sys). Shared by every agent the tests start; each gets a directory of its own.
pub const TEST_BPFFS: &str = "/run/limiter-tests/bpffs";

/// Whether `path` is on a BPF filesystem (`BPF_FS_MAGIC`).
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type().0 as u32 == 0xcafe_4a11)
}

/// Mounts a bpffs at `dir` unless one is there already.
pub fn ensure_bpffs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    if !is_bpffs(dir) {
        nix::mount::mount(
            Some("bpf"),
            dir,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mounting a bpffs at {}: {e}", dir.display()));
    }
}

/// What a `limiter` command printed, and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "limiter failed: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs the `limiter` binary with `args`.
pub fn limiter(args: &[&str]) -> CliOutput {
    let out = Command::new(crate::limiter_bin())
        .args(args)
        .output()
        .expect("running limiter");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running `limiter agent` in the gateway namespace. Stopped with SIGTERM on drop; its pins are
/// removed then too unless `keep_pins` was called.
pub struct Agent {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub pin_path: PathBuf,
    pub log_path: PathBuf,
    netns: String,
    iface: String,
    config: Option<PathBuf>,
    /// More arguments for `limiter agent`, given at every start.
    extra_args: Vec<String>,
}

static NEXT_AGENT: AtomicU32 = AtomicU32::new(0);

impl Agent {
    /// Starts the agent on the gateway's veth end with `config` (TOML text; `None`: the embedded
    /// default) and waits until its API answers.
    pub fn start(net: &TestNet, config: Option<&str>) -> Agent {
        Agent::start_with_args(net, config, &[])
    }

    /// Like [`Agent::start`], with more arguments for `limiter agent` (`--metrics …`).
    pub fn start_with_args(net: &TestNet, config: Option<&str>, extra_args: &[&str]) -> Agent {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_AGENT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("limiter-test-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bpffs = Path::new(TEST_BPFFS);
        ensure_bpffs(bpffs);
        let config_path = config.map(|text| {
            let path = dir.join("limiter.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut agent = Agent {
            child: None,
            socket: dir.join("limiter.sock"),
            pin_path: bpffs.join(&id),
            log_path: dir.join("agent.log"),
            dir,
            netns: net.gateway.name.clone(),
            iface: net.gateway_if.clone(),
            config: config_path,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        agent.spawn();
        agent
    }

    /// Starts the agent process (again, after `stop` or `kill`), keeping pins and socket path.
    pub fn spawn(&mut self) {
        self.spawn_unchecked();
        self.wait_ready();
    }

    /// `ip netns exec GATEWAY limiter agent …` with this agent's arguments.
    fn command(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(crate::limiter_bin())
            .args(["agent", "--iface", &self.iface, "--api-socket"])
            .arg(&self.socket)
            .arg("--pin-path")
            .arg(&self.pin_path)
            .arg("--state-dir")
            .arg(self.dir.join("state"));
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        cmd.args(&self.extra_args);
        cmd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}) before serving its API:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not serve its API in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// `limiter keys add NAME [--plan P]` with the token on standard input, as an operator
    /// gives it: exit status, stdout, stderr.
    pub fn add_key(&self, name: &str, plan: Option<&str>, token: &str) -> (i32, String, String) {
        let socket = self.socket.to_str().unwrap().to_owned();
        let mut args = vec!["keys", "add", name, "--api-socket", &socket];
        if let Some(plan) = plan {
            args.extend(["--plan", plan]);
        }
        let mut child = Command::new(crate::limiter_bin())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{token}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a `limiter` subcommand against this agent.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let socket = self.socket.to_str().unwrap();
        let mut all = args.to_vec();
        all.extend(["--api-socket", socket]);
        limiter(&all)
    }

    /// Runs a subcommand with `--json` and returns its parsed output (asserting success).
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        self.cli(&all).json()
    }

    /// SIGTERM, as an operator's `systemctl stop` would.
    pub fn stop(&mut self) {
        self.signal(Signal::SIGTERM);
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
    }

    /// SIGHUP: the agent re-reads its config file and keeps running.
    pub fn hangup(&self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP);
        }
    }

    /// SIGSTOP: the agent freezes (the XDP program goes on without it) until [`Agent::resume`].
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP);
        }
    }

    /// SIGCONT after [`Agent::pause`].
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
    }

    /// Waits for the agent to exit by itself (it refused to start, say); its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child
            .take()
            .and_then(|mut c| c.wait().ok())
            .and_then(|s| s.code())
    }

    /// The config file the agent was started with (`None`: the embedded default).
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Rewrites the agent's config file (for a reload, or the next start).
    pub fn write_config(&self, text: &str) {
        std::fs::write(
            self.config_path().expect("started with a config file"),
            text,
        )
        .unwrap();
    }

    /// The gateway interface the agent is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The agent's `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Runs another `limiter agent` in this agent's namespace on its interface with
    /// `pin_path` and `api_socket` (metrics on a port of its own), for starts that must be
    /// refused: how it exited and what it said. One that did start is stopped after 20 s (and
    /// exits 0, which the caller's assertion then catches).
    pub fn run_other(&self, pin_path: &Path, api_socket: &Path) -> CliOutput {
        let within = Duration::from_secs(20);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(crate::limiter_bin())
            .args(["agent", "--iface", &self.iface, "--metrics", "127.0.0.1:0"])
            .arg("--pin-path")
            .arg(pin_path)
            .arg("--api-socket")
            .arg(api_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting limiter agent");
        let deadline = Instant::now() + within;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let out = child.wait_with_output().unwrap();
        CliOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Starts the agent process without waiting for its API (for starts that must fail).
    pub fn spawn_unchecked(&mut self) {
        assert!(self.child.is_none(), "the agent is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = self.command();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the agent");
        self.child = Some(child);
    }

    fn signal(&mut self, signal: Signal) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the agent, so the child's pid is the agent's.
            let _ = kill(Pid::from_raw(child.id() as i32), signal);
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.pin_path);
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("agent log ({}):\n{}", self.log_path.display(), self.log());
        }
    }
}
