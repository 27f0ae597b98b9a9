//! Exhaustion events end to end: keys exhausted by real traffic, the agent's log lines, and the
//! JSON alerts a webhook receiver — a tiny HTTP server in the gateway's namespace, where the
//! agent runs — gets: naming exactly the sources that flood, bounded when ten thousand keys are
//! exhausted at once, and harmless when the receiver is down.

use limiter_tests::agent::Agent;
use limiter_tests::netns::TestNet;
use limiter_tests::traffic::{ipv4_udp_frame, BackgroundFlood, RawSender, Receiver};
use limiter_tests::webhook::{alerts, total, Post, WebhookReceiver};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The random sources (198.19.0.0/16) under a rule of their own, burst 1: a source's first
/// packet passes and exhausts its key, its second is dropped; alerts go to `webhook`.
fn random_sources_config(webhook: &WebhookReceiver) -> String {
    format!(
        "[limits]\nrate = 1000\nburst = 1000\n\n\
         [[rules]]\nname = \"random\"\ncidr = \"198.19.0.0/16\"\naction = \"limit\"\nrate = 1\nburst = 1\n\n\
         [alerts]\nwebhook = \"{}\"\n",
        webhook.url()
    )
}

fn log_lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

#[test]
fn flooding_sources_are_alerted_once_each_and_a_polite_one_not_at_all() {
    let net = TestNet::new(4, 1);
    let webhook = WebhookReceiver::start(&net.gateway);
    let config = format!(
        "[limits]\nrate = 10\nburst = 20\n\n[alerts]\nwebhook = \"{}\"\n",
        webhook.url()
    );
    let agent = Agent::start(&net, Some(&config));
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());
    let clients = net.every_client();

    // Three sources send 200 packets back to back (far beyond the burst of 20); the fourth sends
    // 5, within its burst.
    let start = Instant::now();
    for flooder in &clients[..3] {
        assert_eq!(flooder.burst(receiver.addr, 200), 200);
    }
    assert_eq!(clients[3].burst(receiver.addr, 5), 5);
    let flooders: BTreeSet<String> = net.client_addrs[..3]
        .iter()
        .map(|a| format!("{a}/32"))
        .collect();

    let posts = webhook.wait_for(Duration::from_secs(3), |posts| {
        alerts(posts).len() >= flooders.len()
    });
    let latency = posts.last().map(|p| p.at - start);
    // Anything late would show up now.
    std::thread::sleep(Duration::from_millis(1500));
    let posts = webhook.posts();
    let alerts = alerts(&posts);
    let keys: Vec<String> = alerts
        .iter()
        .map(|a| a["key"].as_str().expect("alert without key").to_owned())
        .collect();
    assert_eq!(
        keys.iter().cloned().collect::<BTreeSet<_>>(),
        flooders,
        "alerts name exactly the flooding sources: {posts:#?}"
    );
    assert_eq!(keys.len(), 3, "one alert per transition: {keys:?}");
    let latency = latency.expect("no alert arrived");
    assert!(
        latency < Duration::from_secs(2),
        "the alerts took {latency:?}"
    );
    for alert in &alerts {
        assert_eq!(alert["rule"], "default", "{alert}");
        assert_eq!(alert["dry_run"], false, "{alert}");
        assert_eq!(alert["interface"], net.gateway_if.as_str(), "{alert}");
        let at = alert["at"].as_str().expect("alert without at");
        assert!(
            at.len() == "2025-01-01T00:00:00.000Z".len()
                && at.ends_with('Z')
                && at.as_bytes()[10] == b'T',
            "at is not RFC 3339: {at}"
        );
    }
    for post in &posts {
        assert_eq!(post.path, "/limiter");
        assert_eq!(post.content_type, "application/json");
        assert_eq!(
            (&post.body["dropped"], &post.body["suppressed"]),
            (&Value::from(0), &Value::from(0)),
            "nothing to drop or suppress for three keys"
        );
    }
    drop(receiver);

    let log = agent.log();
    let lines = log_lines(&log, "key exhausted");
    assert_eq!(lines.len(), 3, "one log line per exhausted key:\n{log}");
    for key in &flooders {
        assert!(
            lines
                .iter()
                .any(|l| l.contains(&format!("key={key}")) && l.contains("rule=default")),
            "no structured line for {key}:\n{log}"
        );
    }
    assert!(
        !log.contains("198.18.0.13/32"),
        "the polite source was logged:\n{log}"
    );
}

