//! Exhaustion events: from the datapath's ring buffer to the log, a counter and the webhook.
//!
//! The XDP program writes one [`ExhaustionEvent`] when a key becomes exhausted, within a per-CPU
//! budget; what it does not emit it counts (`EventsSuppressed`, `EventsLost`). Here a reader task
//! drains the ring buffer as soon as the kernel signals it, counts every event
//! (`AgentState::exhaustion_events`), logs it — one line per key up to [`LOG_LINES_PER_SEC`],
//! then one summary line a second — and, when `[alerts] webhook` is set, offers it to a bounded
//! queue without ever waiting: when the queue is full the alert is counted as dropped. A sender
//! task takes alerts off the queue in batches and POSTs them as JSON, at most one request per
//! [`MIN_POST_INTERVAL`], retrying with backoff. A receiver that is slow or down costs alerts
//! (counted, and reported in the next batch that gets through), never the reader, the API or
//! enforcement.
//!
//! The body of a POST:
//! `{"alerts": [{"key": "198.18.0.10/32", "rule": "default", "at": "2025-01-01T00:00:00.000Z",
//! "interface": "eth0", "dry_run": false}, …], "dropped": 0, "suppressed": 0}` where `dropped`
//! counts alerts this agent could not deliver since the previous POST that got through (queue
//! full, or a batch given up) and `suppressed` the exhaustion events the datapath did not emit
//! in that time (over its per-CPU bound, or with the ring buffer full).

use super::datapath::monotonic_now_ns;
use super::server::AgentState;
use anyhow::{anyhow, Context};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use limiter_common::key::Prefix;
use limiter_common::maps::{
    counter_index, Counter, ExhaustionEvent, COUNTERS_MAP, DEFAULT_RULE_ID, EVENTS_MAP,
    EVENT_DRY_RUN,
};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

