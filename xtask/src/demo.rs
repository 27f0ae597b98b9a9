//! `cargo xtask demo`: the real agent on a private veth pair with the embedded default config
//! scaled down, a polite client and three flooding ones, then what was limited and a reset;
//! then API keys: a real nginx behind the agent, a keyed client over its plan getting 429s from
//! the kernel, what the operator sees, and a reset bringing the 200s back; then a quota used
//! up, topped up and given back.

use anyhow::bail;
use limiter_tests::agent::{is_bpffs, Agent, TEST_BPFFS};
use limiter_tests::gateway::{get_once, ClientPass, Nginx, Response};
use limiter_tests::netns::TestNet;
use limiter_tests::traffic::{BackgroundFlood, Receiver};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The embedded default, with limits a person can watch.
const DEMO_CONFIG: &str = "\
[limits]
rate = 20          # the embedded default is 1000/s; scaled down so the demo is readable
burst = 40         # default 2000
ipv4_prefix = 32
ipv6_prefix = 64

[agent]
max_keys = 1000000
";

/// The second part: API keys on port 8080, where nginx listens.
const HTTP_CONFIG: &str = "\
[limits]
rate = 1000        # source limits well above what the keyed clients send
burst = 2000

[http]
ports = [8080]     # cleartext HTTP/1.x to the gateway
key_headers = [\"x-api-key\", \"authorization\"]
rate = 5           # requests per second of a key without a plan
burst = 5

[[plans]]
name = \"starter\"
rate = 1
burst = 5

[[plans]]
name = \"metered\"
rate = 100
burst = 100
quota = 10         # requests per calendar minute (UTC); also \"hour\", \"day\", \"month\"
period = \"minute\"
";

/// The demo's API key tokens (made up; they never appear in any output).
const ACME_TOKEN: &str = "demo-acme-5b1e07c2";
const OTHER_TOKEN: &str = "demo-other-9d3f";
const METER_TOKEN: &str = "demo-meter-4c8a21";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted; everything the demo made was removed");
    }
    Ok(())
}

fn step(title: &str) {
    println!("\n\x1b[1m== {title}\x1b[0m");
}

/// Runs `limiter ARGS` against the agent and shows it as an operator would see it.
fn show(agent: &Agent, args: &[&str]) {
    println!("\n\x1b[36m$ limiter {}\x1b[0m", args.join(" "));
    let out = agent.cli(args);
    print!("{}", out.stdout);
    eprint!("{}", out.stderr);
}

pub fn run(bin: &Path) -> anyhow::Result<()> {
    std::env::set_var("LIMITER_BIN", bin);
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))?;
    let bpffs_was_mounted = is_bpffs(Path::new(TEST_BPFFS));

    let result = demo();
    if !bpffs_was_mounted && is_bpffs(Path::new(TEST_BPFFS)) {
        let _ = nix::mount::umount(TEST_BPFFS);
        let _ = std::fs::remove_dir(TEST_BPFFS);
    }
    result
}

fn demo() -> anyhow::Result<()> {
    step("a private network: gateway and clients in their own namespaces, joined by veth");
    let net = TestNet::new(4, 1);
    println!(
        "gateway: namespace {} (veth {}, 198.18.0.1) · clients: namespace {} (198.18.0.10–13)",
        net.gateway.name, net.gateway_if, net.clients.name
    );

    step("the agent, on the embedded default config scaled to demo-friendly limits");
    print!("{DEMO_CONFIG}");
    let agent = Agent::start(&net, Some(DEMO_CONFIG));
    println!(
        "agent running: limiter agent --iface {} --config {} --pin-path {}",
        net.gateway_if,
        agent.dir.join("limiter.toml").display(),
        agent.pin_path.display()
    );
    check_interrupted()?;

    step("198.18.0.10 sends 10 packets/s (under its limit); .11, .12 and .13 flood for 3 s");
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    let to = receiver.addr;
    let clients = net.every_client();
    let flood = BackgroundFlood::start(clients[1..].to_vec(), to);
    let polite = Arc::clone(&clients[0]);
    for _ in 0..30 {
        check_interrupted()?;
        polite.send(to);
        std::thread::sleep(Duration::from_millis(100));
    }

    step("what the operator sees while the flood goes on");
    show(&agent, &["status"]);
    show(&agent, &["list", "--exhausted"]);
    show(&agent, &["inspect", "198.18.0.11"]);
    let sent = flood.stop();
    let received = receiver.finish();
    println!(
        "\n{:<14} {:>10} {:>22}",
        "client", "sent", "reached the gateway"
    );
    for (i, client) in clients.iter().enumerate() {
        let sent = if i == 0 { 30 } else { sent.sent[i - 1] };
        let got = received.get(&client.addr).copied().unwrap_or(0);
        println!("{:<14} {sent:>10} {got:>22}", client.addr.to_string());
    }
    check_interrupted()?;

    step("give 198.18.0.11 its allowance back, while .12 and .13 keep flooding");
    let flood = BackgroundFlood::start(clients[2..].to_vec(), to);
    std::thread::sleep(Duration::from_millis(300));
    show(&agent, &["reset", "198.18.0.11"]);
    show(&agent, &["inspect", "198.18.0.11"]);
    show(&agent, &["reset", "--exhausted"]);
    drop(flood.stop());
    show(&agent, &["list", "--sort", "drops"]);
    check_interrupted()?;

    drop(agent);
    api_keys(&net)?;

    step("cleaning up: agents stopped, nginx stopped, namespaces, veth and pins removed");
    drop(net);
    println!("done");
    Ok(())
}

