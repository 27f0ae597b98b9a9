//! Prometheus metrics on `--metrics`: `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! Nothing is polled or cached: every scrape reads the kernel's maps (the per-CPU counters and
//! the buckets), so the values are those of the datapath itself and survive agent restarts.
//! Labels are bounded: an interface (at most `MAX_INTERFACES`), a fixed set of verdicts, the
//! configured quota alert thresholds (at most 100) and — in the per-key families only — the
//! `[metrics] top_keys` keys with the most use of their quota and the most drops at this scrape
//! (at most `TOP_KEYS_AT_MOST` each; a key leaves the series when others pass it). A key label is
//! an address prefix, `key:NAME` or `key:FINGERPRINT`: never an API key's token.

use super::quotas::{quota_info, QuotaWords};
use super::state::AgentState;
use crate::api::{Counters, KeyInfo, SortBy};
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use limiter_common::maps::Counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Where `--metrics` listens unless told otherwise: loopback only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9848";
pub const METRICS_PATH: &str = "/metrics";

/// Binds the metrics listener (connections wait in its queue until [`spawn`] serves them).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("serving metrics on {addr} (--metrics ADDR:PORT chooses another)"))
}

/// Serves `GET /metrics` on `listener` until the runtime ends.
pub fn spawn(listener: TcpListener, state: Arc<AgentState>) {
    let addr = listener.local_addr().ok();
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MapCollector {
        state,
        evicted_seen: AtomicU64::new(0),
    }));
    let app = Router::new()
        .route(METRICS_PATH, get(scrape))
        .with_state(Arc::new(registry));
    if let Some(addr) = addr {
        info!(%addr, "serving Prometheus metrics at http://{addr}{METRICS_PATH}");
    }
    tokio::spawn(super::serve::serve_tcp(
        listener,
        app,
        super::serve::METRICS_LIMITS,
    ));
}

async fn scrape(State(registry): State<Arc<Registry>>) -> Response {
    // The collector walks the maps: blocking syscalls, kept off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_text::encode(&mut body, &registry).map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => (
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Ok(Err(_)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "reading the datapath's maps failed: see the agent's log\n",
        )
            .into_response(),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the scrape failed: {err}\n"),
        )
            .into_response(),
    }
}

/// Reads the maps at scrape time.
struct MapCollector {
    state: Arc<AgentState>,
    /// The highest eviction count reported, so that the counter never goes back when a key is
    /// created between reading the counters and walking the buckets.
    evicted_seen: AtomicU64,
}

impl std::fmt::Debug for MapCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapCollector").finish_non_exhaustive()
    }
}

/// What one scrape read from the kernel.
struct Snapshot {
    /// Per attached interface, in slot order.
    per_interface: Vec<Counters>,
    /// Over every slot (also those of interfaces no longer attached).
    all: Counters,
    tracked: u64,
    exhausted: u64,
    max_keys: u32,
    /// The `top_keys` API keys with the most of their quota used this window (share of it, then
    /// count): key, plan, used, limit.
    top_quota: Vec<(String, String, u64, u64)>,
    /// API keys whose quota is used up in this window.
    over_quota: u64,
    /// The `top_keys` keys with the most drops (those with any).
    top_dropped: Vec<KeyInfo>,
}

impl MapCollector {
    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let datapath = self.state.datapath();
        // Buckets first, counters after: `keys_created` then counts every key walked.
        let (tracked, exhausted) = datapath.key_counts()?;
        let sums = datapath.counter_sums()?;
        let per_interface = (0..self.state.interfaces.len() as u32)
            .map(|slot| sums.totals(Some(slot)))
            .collect();
        let all = sums.totals(None);
        let config = self.state.config();
        let top = config.metrics.top_keys as usize;
        let (top_quota, over_quota) =
            self.quota_use(&datapath.quota_words()?, &datapath.api(), top);
        let top_dropped = if top == 0 {
            Vec::new()
        } else {
            datapath
                .select(false, Some(SortBy::Drops), Some(top), None, None)?
                .infos()
                .filter(|info| info.dropped > 0)
                .collect()
        };
        Ok(Snapshot {
            per_interface,
            all,
            tracked,
            exhausted,
            max_keys: config.agent.max_keys,
            top_quota,
            over_quota,
            top_dropped,
        })
    }

    /// The `top` API keys with the most of their quota used this window, and how many have
    /// used it up.
    fn quota_use(
        &self,
        words: &std::collections::HashMap<u64, QuotaWords>,
        api: &super::datapath::ApiView,
        top: usize,
    ) -> (Vec<(String, String, u64, u64)>, u64) {
        let now = std::time::SystemTime::now();
        let mut used: Vec<(u64, u64, u64)> = words
            .iter()
            .filter_map(|(&hash, &words)| {
                let (quota, _) = api.quota_of(hash)?;
                let info = quota_info(&quota, words, now, None);
                (info.used > 0).then_some((hash, info.used, info.limit))
            })
            .collect();
        let over_quota = used.iter().filter(|(_, used, limit)| used >= limit).count() as u64;
        // Most of their quota first (used / limit, compared without division), then most used.
        used.sort_unstable_by(|a, b| {
            (u128::from(b.1) * u128::from(a.2))
                .cmp(&(u128::from(a.1) * u128::from(b.2)))
                .then(b.1.cmp(&a.1))
        });
        used.truncate(top);
        let top_quota = used
            .into_iter()
            .map(|(hash, used, limit)| {
                let (key, plan) = api.names(hash);
                (key, plan, used, limit)
            })
            .collect();
        (top_quota, over_quota)
    }
}

