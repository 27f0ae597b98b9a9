//! The webhook sender: takes alerts off a bounded queue in batches and POSTs them as JSON, at
//! most one request per [`MIN_POST_INTERVAL`], retrying with backoff. A receiver that is slow or
//! down costs alerts (counted, and reported in the next batch that gets through), never the
//! reader, the API or enforcement.

use crate::agent::config::WebhookUrl;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, error, warn};

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
/// One alert as the webhook receives it: a key exhausted, or a key's quota use past a threshold
/// (told apart by `"kind"`, which exhaustion alerts have always left out).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Alert {
    Exhausted(ExhaustionAlert),
    QuotaThreshold(QuotaAlert),
    Fleet(FleetAlert),
}

/// The fleet's Redis became unreachable, or reachable again: `{"kind": "fleet_unreachable" |
/// "fleet_reconnected", "redis": "redis://10.0.0.5:6379/0", "host": "gw-1", "reason": "…" |
/// null, "at": "…"}` — once per outage each.
#[derive(Debug, Serialize)]
pub struct FleetAlert {
    pub kind: &'static str,
    /// The Redis URL, without its password.
    pub redis: String,
    /// This host's name in the fleet.
    pub host: String,
    /// Why it is unreachable; null when reconnected.
    pub reason: Option<String>,
    pub at: String,
}

impl FleetAlert {
    pub const UNREACHABLE: &'static str = "fleet_unreachable";
    pub const RECONNECTED: &'static str = "fleet_reconnected";
}

/// A key became exhausted.
#[derive(Debug, Serialize)]
pub struct ExhaustionAlert {
    pub key: String,
    pub rule: String,
    /// When the key's packet was refused (RFC 3339, UTC).
    pub at: String,
    pub interface: String,
    pub dry_run: bool,
}

/// An API key's use of its quota reached a threshold in this window: `{"kind":
/// "quota_threshold", "key": "key:acme", "plan": "pro", "threshold": 90, "used": …, "limit": …,
/// "period": "day", "resets_at": "…", "exhausts_at": … | null, "at": "…"}`.
#[derive(Debug, Serialize)]
pub struct QuotaAlert {
    /// Always `"quota_threshold"`.
    pub kind: &'static str,
    /// `key:NAME`, or `key:FINGERPRINT` for a key not registered: never the token.
    pub key: String,
    /// Its plan; null for `[http]`'s default.
    pub plan: Option<String>,
    /// Percent of the quota.
    pub threshold: u8,
    pub used: u64,
    pub limit: u64,
    pub period: String,
    /// When the window ends (RFC 3339, UTC).
    pub resets_at: String,
    /// When the key runs out at its recent rate; null when not this window.
    pub exhausts_at: Option<String>,
    /// When the agent saw the threshold reached.
    pub at: String,
}

impl QuotaAlert {
    pub const KIND: &'static str = "quota_threshold";
}

#[derive(Serialize)]
struct Payload<'a> {
    alerts: &'a [Alert],
    dropped: u64,
    suppressed: u64,
}

/// What the receiver has not been told yet, reported with the next POST that gets through.
#[derive(Default)]
pub struct Undelivered {
    /// Alerts dropped: queue full, or their batch given up.
    pub dropped: AtomicU64,
    /// Events the datapath did not emit (over its bound, or the ring buffer full).
    pub suppressed: AtomicU64,
}

/// Takes alerts off the queue in batches and POSTs them.
pub async fn send_alerts(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rfc3339;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_payload_has_the_documented_shape() {
        let alerts = [
            Alert::Exhausted(ExhaustionAlert {
                key: "198.18.0.10/32".to_owned(),
                rule: "default".to_owned(),
                at: rfc3339(UNIX_EPOCH),
                interface: "eth0".to_owned(),
                dry_run: false,
            }),
            Alert::QuotaThreshold(QuotaAlert {
                kind: QuotaAlert::KIND,
                key: "key:acme".to_owned(),
                plan: None,
                threshold: 90,
                used: 90,
                limit: 100,
                period: "day".to_owned(),
                resets_at: rfc3339(UNIX_EPOCH + std::time::Duration::from_secs(86_400)),
                exhausts_at: None,
                at: rfc3339(UNIX_EPOCH),
            }),
        ];
        let json = serde_json::to_value(Payload {
            alerts: &alerts,
            dropped: 2,
            suppressed: 3,
        })
        .unwrap();
        assert_eq!(json["alerts"][0]["key"], "198.18.0.10/32");
        assert_eq!(json["alerts"][0]["rule"], "default");
        assert_eq!(json["alerts"][0]["at"], "1970-01-01T00:00:00.000Z");
        assert!(json["alerts"][0].get("kind").is_none(), "as it always was");
        let quota = &json["alerts"][1];
        assert_eq!(quota["kind"], "quota_threshold");
        assert_eq!(quota["key"], "key:acme");
        assert!(quota["plan"].is_null() && quota["exhausts_at"].is_null());
        assert_eq!(
            (quota["threshold"].as_u64(), quota["used"].as_u64()),
            (Some(90), Some(90))
        );
        assert_eq!(quota["limit"].as_u64(), Some(100));
        assert_eq!(quota["period"], "day");
        assert_eq!(quota["resets_at"], "1970-01-02T00:00:00.000Z");
        assert_eq!(
            (json["dropped"].as_u64(), json["suppressed"].as_u64()),
            (Some(2), Some(3))
        );
    }
}
