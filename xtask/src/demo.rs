//! `cargo xtask demo`: the real agent on a private veth pair with the embedded default config
//! scaled down, a polite client and three flooding ones, then what was limited and a reset.

use anyhow::bail;
use limiter_tests::agent::{is_bpffs, Agent, TEST_BPFFS};
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

    step("cleaning up: agent stopped, namespaces, veth and pins removed");
    drop(agent);
    drop(net);
    println!("done");
    Ok(())
}
