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
//!
//! Quota alerts (`quota_alerts`) go to the same log, queue and webhook, as alerts of their own
//! `"kind": "quota_threshold"`.

mod quota_alerts;
mod reader;
pub mod webhook;

use anyhow::{anyhow, Context};
use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use limiter_common::maps::{COUNTERS_MAP, EVENTS_MAP};
use reader::Reader;
pub use reader::LOG_LINES_PER_SEC;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch};
use tracing::warn;
use webhook::{send_alerts, Undelivered, QUEUE_CAPACITY};

use super::state::AgentState;

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

    /// Starts the reader, the quota watcher (what it alerted kept in `state_dir`), the webhook
    /// sender and the program log readers.
    pub fn spawn(self, state: Arc<AgentState>, state_dir: &std::path::Path) -> anyhow::Result<()> {
        for logger in self.loggers {
            tokio::spawn(forward_program_log(logger));
        }
        let (queue, alerts) = mpsc::channel(QUEUE_CAPACITY);
        let _ = state.alerts.set(queue.clone());
        let (webhook_tx, webhook) = watch::channel(None);
        let undelivered = Arc::new(Undelivered::default());
        quota_alerts::spawn(
            Arc::clone(&state),
            state_dir,
            queue.clone(),
            Arc::clone(&undelivered),
        )?;
        let reader = Reader::new(
            state,
            self.counters,
            queue,
            Arc::clone(&undelivered),
            webhook_tx,
        );
        tokio::spawn(reader.run(self.ring));
        tokio::spawn(send_alerts(alerts, undelivered, webhook));
        Ok(())
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
