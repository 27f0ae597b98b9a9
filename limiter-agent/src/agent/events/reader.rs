//! The ring buffer reader: drains exhaustion events as soon as the kernel signals them, counts
//! each (`AgentState::exhaustion_events`), logs it — one line per key up to
//! [`LOG_LINES_PER_SEC`], then one summary line a second — and offers it to the webhook queue
//! without ever waiting.

use super::webhook::{Alert, ExhaustionAlert, Undelivered};
use crate::agent::config::{rule_id, Config, WebhookUrl};
use crate::agent::datapath::{monotonic_now_ns, CounterSums};
use crate::agent::state::AgentState;
use crate::api::rfc3339;
use aya::maps::{MapData, PerCpuArray, RingBuf};
use limiter_common::key::Prefix;
use limiter_common::maps::{Counter, ExhaustionEvent, DEFAULT_RULE_ID, EVENT_DRY_RUN};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

/// Exhausted keys logged one by one per second; the rest are summed up in one line.
pub const LOG_LINES_PER_SEC: u64 = 20;

pub struct Reader {
    state: Arc<AgentState>,
    counters: PerCpuArray<MapData, u64>,
    queue: mpsc::Sender<Alert>,
    undelivered: Arc<Undelivered>,
    webhook: watch::Sender<Option<WebhookUrl>>,
    /// The configuration in force.
    config: watch::Receiver<Arc<Config>>,
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
}

/// Datapath counters the reader follows, summed over CPUs and interfaces.
#[derive(Clone, Copy)]
pub struct KernelTotals {
    suppressed: u64,
    lost: u64,
}

impl Reader {
    pub fn new(
        state: Arc<AgentState>,
        counters: PerCpuArray<MapData, u64>,
        queue: mpsc::Sender<Alert>,
        undelivered: Arc<Undelivered>,
        webhook: watch::Sender<Option<WebhookUrl>>,
    ) -> Reader {
        // A new receiver has seen the value it starts with.
        let config = state.watch_config();
        let current = Arc::clone(&config.borrow());
        let mut reader = Reader {
            state,
            counters,
            queue,
            undelivered,
            webhook,
            config,
            rules: HashMap::new(),
            alerting: false,
            logged: 0,
            unlogged: 0,
            queue_full: 0,
            kernel_seen: None,
        };
        reader.apply_settings(&current);
        reader.poll_kernel_counters();
        reader
    }

    pub async fn run(mut self, mut ring: AsyncFd<RingBuf<MapData>>) {
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
        let (key, rule) = match limiter_common::charge::api_key_hash(&event.key) {
            Some(hash) => self.state.datapath().api().names(hash),
            None => (
                Prefix::from_bucket_key(&event.key).map_or_else(
                    || format!("(address family {})", event.key.family),
                    |prefix| prefix.to_string(),
                ),
                self.rule_name(event.key.rule_id),
            ),
        };
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
            let alert = Alert::Exhausted(ExhaustionAlert {
                key,
                rule,
                at: rfc3339(at),
                interface: interface.to_owned(),
                dry_run,
            });
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
        if let Some(name) = self.rules.get(&id) {
            return name.clone();
        }
        // An override's bucket: named after the override ("override 198.18.0.0/24").
        let overrides = self
            .state
            .overrides
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        overrides
            .list()
            .iter()
            .map(|o| o.name())
            .find(|name| rule_id(name) == id)
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

    fn kernel_totals(&self) -> anyhow::Result<KernelTotals> {
        let totals = CounterSums::read(&self.counters)?.totals(None);
        Ok(KernelTotals {
            suppressed: totals.get(Counter::EventsSuppressed),
            lost: totals.get(Counter::EventsLost),
        })
    }

    /// Logs (and reports to the webhook) the events the datapath did not emit since last time.
    fn poll_kernel_counters(&mut self) {
        let totals = match self.kernel_totals() {
            Ok(totals) => totals,
            Err(err) => {
                debug!("reading the datapath counters: {err:#}");
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
        }
        self.kernel_seen = Some(totals);
    }

    /// Follows a reload: rule names and the webhook of the configuration in force.
    fn refresh_settings(&mut self) {
        if self.config.has_changed().unwrap_or(false) {
            let config = Arc::clone(&self.config.borrow_and_update());
            self.apply_settings(&config);
        }
    }

    fn apply_settings(&mut self, config: &Config) {
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