impl Collector for MapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot().map_err(|err| {
            warn!("metrics scrape: {err:#}");
            std::fmt::Error
        })?;
        let state = &self.state;
        let interfaces = || {
            state
                .interfaces
                .iter()
                .map(|i| i.name.as_str())
                .zip(&snapshot.per_interface)
        };

        // Names get their suffix from the type: `_total` for counters, `_info` for infos.
        let mut family = encoder.encode_descriptor(
            "limiter_packets",
            "Packets seen by the XDP program, by interface and verdict: passed and dropped by a \
             bucket, would_drop (over the limit, passed by dry run), allowed and denied by a rule, \
             not_limited (non-IP, IPv6 neighbour discovery), unparsed (passed).",
            None,
            MetricType::Counter,
        )?;
        for (name, totals) in interfaces() {
            for (counter, value) in totals.iter() {
                if let Export::Verdict(verdict) = export(counter) {
                    let labels = [("interface", name), ("verdict", verdict)];
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        for counter in Counter::ALL {
            let Export::PerInterface(name, help) = export(counter) else {
                continue;
            };
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (iface, totals) in interfaces() {
                let labels = [("interface", iface)];
                ConstCounter::new(totals.get(counter)).encode(family.encode_family(&labels)?)?;
            }
        }

        let evicted = snapshot
            .all
            .get(Counter::KeysCreated)
            .saturating_sub(snapshot.tracked);
        let evicted = self
            .evicted_seen
            .fetch_max(evicted, Ordering::Relaxed)
            .max(evicted);
        counter(
            &mut encoder,
            "limiter_keys_evicted",
            "Keys the LRU bucket map evicted to make room for new ones (keys created less keys \
             tracked).",
            evicted,
        )?;
        counter(
            &mut encoder,
            "limiter_resets",
            "Keys given a full bucket by a reset through this agent since it started.",
            state.resets.load(Ordering::Relaxed),
        )?;
        counter(
            &mut encoder,
            "limiter_exhaustion_events",
            "Times a key became exhausted, as reported to this agent since it started.",
            state.exhaustion_events.load(Ordering::Relaxed),
        )?;

        let mut family = encoder.encode_descriptor(
            "limiter_quota_alerts",
            "Quota threshold alerts ([alerts] thresholds) this agent raised since it started, by \
             threshold (percent of the quota).",
            None,
            MetricType::Counter,
        )?;
        for (threshold, count) in state.quota_alerts() {
            let threshold = threshold.to_string();
            let labels = [("threshold", threshold.as_str())];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        gauge(
            &mut encoder,
            "limiter_over_quota_keys",
            "API keys whose quota for the window now is used up.",
            snapshot.over_quota,
        )?;
        let mut used = encoder.encode_descriptor(
            "limiter_key_quota_used",
            "Requests an API key used of its quota this window, for the [metrics] top_keys keys \
             with the most of their quota used.",
            None,
            MetricType::Gauge,
        )?;
        for (key, plan, value, _) in &snapshot.top_quota {
            let labels = [("key", key.as_str()), ("plan", plan.as_str())];
            ConstGauge::new(*value).encode(used.encode_family(&labels)?)?;
        }
        let mut limit = encoder.encode_descriptor(
            "limiter_key_quota_limit",
            "The quota (requests a window) of the keys in limiter_key_quota_used.",
            None,
            MetricType::Gauge,
        )?;
        for (key, plan, _, value) in &snapshot.top_quota {
            let labels = [("key", key.as_str()), ("plan", plan.as_str())];
            ConstGauge::new(*value).encode(limit.encode_family(&labels)?)?;
        }
        let mut dropped = encoder.encode_descriptor(
            "limiter_key_dropped",
            "Packets (a source) or requests (an API key, answered 429) a key had refused while \
             tracked, for the [metrics] top_keys keys with the most.",
            None,
            MetricType::Counter,
        )?;
        for info in &snapshot.top_dropped {
            let labels = [("key", info.key.as_str()), ("rule", info.rule.as_str())];
            ConstCounter::new(info.dropped).encode(dropped.encode_family(&labels)?)?;
        }

        gauge(
            &mut encoder,
            "limiter_tracked_keys",
            "Keys with a bucket in the datapath now.",
            snapshot.tracked,
        )?;
        gauge(
            &mut encoder,
            "limiter_exhausted_keys",
            "Tracked keys whose next packet would be dropped now.",
            snapshot.exhausted,
        )?;
        gauge(
            &mut encoder,
            "limiter_max_keys",
            "Keys the bucket map holds at most ([agent] max_keys).",
            u64::from(snapshot.max_keys),
        )?;

        let family = encoder.encode_descriptor(
            "limiter",
            "The agent serving these metrics: its version.",
            None,
            MetricType::Info,
        )?;
        Info::new([("version", env!("CARGO_PKG_VERSION"))]).encode(family)?;
        let mut family = encoder.encode_descriptor(
            "limiter_interface",
            "Interfaces the XDP program is attached to, and how (native or skb).",
            None,
            MetricType::Info,
        )?;
        for iface in &state.interfaces {
            let labels = [
                ("interface", iface.name.as_str()),
                ("mode", iface.mode.as_str()),
            ];
            family.encode_info(&labels)?;
        }
        Ok(())
    }
}

/// How a datapath counter is exported.
enum Export {
    /// As `limiter_packets_total{verdict="…"}`.
    Verdict(&'static str),
    /// As a counter of its own, by interface: name (without `_total`) and help.
    PerInterface(&'static str, &'static str),
}

/// Every counter is exported; a new one fails to compile here until it is given its place.
fn export(counter: Counter) -> Export {
    use Export::*;
    match counter {
        Counter::Passed => Verdict("passed"),
        Counter::Dropped => Verdict("dropped"),
        Counter::WouldDrop => Verdict("would_drop"),
        Counter::AllowedByRule => Verdict("allowed"),
        Counter::DeniedByRule => Verdict("denied"),
        Counter::NotLimited => Verdict("not_limited"),
        Counter::Unparsed => Verdict("unparsed"),
        Counter::Rejected => Verdict("rejected"),
        Counter::Unconfigured => PerInterface(
            "limiter_unconfigured_packets",
            "Packets that arrived before the agent configured the program; passed.",
        ),
        Counter::InsertFailed => PerInterface(
            "limiter_insert_failures",
            "New keys the datapath could not track (bucket map full, nothing evictable); their \
             packets were passed.",
        ),
        Counter::KeysCreated => PerInterface(
            "limiter_keys_created",
            "Keys the datapath created (less the keys tracked: the keys evicted).",
        ),
        Counter::ContentionDrops => PerInterface(
            "limiter_contention_drops",
            "Packets dropped because their bucket's update lost to other CPUs on every retry.",
        ),
        Counter::CoarseDrops => PerInterface(
            "limiter_coarse_clock_drops",
            "Of the packets dropped (or would-drop), those proven over the limit on the coarse \
             clock, without reading the precise one.",
        ),
        Counter::OverQuota => PerInterface(
            "limiter_over_quota_requests",
            "Requests refused because their API key's quota for the window was used up \
             (answered 429, among the rejected).",
        ),
        Counter::CoarseClockLate => PerInterface(
            "limiter_coarse_clock_late",
            "Times the coarse clock lagged the precise one by more than the datapath assumes; \
             its coarse-clock fast path then pauses for a second.",
        ),
        Counter::EventsSuppressed => PerInterface(
            "limiter_events_suppressed",
            "Exhaustion events the datapath did not emit: over its per-CPU bound.",
        ),
        Counter::EventsLost => PerInterface(
            "limiter_events_lost",
            "Exhaustion events lost: the ring buffer was full.",
        ),
        Counter::NewKeysRefused => PerInterface(
            "limiter_new_keys_refused",
            "First packets of new keys refused over [agent] new_keys_per_sec: dropped (or passed \
             by dry run, among would_drop) and no key created.",
        ),
        Counter::KeyedRequests => PerInterface(
            "limiter_keyed_requests",
            "HTTP requests on [http] ports charged to their API key.",
        ),
        Counter::KeylessRequests => PerInterface(
            "limiter_keyless_requests",
            "HTTP requests on [http] ports without a key header (source limits only).",
        ),
        Counter::NotHttp => PerInterface(
            "limiter_not_http_segments",
            "Segments on [http] ports that start no HTTP/1.x request (bodies, h2c, binary); passed.",
        ),
        Counter::TlsHandshakes => PerInterface(
            "limiter_tls_handshakes",
            "TLS handshakes on [http] ports, which are configured for cleartext; passed untouched.",
        ),
        Counter::AnswersFailed => PerInterface(
            "limiter_answers_failed",
            "Requests over their key's limit whose 429 could not be built in their frame; dropped.",
        ),
        Counter::GatewayResets => PerInterface(
            "limiter_gateway_resets",
            "Gateway sockets of connections answered with a 429, released by a reset.",
        ),
        Counter::Retransmits => PerInterface(
            "limiter_retransmitted_requests",
            "Retransmitted requests: given the verdict of their first copy, not charged again.",
        ),
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(value).encode(family)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(family)
}