/// Exhausted keys logged one by one per second; the rest are summed up in one line.
pub const LOG_LINES_PER_SEC: u64 = 20;
/// Alerts waiting for the sender at most; beyond it they are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 1024;
/// Alerts in one POST at most.
pub const MAX_BATCH: usize = 500;
/// How long a batch waits for more alerts after its first one.
pub const GATHER: Duration = Duration::from_millis(100);
/// The least time between two POSTs (first attempts; retries follow their own backoff).
pub const MIN_POST_INTERVAL: Duration = Duration::from_millis(500);
/// One POST, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Attempts per batch before it is given up.
pub const ATTEMPTS: u32 = 4;
/// The wait before the first retry; doubled for each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Seconds of key creation compared with `max_keys`: a table turned over within them is warned
/// about.
pub const TURNOVER_WINDOW_SECS: usize = 10;
/// The least time between two warnings of a table turning over.
pub const TURNOVER_WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// The least time between two lines on refused new keys.
pub const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A `[alerts] webhook` URL: `http://HOST[:PORT][/PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    /// Host name or address to connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    /// Path and query.
    path: String,
    text: String,
}

impl WebhookUrl {
    /// Parses and checks a webhook URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<WebhookUrl, String> {
        let uri: Uri = text.parse().map_err(|err| {
            format!("{text:?} is not a URL ({err}); expected http://HOST:PORT/PATH")
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                "{text:?}: https is not supported; give an http:// URL (a local relay can add TLS)"
            ))
            }
            _ => {
                return Err(format!(
                    "{text:?}: expected an http:// URL, such as http://127.0.0.1:9000/limiter"
                ))
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?}: no host; expected http://HOST:PORT/PATH"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?}: user information in the URL is not supported"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{text:?}: no host; expected http://HOST:PORT/PATH"));
        }
        // What follows the last colon, unless that colon is inside an IPv6 address.
        let port = match authority.as_str().rsplit_once(':') {
            Some((_, port)) if !port.contains(']') => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("{text:?}: {port:?} is not a port (1 to 65535)"))?,
            _ => 80,
        };
        Ok(WebhookUrl {
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One alert as the webhook receives it.
#[derive(Debug, Serialize)]
struct Alert {
    key: String,
    rule: String,
    /// When the key's packet was refused (RFC 3339, UTC).
    at: String,
    interface: String,
    dry_run: bool,
}

#[derive(Serialize)]
struct Payload<'a> {
    alerts: &'a [Alert],
    dropped: u64,
    suppressed: u64,
}

/// What the receiver has not been told yet, reported with the next POST that gets through.
#[derive(Default)]
struct Undelivered {
    /// Alerts dropped: queue full, or their batch given up.
    dropped: AtomicU64,
    /// Events the datapath did not emit (over its bound, or the ring buffer full).
    suppressed: AtomicU64,
}

/// The event maps and program log streams, taken from the loaded program instances before the
/// agent serves; [`Events::spawn`] starts reading them.
pub struct Events {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    loggers: Vec<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

impl Events {
    /// Takes the (pinned, shared) EVENTS and COUNTERS maps from the first program instance, and
    /// the log stream of every instance.
    pub fn take(instances: &mut [Ebpf]) -> anyhow::Result<Events> {
        let first = instances
            .first_mut()
            .ok_or_else(|| anyhow!("no program instance to read events from"))?;
        let mut take = |name: &str| {
            first
                .take_map(name)
                .ok_or_else(|| anyhow!("the XDP object has no map {name}"))
        };
        let ring = RingBuf::try_from(take(EVENTS_MAP)?)?;
        let counters = PerCpuArray::try_from(take(COUNTERS_MAP)?)?;
        // SAFETY: the RingBuf owns the map's file descriptor and neither replaces nor closes it
        // while the AsyncFd owns the RingBuf.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(std::io::Error::from)
            .context("polling the EVENTS ring buffer")?;
        let mut loggers = Vec::new();
        for instance in instances.iter_mut() {
            match aya_log::EbpfLogger::init(instance) {
                Ok(logger) => loggers.push(logger),
                // An object without log statements has no log map.
                Err(aya_log::Error::MapNotFound) => {}
                Err(err) => warn!("the XDP program's log lines will not be shown: {err}"),
            }
        }
        Ok(Events {
            ring,
            counters,
            loggers,
        })
    }

    /// Starts the reader, the webhook sender and the program log readers.
    pub fn spawn(self, state: Arc<AgentState>) {
        for logger in self.loggers {
            tokio::spawn(forward_program_log(logger));
        }
        let (queue, alerts) = mpsc::channel(QUEUE_CAPACITY);
        let (webhook_tx, webhook) = watch::channel(None);
        let undelivered = Arc::new(Undelivered::default());
        let mut reader = Reader {
            state,
            counters: self.counters,
            queue,
            undelivered: Arc::clone(&undelivered),
            webhook: webhook_tx,
            rules: HashMap::new(),
            alerting: false,
            logged: 0,
            unlogged: 0,
            queue_full: 0,
            kernel_seen: None,
            max_keys: 0,
            new_keys_per_sec: None,
            created: VecDeque::with_capacity(TURNOVER_WINDOW_SECS),
            turnover_warned: None,
            refused: 0,
            refused_since: None,
            refused_logged: None,
        };
        reader.refresh_settings();
        reader.poll_kernel_counters();
        tokio::spawn(reader.run(self.ring));
        tokio::spawn(send_alerts(alerts, undelivered, webhook));
    }
}

/// Hands the XDP program's aya-log records to the agent's log (as `log` records, which the
/// tracing subscriber picks up).
async fn forward_program_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer's file descriptor and neither replaces nor closes
    // it while the AsyncFd owns the logger.
    let mut logger = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(logger) => logger,
        Err(err) => {
            warn!("cannot poll the XDP program's log: {err}");
            return;
        }
    };
    loop {
        match logger.readable_mut().await {
            Ok(mut guard) => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Err(err) => {
                warn!("reading the XDP program's log: {err}");
                return;
            }
        }
    }
}

struct Reader {
    state: Arc<AgentState>,
    counters: PerCpuArray<MapData, u64>,
    queue: mpsc::Sender<Alert>,
    undelivered: Arc<Undelivered>,
    webhook: watch::Sender<Option<WebhookUrl>>,
    /// Rule names by id, from the configuration in force.
    rules: HashMap<u32, String>,
    /// Whether a webhook is configured.
    alerting: bool,
    /// Events logged one by one / not, this second.
    logged: u64,
    unlogged: u64,
    /// Alerts dropped on a full queue this second.
    queue_full: u64,
    /// The datapath's totals when last read.
    kernel_seen: Option<KernelTotals>,
    /// `[agent] max_keys` and `new_keys_per_sec` in force.
    max_keys: u32,
    new_keys_per_sec: Option<NonZeroU64>,
    /// Keys created in each of the last [`TURNOVER_WINDOW_SECS`] seconds, oldest first.
    created: VecDeque<u64>,
    /// When the table turning over was last warned about.
    turnover_warned: Option<Instant>,
    /// First packets of new keys refused and not logged yet; since when.
    refused: u64,
    refused_since: Option<Instant>,
    /// When refused new keys were last logged.
    refused_logged: Option<Instant>,
}

/// Datapath counters the reader follows, summed over CPUs and interfaces.
#[derive(Clone, Copy)]
struct KernelTotals {
    suppressed: u64,
    lost: u64,
    created: u64,
    refused: u64,
}

impl Reader {
    async fn run(mut self, mut ring: AsyncFd<RingBuf<MapData>>) {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                ready = ring.readable_mut() => match ready {
                    Ok(mut guard) => {
                        self.drain(guard.get_inner_mut());
                        guard.clear_ready();
                    }
                    Err(err) => {
                        error!("polling the EVENTS ring buffer failed ({err}); exhaustion events are no longer read");
                        return;
                    }
                },
                _ = second.tick() => {
                    // Also a safety net for a wake-up missed between draining and clear_ready.
                    self.drain(ring.get_mut());
                    self.end_of_second();
                }
            }
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            let event = (item.len() >= size_of::<ExhaustionEvent>()).then(|| {
                // SAFETY: the datapath writes whole ExhaustionEvents (plain data); the length is
                // checked, and read_unaligned makes no assumption on the alignment.
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<ExhaustionEvent>()) }
            });
            let len = item.len();
            drop(item);
            match event {
                Some(event) => self.handle(&event),
                None => warn!(len, "ignoring a malformed exhaustion event"),
            }
        }
    }

    fn handle(&mut self, event: &ExhaustionEvent) {
        self.state.exhaustion_events.fetch_add(1, Ordering::Relaxed);
        let key = Prefix::from_bucket_key(&event.key).map_or_else(
            || format!("(address family {})", event.key.family),
            |prefix| prefix.to_string(),
        );
        let rule = self.rule_name(event.key.rule_id);
        let interface = self
            .state
            .interfaces
            .get(event.iface_slot as usize)
            .map_or("?", |i| i.name.as_str());
        let dry_run = event.flags & EVENT_DRY_RUN != 0;
        let age = Duration::from_nanos(monotonic_now_ns().saturating_sub(event.at_ns));
        if self.logged < LOG_LINES_PER_SEC {
            self.logged += 1;
            info!(
                key = %key,
                rule = %rule,
                interface,
                dry_run,
                age_ms = age.as_millis() as u64,
                "key exhausted"
            );
        } else {
            self.unlogged += 1;
        }
        if self.alerting {
            let at = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
            let alert = Alert {
                key,
                rule,
                at: rfc3339(at),
                interface: interface.to_owned(),
                dry_run,
            };
            if self.queue.try_send(alert).is_err() {
                self.undelivered.dropped.fetch_add(1, Ordering::Relaxed);
                self.queue_full += 1;
            }
        }
    }

    fn rule_name(&self, id: u32) -> String {
        if id == DEFAULT_RULE_ID {
            return "default".to_owned();
        }
        self.rules
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("removed rule #{id}"))
    }

    fn end_of_second(&mut self) {
        if self.unlogged > 0 {
            info!(
                more = self.unlogged,
                "{} more keys became exhausted in the last second (not logged one by one)",
                self.unlogged
            );
        }
        if self.queue_full > 0 {
            warn!(
                dropped = self.queue_full,
                "webhook queue full: {} alerts dropped in the last second (reported to the receiver as `dropped`)",
                self.queue_full
            );
        }
        self.logged = 0;
        self.unlogged = 0;
        self.queue_full = 0;
        self.poll_kernel_counters();
        self.refresh_settings();
    }

    /// `counter` summed over CPUs and interfaces.
    fn kernel_total(&self, counter: Counter) -> Result<u64, aya::maps::MapError> {
        let mut sum = 0u64;
        for slot in 0..self.state.interfaces.len() as u32 {
            let values = self.counters.get(&counter_index(slot, counter), 0)?;
            sum = values.iter().fold(sum, |a, b| a.wrapping_add(*b));
        }
        Ok(sum)
    }

    fn kernel_totals(&self) -> Result<KernelTotals, aya::maps::MapError> {
        Ok(KernelTotals {
            suppressed: self.kernel_total(Counter::EventsSuppressed)?,
            lost: self.kernel_total(Counter::EventsLost)?,
            created: self.kernel_total(Counter::KeysCreated)?,
            refused: self.kernel_total(Counter::NewKeysRefused)?,
        })
    }

    /// Logs (and reports to the webhook) the events the datapath did not emit since last time,
    /// and logs keys created and refused (see [`Reader::watch_new_keys`]).
    fn poll_kernel_counters(&mut self) {
        let totals = match self.kernel_totals() {
            Ok(totals) => totals,
            Err(err) => {
                debug!("reading the datapath counters: {err}");
                return;
            }
        };
        if let Some(seen) = self.kernel_seen {
            let new_suppressed = totals.suppressed.wrapping_sub(seen.suppressed);
            let new_lost = totals.lost.wrapping_sub(seen.lost);
            if new_suppressed > 0 {
                info!(
                    suppressed = new_suppressed,
                    "{new_suppressed} exhaustion events not emitted by the datapath in the last second (over its per-CPU bound)"
                );
            }
            if new_lost > 0 {
                warn!(
                    lost = new_lost,
                    "{new_lost} exhaustion events lost in the last second: the ring buffer was full"
                );
            }
            if self.alerting {
                self.undelivered
                    .suppressed
                    .fetch_add(new_suppressed + new_lost, Ordering::Relaxed);
            }
            self.watch_new_keys(
                totals.created.wrapping_sub(seen.created),
                totals.refused.wrapping_sub(seen.refused),
            );
        }
        self.kernel_seen = Some(totals);
    }

    /// Warns, at most once per [`TURNOVER_WARNING_INTERVAL`], when the keys created over the
    /// last [`TURNOVER_WINDOW_SECS`] seconds reach `max_keys` with no bound on new keys; logs
    /// the first packets of new keys refused under a bound, at most once per
    /// [`REFUSED_LOG_INTERVAL`].
    fn watch_new_keys(&mut self, created: u64, refused: u64) {
        let now = Instant::now();
        let due = |last: Option<Instant>, interval| last.is_none_or(|at| now - at >= interval);
        if self.created.len() == TURNOVER_WINDOW_SECS {
            self.created.pop_front();
        }
        self.created.push_back(created);
        let recent: u64 = self.created.iter().sum();
        let max_keys = self.max_keys;
        if self.new_keys_per_sec.is_none()
            && max_keys > 0
            && recent >= u64::from(max_keys)
            && due(self.turnover_warned, TURNOVER_WARNING_INTERVAL)
        {
            warn!(
                created = recent,
                max_keys,
                "{recent} keys created in the last {TURNOVER_WINDOW_SECS} s, at least the {max_keys} the table holds: keys are evicted as fast as they come — a flood from ever new (spoofed) sources? Established clients lose their buckets and the flood passes on fresh ones; `[agent] new_keys_per_sec` bounds key creation"
            );
            self.turnover_warned = Some(now);
        }
        let Some(bound) = self.new_keys_per_sec else {
            self.refused = 0;
            self.refused_since = None;
            return;
        };
        if refused > 0 && self.refused == 0 {
            // Refused in the second that just ended.
            self.refused_since = now.checked_sub(Duration::from_secs(1));
        }
        self.refused += refused;
        if self.refused > 0 && due(self.refused_logged, REFUSED_LOG_INTERVAL) {
            let refused = self.refused;
            let secs = self
                .refused_since
                .map_or(1, |since| (now - since).as_secs_f64().round() as u64)
                .max(1);
            let during = if secs == 1 {
                "the last second".to_owned()
            } else {
                format!("the last {secs} s")
            };
            info!(
                refused,
                seconds = secs,
                "{refused} first packets of new keys refused in {during} (over new_keys_per_sec = {bound})"
            );
            self.refused = 0;
            self.refused_since = None;
            self.refused_logged = Some(now);
        }
    }

    /// Rule names and the webhook from the configuration in force (it changes on reload). Never
    /// waits for the datapath: when an API call holds it, the current settings stay a second
    /// longer.
    fn refresh_settings(&mut self) {
        let datapath = match self.state.datapath.try_lock() {
            Ok(datapath) => datapath,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let config = datapath.config();
        self.max_keys = config.agent.max_keys;
        self.new_keys_per_sec = config.agent.new_keys_per_sec;
        self.rules = config
            .resolved_rules()
            .into_iter()
            .map(|rule| (rule.id, rule.name))
            .collect();
        let webhook = config
            .alerts
            .webhook
            .as_deref()
            .and_then(|url| WebhookUrl::parse(url).ok());
        drop(datapath);
        self.alerting = webhook.is_some();
        self.webhook.send_if_modified(|current| {
            if *current == webhook {
                return false;
            }
            match &webhook {
                Some(url) => info!(webhook = %url, "exhaustion alerts go to the webhook"),
                None if current.is_some() => info!("no webhook configured any more"),
                None => {}
            }
            *current = webhook;
            true
        });
    }
}

/// Takes alerts off the queue in batches and POSTs them.
async fn send_alerts(
    mut queue: mpsc::Receiver<Alert>,
    undelivered: Arc<Undelivered>,
    webhook: watch::Receiver<Option<WebhookUrl>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_post: Option<Instant> = None;
    loop {
        // An alert, or a second without one (counts alone are reported too).
        tokio::select! {
            received = queue.recv_many(&mut batch, MAX_BATCH) => if received == 0 {
                return;
            },
            _ = sleep(Duration::from_secs(1)) => {}
        }
        if !batch.is_empty() {
            let mut until = Instant::now() + GATHER;
            if let Some(last) = last_post {
                until = until.max(last + MIN_POST_INTERVAL);
            }
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                tokio::select! {
                    received = queue.recv_many(&mut batch, room) => if received == 0 {
                        break;
                    },
                    _ = sleep_until(until) => break,
                }
            }
            // A full batch waits for its turn too.
            if let Some(last) = last_post {
                sleep_until(last + MIN_POST_INTERVAL).await;
            }
        }
        let dropped = undelivered.dropped.swap(0, Ordering::Relaxed);
        let suppressed = undelivered.suppressed.swap(0, Ordering::Relaxed);
        if batch.is_empty() && dropped == 0 && suppressed == 0 {
            continue;
        }
        let Some(url) = webhook.borrow().clone() else {
            // The webhook was removed by a reload.
            batch.clear();
            continue;
        };
        let body = match serde_json::to_vec(&Payload {
            alerts: &batch,
            dropped,
            suppressed,
        }) {
            Ok(body) => Bytes::from(body),
            Err(err) => {
                error!("encoding alerts: {err}");
                batch.clear();
                continue;
            }
        };
        match deliver(&url, body).await {
            Ok(attempts) => debug!(
                webhook = %url,
                alerts = batch.len(),
                dropped,
                suppressed,
                attempts,
                "alerts delivered"
            ),
            Err(err) => {
                warn!(
                    webhook = %url,
                    alerts = batch.len(),
                    attempts = ATTEMPTS,
                    error = %err,
                    "webhook unreachable: alerts given up (reported as `dropped` with the next delivery)"
                );
                undelivered
                    .dropped
                    .fetch_add(batch.len() as u64 + dropped, Ordering::Relaxed);
                undelivered
                    .suppressed
                    .fetch_add(suppressed, Ordering::Relaxed);
            }
        }
        last_post = Some(Instant::now());
        batch.clear();
    }
}

/// POSTs `body`, retrying with exponential backoff; the attempts it took, or the last error.
async fn deliver(url: &WebhookUrl, body: Bytes) -> Result<u32, String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::new();
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(REQUEST_TIMEOUT, post(url, body.clone())).await {
            Ok(Ok(())) => return Ok(attempt),
            Ok(Err(err)) => last_error = err,
            Err(_) => last_error = format!("no answer within {REQUEST_TIMEOUT:?}"),
        }
        if attempt < ATTEMPTS {
            debug!(webhook = %url, attempt, error = %last_error, "webhook POST failed; retrying in {backoff:?}");
            sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(last_error)
}

/// Aborts the spawned connection task when the request is done or abandoned (timeout).
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One POST on a connection of its own (at most a couple a second: nothing to keep alive).
async fn post(url: &WebhookUrl, body: Bytes) -> Result<(), String> {
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|err| format!("connecting to {}: {err}", url.authority))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| err.to_string())?;
    let _connection = AbortOnDrop(tokio::spawn(connection));
    let request = Request::post(url.path.as_str())
        .header(HOST, url.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("limiter/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(body))
        .map_err(|err| err.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| err.to_string())?;
    // The body is not read: the status is the answer, and the connection is closed anyway.
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the receiver answered {status}"))
    }
}

/// `at` as RFC 3339 in UTC with milliseconds: `2025-01-31T23:59:59.123Z`.
fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_700_000_000, 999), "2023-11-14T22:13:20.999Z");
        assert_eq!(at(1_735_689_599, 0), "2024-12-31T23:59:59.000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn webhook_urls_must_be_http_with_a_host() {
        let url = WebhookUrl::parse("http://127.0.0.1:9000/limiter?x=1").unwrap();
        assert_eq!(
            (
                url.host.as_str(),
                url.port,
                url.authority.as_str(),
                url.path.as_str()
            ),
            ("127.0.0.1", 9000, "127.0.0.1:9000", "/limiter?x=1")
        );
        let url = WebhookUrl::parse("http://alerts.example").unwrap();
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        let url = WebhookUrl::parse("http://[2001:2::1]:8080/hook").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("2001:2::1", 8080));
        for (bad, why) in [
            ("https://127.0.0.1:9000/x", "https is not supported"),
            ("ftp://127.0.0.1/x", "http://"),
            ("127.0.0.1:9000", "http://"),
            ("/limiter", "http://"),
            ("http://", "not a URL"),
            ("http://127.0.0.1:0/x", "\"0\" is not a port"),
            ("http://127.0.0.1:99999/x", "\"99999\" is not a port"),
            ("http://127.0.0.1:/x", "\"\" is not a port"),
            ("http://user:pw@127.0.0.1/x", "user information"),
            ("not a url", "not a URL"),
        ] {
            let err = WebhookUrl::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_payload_has_the_documented_shape() {
        let alerts = [Alert {
            key: "198.18.0.10/32".to_owned(),
            rule: "default".to_owned(),
            at: rfc3339(UNIX_EPOCH),
            interface: "eth0".to_owned(),
            dry_run: false,
        }];
        let json = serde_json::to_value(Payload {
            alerts: &alerts,
            dropped: 2,
            suppressed: 3,
        })
        .unwrap();
        assert_eq!(json["alerts"][0]["key"], "198.18.0.10/32");
        assert_eq!(json["alerts"][0]["rule"], "default");
        assert_eq!(json["alerts"][0]["at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            (json["dropped"].as_u64(), json["suppressed"].as_u64()),
            (Some(2), Some(3))
        );
    }
}