#[test]
fn ten_thousand_keys_exhausted_at_once_make_a_bounded_number_of_requests() {
    const SOURCES: u32 = 10_000;
    let net = TestNet::new(0, 1);
    let webhook = WebhookReceiver::start(&net.gateway);
    // The random sources under a rule of their own: burst 1, so a source's first packet passes
    // and exhausts its key, and its second is dropped. (Under the default's roomy limit, what
    // else the link carries, such as MLD reports, exhausts nothing.)
    let config = random_sources_config(&webhook);
    let agent = Agent::start(&net, Some(&config));
    let sender = RawSender::new(&net.clients, &net.client_if);
    let gateway = Ipv4Addr::new(198, 18, 0, 1);

    let start = Instant::now();
    let mut refused = 0u32;
    for i in 0..SOURCES {
        let source = Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8);
        let frame = ipv4_udp_frame(source, gateway, 9000);
        for _ in 0..2 {
            refused += !sender.send(&frame) as u32;
        }
    }
    let sending = start.elapsed();

    // What happened, by the datapath's own account: the keys that had a packet dropped.
    let keys = agent.json(&["list"]);
    let exhausted = keys
        .as_array()
        .expect("list --json is an array")
        .iter()
        .filter(|k| k["key"].as_str().is_some_and(|k| k.starts_with("198.19.")))
        .filter(|k| k["dropped"].as_u64().unwrap_or(0) > 0)
        .count() as u64;
    assert!(
        exhausted > u64::from(SOURCES) * 9 / 10,
        "only {exhausted} of {SOURCES} sources had a packet dropped ({refused} frames refused)"
    );

    // Every transition is accounted for: alerted, dropped by the agent's bounded queue, or
    // suppressed by the kernel's bound.
    let accounted = |posts: &[Post]| {
        alerts(posts).len() as u64 + total(posts, "dropped") + total(posts, "suppressed")
    };
    webhook.wait_for(Duration::from_secs(15), |posts| {
        accounted(posts) >= exhausted
    });
    let settled = start.elapsed();
    // Anything more (there should be nothing) would show up now.
    std::thread::sleep(Duration::from_millis(1500));
    let posts = webhook.posts();
    let alerted = alerts(&posts);
    let (dropped, suppressed) = (total(&posts, "dropped"), total(&posts, "suppressed"));
    eprintln!(
        "{exhausted} keys exhausted in {sending:?}: {} alerts in {} requests, {dropped} dropped, \
         {suppressed} suppressed (settled after {settled:?})",
        alerted.len(),
        posts.len()
    );
    assert_eq!(
        accounted(&posts),
        exhausted,
        "alerts {} + dropped {dropped} + suppressed {suppressed} != {exhausted} exhausted keys",
        alerted.len()
    );
    assert!(posts.len() <= 30, "{} requests", posts.len());
    assert!(
        alerted.len() <= 500 * posts.len(),
        "a request carries at most 500 alerts"
    );
    let distinct: BTreeSet<&str> = alerted.iter().filter_map(|a| a["key"].as_str()).collect();
    assert_eq!(distinct.len(), alerted.len(), "a key was alerted twice");
    assert!(!alerted.is_empty(), "no alert at all");
    assert!(
        alerted.iter().all(|a| a["rule"] == "random"
            && a["key"].as_str().is_some_and(|k| k.starts_with("198.19."))),
        "{alerted:?}"
    );
    assert!(
        suppressed + dropped > 0,
        "10 000 events at once went through unbounded"
    );
    // Requests are spaced out (at most one per 500 ms), not fired in a burst.
    let mut times: Vec<Instant> = posts.iter().map(|p| p.at).collect();
    times.sort();
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(400),
            "two requests {:?} apart",
            pair[1] - pair[0]
        );
    }

    // The log stays readable: at most 20 keys a second one by one, the rest summed up.
    let log = agent.log();
    let one_by_one = log_lines(&log, "key exhausted").len();
    let seconds = settled.as_secs() + 2;
    assert!(
        one_by_one as u64 <= 20 * seconds,
        "{one_by_one} lines in {seconds} s:\n{log}"
    );
    assert!(
        log.contains("more keys became exhausted in the last second"),
        "no summary line:\n{log}"
    );
    assert!(
        log.contains("not emitted by the datapath") || suppressed == 0,
        "the kernel's suppression is not logged:\n{log}"
    );
}

