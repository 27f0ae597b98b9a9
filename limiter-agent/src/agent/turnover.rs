//! Key turnover: warns when keys are created as fast as the table holds them (a flood from ever
//! new sources, with no bound on key creation), and logs, in few lines, the first packets of new
//! keys refused under `[agent] new_keys_per_sec`; and says once when TLS handshakes reach the
//! ports `[http]` reads as cleartext. Not exhaustion events: a task of its own, once a second,
//! on the kernel's counters (a handle of its own on the pinned map, no lock taken).

use super::config::Config;
use super::datapath::{open_counters, CounterSums};
use aya::maps::{MapData, PerCpuArray};
use limiter_common::maps::Counter;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

/// Seconds of key creation compared with `max_keys`: a table turned over within them is warned
/// about.
pub const TURNOVER_WINDOW_SECS: usize = 10;
/// The least time between two warnings of a table turning over.
pub const TURNOVER_WARNING_INTERVAL: Duration = Duration::from_secs(60);
/// The least time between two lines on refused new keys.
pub const REFUSED_LOG_INTERVAL: Duration = Duration::from_secs(10);

struct Turnover {
    counters: PerCpuArray<MapData, u64>,
    /// The configuration in force (`max_keys`, `new_keys_per_sec`).
    config: watch::Receiver<Arc<Config>>,
    /// Keys created and first packets refused, as last read.
    seen: Option<(u64, u64)>,
    /// Keys created in each of the last [`TURNOVER_WINDOW_SECS`] seconds, oldest first.
    created: VecDeque<u64>,
    /// When the table turning over was last warned about.
    turnover_warned: Option<Instant>,
    /// First packets of new keys refused and not logged yet; since when.
    refused: u64,
    refused_since: Option<Instant>,
    /// When refused new keys were last logged.
    refused_logged: Option<Instant>,
    /// TLS handshakes on `[http]` ports were logged (once per agent run).
    tls_logged: bool,
}

/// Starts the task; its own handle on the pinned COUNTERS map is opened now, so that a failure
/// is an error at start.
pub fn spawn(pin_path: &Path, config: watch::Receiver<Arc<Config>>) -> anyhow::Result<()> {
    let mut turnover = Turnover {
        counters: open_counters(pin_path)?,
        config,
        seen: None,
        created: VecDeque::with_capacity(TURNOVER_WINDOW_SECS),
        turnover_warned: None,
        refused: 0,
        refused_since: None,
        refused_logged: None,
        tls_logged: false,
    };
    turnover.poll();
    tokio::spawn(async move {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(MissedTickBehavior::Skip);
        second.tick().await;
        loop {
            second.tick().await;
            turnover.poll();
        }
    });
    Ok(())
}

impl Turnover {
    /// Reads the counters and looks at what changed in the second that just ended.
    fn poll(&mut self) {
        let totals = match CounterSums::read(&self.counters) {
            Ok(sums) => sums.totals(None),
            Err(err) => {
                debug!("reading the datapath counters: {err:#}");
                return;
            }
        };
        let now = (
            totals.get(Counter::KeysCreated),
            totals.get(Counter::NewKeysRefused),
        );
        if let Some(seen) = self.seen {
            self.watch(now.0.wrapping_sub(seen.0), now.1.wrapping_sub(seen.1));
        }
        self.seen = Some(now);
        let tls = totals.get(Counter::TlsHandshakes);
        if tls > 0 && !self.tls_logged {
            let ports = self
                .config
                .borrow()
                .http
                .as_ref()
                .map(|h| format!("{:?}", h.ports()))
                .unwrap_or_default();
            warn!(
                handshakes = tls,
                "TLS handshakes arrive on the [http] ports {ports}: the limiter reads cleartext \
                 HTTP/1.x only, so these connections pass untouched, limited by their source \
                 alone (counted as tls_handshakes); point [http] ports at the cleartext leg \
                 behind the TLS terminator"
            );
            self.tls_logged = true;
        }
    }

    /// Warns, at most once per [`TURNOVER_WARNING_INTERVAL`], when the keys created over the
    /// last [`TURNOVER_WINDOW_SECS`] seconds reach `max_keys` with no bound on new keys; logs
    /// the first packets of new keys refused under a bound, at most once per
    /// [`REFUSED_LOG_INTERVAL`].
    fn watch(&mut self, created: u64, refused: u64) {
        let now = Instant::now();
        let due = |last: Option<Instant>, interval| last.is_none_or(|at| now - at >= interval);
        if self.created.len() == TURNOVER_WINDOW_SECS {
            self.created.pop_front();
        }
        self.created.push_back(created);
        let recent: u64 = self.created.iter().sum();
        let max_keys = self.config.borrow().agent.max_keys;
        let new_keys_per_sec = self
            .config
            .borrow()
            .agent
            .new_keys_per_sec
            .rate_and_burst(max_keys)
            .map(|(rate, _)| rate);
        if new_keys_per_sec.is_none()
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
        let Some(bound) = new_keys_per_sec else {
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
}
