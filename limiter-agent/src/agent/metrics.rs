//! Prometheus metrics on `--metrics`: `GET /metrics` in the Prometheus text format (0.0.4).
//!
//! Nothing is polled or cached: every scrape reads the kernel's maps (the per-CPU counters and
//! the buckets), so the values are those of the datapath itself and survive agent restarts.
//! Labels are bounded: an interface (at most `MAX_INTERFACES`) and a fixed set of verdicts —
//! never a key.

use super::datapath::Totals;
use super::server::AgentState;
use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
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
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            warn!("the metrics server stopped: {err}");
        }
    });
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
    per_interface: Vec<Totals>,
    /// Over every slot (also those of interfaces no longer attached).
    all: Totals,
    tracked: u64,
    exhausted: u64,
    max_keys: u32,
}

impl MapCollector {
    fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let datapath = self
            .state
            .datapath
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Buckets first, counters after: `keys_created` then counts every key walked.
        let (tracked, exhausted) = datapath.key_counts()?;
        let sums = datapath.counter_sums()?;
        let per_interface = (0..self.state.interfaces.len() as u32)
            .map(|slot| sums.totals(Some(slot)))
            .collect();
        let all = sums.totals(None);
        Ok(Snapshot {
            per_interface,
            all,
            tracked,
            exhausted,
            max_keys: datapath.config().agent.max_keys,
        })
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
            let verdicts = [
                ("passed", totals.passed),
                ("dropped", totals.dropped),
                ("would_drop", totals.would_drop),
                ("allowed", totals.allowed_by_rule),
                ("denied", totals.denied_by_rule),
                ("not_limited", totals.not_limited),
                ("unparsed", totals.unparsed),
            ];
            for (verdict, value) in verdicts {
                let labels = [("interface", name), ("verdict", verdict)];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }

        let per_interface = |encoder: &mut DescriptorEncoder,
                             name: &str,
                             help: &str,
                             value: fn(&Totals) -> u64|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (iface, totals) in interfaces() {
                let labels = [("interface", iface)];
                ConstCounter::new(value(totals)).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };
        per_interface(
            &mut encoder,
            "limiter_insert_failures",
            "New keys the datapath could not track (bucket map full, nothing evictable); their \
             packets were passed.",
            |t| t.insert_failed,
        )?;
        per_interface(
            &mut encoder,
            "limiter_contention_drops",
            "Packets dropped because their bucket's update lost to other CPUs on every retry.",
            |t| t.contention_drops,
        )?;
        per_interface(
            &mut encoder,
            "limiter_new_keys_refused",
            "First packets of new keys refused over [agent] new_keys_per_sec: dropped (or passed \
             by dry run, among would_drop) and no key created.",
            |t| t.new_keys_refused,
        )?;

        let evicted = snapshot.all.keys_created.saturating_sub(snapshot.tracked);
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