#[test]
fn a_webhook_that_is_down_blocks_neither_the_api_nor_enforcement() {
    const RATE: u64 = 10;
    const BURST: u64 = 20;
    let net = TestNet::new(1, 1);
    // A port nobody listens on.
    let port = net.gateway.run(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let config = format!(
        "[limits]\nrate = {RATE}\nburst = {BURST}\n\n\
         [[rules]]\nname = \"random\"\ncidr = \"198.19.0.0/16\"\naction = \"limit\"\nrate = 1\nburst = 1\n\n\
         [alerts]\nwebhook = \"http://127.0.0.1:{port}/limiter\"\n"
    );
    let agent = Agent::start(&net, Some(&config));
    let receiver = Receiver::start(&net.gateway, net.gateway_ip());

    // A flooding client, and new sources exhausted continuously (2 000 a second, each sending
    // two packets with burst 1) so that alerts keep coming while the sender retries.
    let start = Instant::now();
    let flooder = Arc::new(net.client(0));
    let flood = BackgroundFlood::start(vec![Arc::clone(&flooder)], receiver.addr);
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let churn = {
        let sender = RawSender::new(&net.clients, &net.client_if);
        let stop = Arc::clone(&stop.0);
        std::thread::spawn(move || {
            let gateway = Ipv4Addr::new(198, 18, 0, 1);
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let frame = ipv4_udp_frame(
                        Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8),
                        gateway,
                        9000,
                    );
                    sender.send(&frame);
                    sender.send(&frame);
                    i = i.wrapping_add(1);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let mut slowest = Duration::ZERO;
    let mut asked = 0;
    while start.elapsed() < Duration::from_secs(8) {
        let at = Instant::now();
        agent.json(&["status"]);
        slowest = slowest.max(at.elapsed());
        asked += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = agent.json(&["status"]);
    stop.0.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    let flooded = start.elapsed();
    let sent = flood.stop().sent[0];

    assert!(
        slowest < Duration::from_secs(1),
        "the API took {slowest:?} to answer while the webhook was down"
    );
    assert!(status["dropped"].as_u64().unwrap_or(0) > 0, "{status}");
    let log = agent.log();
    assert!(
        log.contains("webhook unreachable"),
        "the agent never gave a batch up:\n{log}"
    );
    assert!(
        log_lines(&log, "key exhausted").len() > 3,
        "exhaustion events stopped being logged:\n{log}"
    );
    assert!(
        log.contains("webhook queue full") || log.contains("alerts given up"),
        "{log}"
    );
    // Enforcement went on: the flooder never passed more than its bucket allows.
    let key = agent.json(&["inspect", &net.client_addrs[0].to_string()]);
    let passed = key["passed"].as_u64().unwrap();
    let bound = BURST + (RATE as f64 * (flooded.as_secs_f64() + 1.0)).ceil() as u64 + 1;
    assert!(passed <= bound, "the flooder passed {passed} > {bound}");
    assert!(
        key["dropped"].as_u64().unwrap() > sent / 2,
        "the flooder was not being dropped: {key}"
    );
    let received = receiver.finish();
    let got = received
        .get(&IpAddr::V4(net.client_addrs[0]))
        .copied()
        .unwrap_or(0);
    assert!(got <= bound, "the gateway got {got} > {bound} datagrams");
    // The alerts the receiver never got are accounted for in the log.
    let counts: BTreeMap<&str, usize> = ["webhook unreachable", "webhook queue full"]
        .iter()
        .map(|w| (*w, log_lines(&log, w).len()))
        .collect();
    eprintln!("slowest of {asked} status calls: {slowest:?}; {counts:?}; {status}");
}

#[test]
fn a_full_ring_buffer_is_counted_and_the_program_says_so_in_the_agent_log() {
    const SOURCES: u32 = 12_000;
    let net = TestNet::new(0, 1);
    let webhook = WebhookReceiver::start(&net.gateway);
    let config = random_sources_config(&webhook);
    let agent = Agent::start(&net, Some(&config));
    let sender = RawSender::new(&net.clients, &net.client_if);
    let gateway = Ipv4Addr::new(198, 18, 0, 1);

    // The agent frozen, 12 000 keys exhausted over 3 s: within the kernel's per-CPU budget
    // (1 024 at once, 4 096 a second), so most events are emitted, but the 256 KiB ring holds
    // about 5 400 of them; the rest find it full.
    let paused = Paused::new(&agent);
    for i in 0..SOURCES {
        let frame = ipv4_udp_frame(
            Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8),
            gateway,
            9000,
        );
        sender.send(&frame);
        sender.send(&frame);
        if i % 40 == 39 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(paused);

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = agent.log();
    while !(log.contains("ring buffer full") && log.contains("exhaustion events lost"))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
        log = agent.log();
    }
    // The program's own line (aya-log), on the rare path, reached the agent's log…
    assert!(
        log.contains("exhaustion events ring buffer full"),
        "the XDP program's log line is missing:\n{log}"
    );
    // …and the agent counted what was lost.
    assert!(
        log.contains("exhaustion events lost in the last second: the ring buffer was full"),
        "{log}"
    );

    // Every exhausted key is accounted for at the webhook, the lost ones as suppressed.
    let keys = agent.json(&["list"]);
    let exhausted = keys
        .as_array()
        .expect("list --json is an array")
        .iter()
        .filter(|k| k["key"].as_str().is_some_and(|k| k.starts_with("198.19.")))
        .filter(|k| k["dropped"].as_u64().unwrap_or(0) > 0)
        .count() as u64;
    let accounted = |posts: &[Post]| {
        alerts(posts).len() as u64 + total(posts, "dropped") + total(posts, "suppressed")
    };
    webhook.wait_for(Duration::from_secs(15), |posts| {
        accounted(posts) >= exhausted
    });
    std::thread::sleep(Duration::from_millis(1500));
    let posts = webhook.posts();
    let (alerted, dropped, suppressed) = (
        alerts(&posts).len() as u64,
        total(&posts, "dropped"),
        total(&posts, "suppressed"),
    );
    eprintln!(
        "{exhausted} keys exhausted: {alerted} alerts in {} requests, {dropped} dropped, \
         {suppressed} suppressed or lost",
        posts.len()
    );
    assert_eq!(alerted + dropped + suppressed, exhausted);
    assert!(
        exhausted > u64::from(SOURCES) * 9 / 10,
        "only {exhausted} keys exhausted"
    );
    assert!(
        suppressed > 0 && alerted + dropped < 6_000,
        "the ring cannot have held {} events",
        alerted + dropped
    );
}

/// Keeps the agent frozen (SIGSTOP) while it lives; resumes it when dropped, pass or fail.
struct Paused<'a>(&'a Agent);

impl<'a> Paused<'a> {
    fn new(agent: &'a Agent) -> Paused<'a> {
        agent.pause();
        Paused(agent)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.resume();
    }
}

/// Raises its flag when dropped, so that a thread watching it ends with the test, pass or fail.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
