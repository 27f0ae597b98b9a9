//! `limiter top`, driven the way an operator would: in a terminal (a detached tmux session of
//! 80×24), with keys sent to it and the screen read back. Three sources flood, a polite one sends
//! slowly under a rule of its own; the view must show the flooders first with drop rates, change
//! order on `s`, filter on `/`, reset the selected key after asking, say when the agent is gone
//! and come back with it, and quit on `q` leaving the terminal as it was.

use limiter_common::key::Prefix;
use limiter_tests::agent::{limiter, Agent};
use limiter_tests::netns::TestNet;
use limiter_tests::traffic::BackgroundFlood;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FLOODERS: [&str; 3] = ["198.18.0.10/32", "198.18.0.11/32", "198.18.0.12/32"];
const POLITE: &str = "198.18.0.13/32";
/// The default limit, which the flooders run into.
const RATE: u64 = 100;

/// Flooders get the default 100/s; the polite source a rule of its own, far above what it sends
/// (300/s), so that it passes more per second than any flooder and is dropped nothing.
const CONFIG: &str = "\
[limits]
rate = 100
burst = 200

[agent]
max_keys = 1024

[[rules]]
name = \"partner\"
cidr = \"198.18.0.13/32\"
action = \"limit\"
rate = 2000
burst = 4000
";