/// `limiter keys add NAME --plan PLAN`, the token on standard input, as an operator types it.
fn add_key(agent: &Agent, name: &str, plan: &str, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    println!("\n\x1b[36m$ printf '%s' \"$TOKEN\" | limiter keys add {name} --plan {plan}\x1b[0m");
    let mut child = std::process::Command::new(limiter_tests::limiter_bin())
        .args(["keys", "add", name, "--plan", plan, "--api-socket"])
        .arg(&agent.socket)
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(token.as_bytes())?;
    if !child.wait()?.success() {
        bail!("limiter keys add failed");
    }
    Ok(())
}

/// `count` requests with `header`, each on a connection of its own; their statuses on a line.
fn requests(net: &TestNet, from: usize, header: &str, count: usize) -> Vec<Response> {
    let from = std::net::IpAddr::V4(net.client_addrs[from]);
    let answers: Vec<Response> = (0..count)
        .map(|_| get_once(net, from, Some(header)))
        .collect();
    let statuses: Vec<String> = answers.iter().map(|r| r.status.to_string()).collect();
    println!("{}", statuses.join(" "));
    answers
}

fn api_keys(net: &TestNet) -> anyhow::Result<()> {
    step("API keys: nginx on 198.18.0.1:8080 behind the agent, [http] on that port");
    let nginx = Nginx::start(net);
    // The clients' veth needs an XDP program of its own to receive the kernel's 429s (a veth
    // drops XDP_TX frames otherwise; a real NIC does not need this).
    let _pass = ClientPass::attach(net);
    print!("{HTTP_CONFIG}");
    let agent = Agent::start(net, Some(HTTP_CONFIG));
    add_key(&agent, "acme", "starter", ACME_TOKEN)?;
    check_interrupted()?;

    step("acme (plan starter: 5 at once, then 1/s) sends 12 requests in a row");
    let acme = format!("X-API-Key: {ACME_TOKEN}");
    let answers = requests(net, 0, &acme, 12);
    if let Some(rejected) = answers.iter().find(|r| r.status == 429) {
        println!("\none of the 429s, as the client got it (from the kernel, not from nginx):");
        println!("HTTP/1.1 429 Too Many Requests");
        for (name, value) in &rejected.headers {
            println!("{name}: {value}");
        }
        println!("\n{}", String::from_utf8_lossy(&rejected.body).trim_end());
    }
    step("a key nobody registered (the [http] default: 5 at once, 5/s), as a Bearer token");
    requests(net, 1, &format!("Authorization: Bearer {OTHER_TOKEN}"), 4);
    check_interrupted()?;

    step("what the operator sees: names and fingerprints, never a token");
    show(&agent, &["keys"]);
    show(&agent, &["inspect", "key:acme"]);
    // nginx writes a request's log line just after its response.
    std::thread::sleep(Duration::from_millis(200));
    let logged = nginx.logged_statuses();
    println!(
        "\nnginx's access log: {} requests, all {}: the 429s never reached it",
        logged.len(),
        if logged.iter().all(|s| *s == 200) {
            "200"
        } else {
            "not 200"
        }
    );

    step("give acme its burst back");
    show(&agent, &["reset", "key:acme"]);
    requests(net, 0, &acme, 7);
    check_interrupted()?;

    quotas(net, &agent)?;
    drop(agent);
    drop(nginx);
    Ok(())
}

/// Quotas: a key on a plan of 10 requests a minute uses them up, gets the quota's 429, is
/// topped up and given its quota back.
fn quotas(net: &TestNet, agent: &Agent) -> anyhow::Result<()> {
    step("quotas: meter (plan metered: 10 requests a minute) sends 12 requests");
    // The demo's requests all in one calendar minute.
    let into = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        % 60;
    if into > 45 {
        println!("(waiting {} s for the next minute to start)", 60 - into);
        std::thread::sleep(Duration::from_secs(60 - into));
    }
    add_key(agent, "meter", "metered", METER_TOKEN)?;
    let meter = format!("X-API-Key: {METER_TOKEN}");
    let answers = requests(net, 2, &meter, 12);
    if let Some(rejected) = answers.iter().find(|r| r.status == 429) {
        println!(
            "
the quota's 429 (Retry-After: until the minute ends):"
        );
        for (name, value) in &rejected.headers {
            let name_lower = name.to_ascii_lowercase();
            if name_lower.starts_with("retry") || name_lower.starts_with("ratelimit") {
                println!("{name}: {value}");
            }
        }
    }
    show(agent, &["quota", "key:meter"]);
    check_interrupted()?;

    step("top it up by 5 for this minute, then give it its whole quota back");
    show(agent, &["quota", "key:meter", "--add", "5"]);
    requests(net, 2, &meter, 6);
    show(agent, &["reset", "--quota", "key:meter"]);
    requests(net, 2, &meter, 3);
    check_interrupted()
}
