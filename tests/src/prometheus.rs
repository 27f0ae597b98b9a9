//! A real Prometheus (Debian's `prometheus`) in a test namespace, scraping an agent's
//! `--metrics` there every second, and its HTTP query API; and the text it scrapes.
//!
//! Its data lives in a temporary directory; the server is killed and the directory removed when
//! the guard is dropped.

use crate::netns::Netns;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Debian package puts the server.
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";

/// `curl ARGS…` run inside `ns` (where the agent's loopback is): its output; panics, with
/// curl's error, when the request fails.
pub fn curl_in(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "curl",
            "-sS",
            "--fail-with-body",
            "--max-time",
            "10",
        ])
        .args(args)
        .output()
        .expect("running curl (Debian package curl; `cargo xtask setup` installs it)");
    assert!(
        out.status.success(),
        "curl {args:?} in {}: {}{}",
        ns.name,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's Prometheus text at `http://ADDR/metrics` in `ns`.
pub fn metrics_text(ns: &Netns, addr: &str) -> String {
    curl_in(ns, &[&format!("http://{addr}/metrics")])
}

/// The value of the sample `line_start` (name and labels as exposed, e.g.
/// `limiter_quota_alerts_total{threshold="50"}`) in `text`, if exposed.
pub fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    child: Child,
    ns: String,
    /// Its query API, `http://127.0.0.1:PORT`, in the namespace.
    pub url: String,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, listening on 127.0.0.1:`port` there and scraping
    /// `http://TARGET/metrics` every second; waits until it answers.
    pub fn start(ns: &Netns, port: u16, target: &str) -> Prometheus {
        assert!(
            std::path::Path::new(PROMETHEUS_BIN).exists(),
            "{PROMETHEUS_BIN} is missing: install the Debian package prometheus (`cargo xtask \
             setup` does)"
        );
        let dir = std::env::temp_dir().join(format!("limiter-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: limiter\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, PROMETHEUS_BIN])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        let mut prometheus = Prometheus {
            child,
            ns: ns.name.clone(),
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new("ip")
                .args(["netns", "exec", &prometheus.ns, "curl", "-sf"])
                .arg(format!("{}/-/ready", prometheus.url))
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return prometheus;
            }
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prometheus.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready in 30 s:\n{}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query through the HTTP API: its `data.result` (asserting the query was
    /// accepted).
    pub fn query(&self, ns: &Netns, expr: &str) -> Vec<Value> {
        let body = curl_in(
            ns,
            &[
                "--data-urlencode",
                &format!("query={expr}"),
                &format!("{}/api/v1/query", self.url),
            ],
        );
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("prometheus answered no JSON ({e}): {body}"));
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{expr}: no result in {answer}"))
            .clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // `ip netns exec` execs prometheus: the child's pid is the server's.
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("prometheus log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