/// A private tmux server (its own socket) with one detached session; killed on drop.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        match Command::new("tmux").arg("-V").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("`tmux -V` failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(err) => panic!(
                "this test runs `limiter top` inside tmux, which is not available ({err}): \
                 install it (`apt-get install tmux`)"
            ),
        }
        let id = format!("limiter-top-{}", std::process::id());
        let tmux = Tmux {
            socket: id.clone(),
            session: id,
        };
        // -u: UTF-8 whatever the locale; -f /dev/null: no user config.
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.session,
            "-x",
            "80",
            "-y",
            "24",
            command,
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-u", "-f", "/dev/null", "-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux");
        assert!(
            out.status.success(),
            "tmux {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn capture(&self) -> Screen {
        Screen(self.run(&["capture-pane", "-p", "-t", &self.session]))
    }

    /// Keys by their tmux names: `s`, `Enter`, `Escape`, `Home` …
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend(keys);
        self.run(&args);
    }

    /// Text typed as is.
    fn type_text(&self, text: &str) {
        self.run(&["send-keys", "-t", &self.session, "-l", text]);
    }

    /// Reads the screen until `check` holds (or fails the test after 20 s, showing the screen).
    fn wait_for(&self, what: &str, check: impl Fn(&Screen) -> bool) -> Screen {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.capture();
            if check(&screen) {
                println!("--- {what}:\n{}", screen.0);
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s for: {what}; the screen:\n{}",
                screen.0
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// What the pane shows.
struct Screen(String);

/// One row of the key table: its cells by column title.
#[derive(Debug)]
struct KeyRow {
    key: String,
    selected: bool,
    cells: HashMap<String, String>,
}

impl KeyRow {
    /// A rate or count column as a number ("12.3k" → 12300); none for "-" or a missing column.
    fn number(&self, column: &str) -> Option<f64> {
        let text = self.cells.get(column)?;
        let (digits, scale) = match text.chars().last()? {
            'k' => (&text[..text.len() - 1], 1e3),
            'M' => (&text[..text.len() - 1], 1e6),
            'G' => (&text[..text.len() - 1], 1e9),
            _ => (text.as_str(), 1.0),
        };
        digits.parse::<f64>().ok().map(|v| v * scale)
    }
}

impl Screen {
    fn contains(&self, text: &str) -> bool {
        self.0.contains(text)
    }

    /// The rows of the key table, top to bottom.
    fn rows(&self) -> Vec<KeyRow> {
        let mut lines = self.0.lines();
        let Some(header) = lines
            .by_ref()
            .find(|l| l.split_whitespace().next() == Some("KEY"))
        else {
            return Vec::new();
        };
        let titles: Vec<String> = header
            .split_whitespace()
            .map(|t| t.trim_end_matches('▼').to_owned())
            .collect();
        let mut rows = Vec::new();
        for line in lines {
            let mut tokens: Vec<&str> = line.split_whitespace().collect();
            let selected = tokens.first() == Some(&">");
            if selected {
                tokens.remove(0);
            }
            match tokens.first() {
                Some(key) if key.parse::<Prefix>().is_ok() => {}
                _ => break,
            }
            rows.push(KeyRow {
                key: tokens[0].to_owned(),
                selected,
                cells: titles
                    .iter()
                    .cloned()
                    .zip(tokens.iter().map(|t| t.to_string()))
                    .collect(),
            });
        }
        rows
    }

    fn keys(&self) -> Vec<String> {
        self.rows().into_iter().map(|r| r.key).collect()
    }
}

fn passed(agent: &Agent, key: &str) -> u64 {
    let info = agent.json(&["inspect", key]);
    info["passed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no passed in {info}"))
}

#[test]
fn top_shows_the_flooders_sorts_filters_resets_and_quits() {
    limiter_tests::require_root();
    let net = TestNet::new(4, 2);
    let mut agent = Agent::start(&net, Some(CONFIG));
    let to = SocketAddr::new(net.gateway_ip(), 9);
    let clients = (0..3).map(|i| Arc::new(net.client(i))).collect();
    let flood = BackgroundFlood::start(clients, to);
    // The polite source: 3 packets every 10 ms.
    let polite = net.client(3);
    let stop = Arc::new(AtomicBool::new(false));
    let polite_thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                polite.burst(to, 3);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let command = format!(
        "'{}' top --api-socket '{}'; echo \"top exited with status $?\"; sleep 600",
        limiter_tests::limiter_bin().display(),
        agent.socket.display()
    );
    let tmux = Tmux::start(&command);

    // The flooders first, each with a drop rate; the polite source below them, dropped nothing.
    let screen = tmux.wait_for("the flooders first, with drop rates", |s| {
        let rows = s.rows();
        let first: BTreeSet<&str> = rows.iter().take(3).map(|r| r.key.as_str()).collect();
        let polite = rows.iter().find(|r| r.key == POLITE);
        first == BTreeSet::from(FLOODERS)
            && rows
                .iter()
                .take(3)
                .all(|r| r.number("DROP/S").is_some_and(|d| d > 0.0))
            && polite.is_some_and(|p| {
                p.number("DROP/S") == Some(0.0) && p.number("PASS/S").is_some_and(|r| r > 0.0)
            })
    });
    assert!(screen.contains("DROP/S▼"), "{}", screen.0);
    assert!(screen.contains("sort: drop/s"), "{}", screen.0);
    assert!(screen.contains("exhausted"), "{}", screen.0);
    assert!(
        screen.contains("q quit"),
        "the help line is cut:\n{}",
        screen.0
    );
    assert!(screen.rows()[0].selected, "the first row starts selected");
    assert_eq!(screen.0.lines().count(), 24);

    // `s`: by pass rate, where the polite source (300/s under its own rule) beats every flooder
    // (100/s); then dropped, passed and back.
    tmux.keys(&["s"]);
    tmux.wait_for("sorted by pass rate, the polite source first", |s| {
        s.contains("sort: pass/s")
            && s.contains("PASS/S▼")
            && !s.contains("DROP/S▼")
            && s.keys().first().map(String::as_str) == Some(POLITE)
    });
    for label in ["sort: dropped", "sort: passed", "sort: drop/s"] {
        tmux.keys(&["s"]);
        tmux.wait_for(label, |s| s.contains(label));
    }

    // `/` with something that is not an address: an error line; Esc clears it.
    tmux.keys(&["/"]);
    tmux.type_text("198.18.0.x");
    tmux.keys(&["Enter"]);
    tmux.wait_for("an error for a bad filter", |s| {
        s.contains("filter: 198.18.0.x") && s.contains("not a valid key")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for("the filter prompt gone", |s| {
        let keys = s.keys();
        !s.contains("not a valid key")
            && s.contains("sort: drop/s")
            && FLOODERS
                .iter()
                .chain([&POLITE])
                .all(|k| keys.iter().any(|x| x == k))
    });

    // `/` with a prefix: only the keys inside it.
    tmux.keys(&["/"]);
    tmux.type_text("198.18.0.10/31");
    tmux.keys(&["Enter"]);
    tmux.wait_for("only 198.18.0.10/31", |s| {
        let keys: BTreeSet<String> = s.keys().into_iter().collect();
        s.contains("filter: 198.18.0.10/31")
            && keys == BTreeSet::from(["198.18.0.10/32".to_owned(), "198.18.0.11/32".to_owned()])
    });

    // Select the first row, `r`, `y`: that key gets a full bucket, so it passes more than its
    // limit could ever let through without a reset (`rate × t + 1` while exhausted).
    tmux.keys(&["Home"]);
    let screen = tmux.wait_for("the first row selected", |s| {
        s.rows().first().is_some_and(|r| r.selected)
    });
    let key = screen.rows()[0].key.clone();
    let start = Instant::now();
    let before = passed(&agent, &key);
    tmux.keys(&["r"]);
    tmux.wait_for("the reset question", |s| {
        s.contains(&format!("reset {key}? (y/n)"))
    });
    tmux.keys(&["y"]);
    tmux.wait_for("the reset done", |s| {
        s.contains(&format!("reset {key} to a full bucket"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = passed(&agent, &key);
    let elapsed = start.elapsed().as_secs_f64();
    let bound = (RATE as f64 * elapsed).ceil() as u64 + 1;
    assert!(
        after - before > bound,
        "{key} passed {} in {elapsed:.2} s across the reset: no more than an exhausted key may \
         without one ({bound}), so it was not reset",
        after - before
    );

    // The agent goes away: the view says so and keeps trying; it comes back: so does the view.
    agent.stop();
    tmux.wait_for("the agent shown unreachable", |s| {
        s.contains("agent unreachable") && s.contains("no agent is listening")
    });
    agent.spawn();
    tmux.wait_for("the view back with the agent", |s| {
        !s.contains("agent unreachable") && s.rows().len() == 2
    });

    // `q`: the view exits with status 0 and the shell's screen is back.
    tmux.keys(&["q"]);
    tmux.wait_for("top exited", |s| {
        s.contains("top exited with status 0") && !s.contains("sort:")
    });

    stop.store(true, Ordering::Relaxed);
    polite_thread.join().unwrap();
    flood.stop();
    // Still usable from the plain CLI afterwards.
    let out = limiter(&["status", "--api-socket", agent.socket.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
}
