//! A real Redis (Debian's `redis-server`) for the fleet tests: in a directory of its own,
//! listening on a Unix socket only (no TCP port), so that agents in several network namespaces
//! of this machine share it through the file system, persisting nothing. It can be stopped and
//! started again on the same socket (Redis down in the middle of a flood); it is killed and its
//! directory removed when the guard is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Debian package puts the server and its client.
pub const REDIS_SERVER_BIN: &str = "/usr/bin/redis-server";
pub const REDIS_CLI_BIN: &str = "/usr/bin/redis-cli";

pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra configuration lines (e.g. `requirepass …`), given at every start.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`["--requirepass", "s3cret"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        crate::require_root();
        assert!(
            Path::new(REDIS_SERVER_BIN).exists(),
            "{REDIS_SERVER_BIN} is missing: `cargo xtask setup` installs the Debian package \
             redis-server"
        );
        let mut server = RedisServer {
            child: None,
            dir: tempfile::tempdir().expect("a temporary directory for redis-server"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.resume();
        server
    }

    /// The Unix socket it listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// Its URL as `[fleet] redis` takes it.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Stops it (SIGKILL: as a crash or a network cut looks to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it again on the same socket (empty: it persists nothing), and waits until it
    /// answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "redis-server runs already");
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new(REDIS_SERVER_BIN)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer in 10 s:\n{}",
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
    }

    /// `redis-cli -s SOCKET ARGS…` (with the password of `--requirepass`, if any): its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(REDIS_CLI_BIN);
        cmd.arg("-s").arg(self.socket());
        if let Some(i) = self.extra.iter().position(|a| a == "--requirepass") {
            cmd.env("REDISCLI_AUTH", &self.extra[i + 1]);
        }
        let out = cmd.args(args).output().expect("running redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
