//! What an operator changes on one host, applied on every host: registered keys, overrides and
//! resets made through an agent's API go to a Redis stream (`limiter:events`, bounded), which
//! every agent reads from where it left off at each sync and applies — the others' entries
//! only. A token never travels: a registered key is its token's hash (the hosts share
//! `[http] secret_file`, checked by the secret's id in each entry).

use super::super::api_keys::Registered;
use super::super::overrides::Override;
use super::super::state::AgentState;
use crate::api::ResetRequest;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use tracing::{info, warn};

/// The stream every host appends to and reads.
pub const STREAM: &str = "limiter:events";
/// Entries the stream keeps (about: `MAXLEN ~`); a host that falls further behind misses the
/// oldest.
pub const STREAM_LEN: u64 = 10_000;
/// The stream entry's field.
pub const FIELD: &str = "change";
/// Changes waiting to be sent at most (while Redis is unreachable); the oldest go first.
const OUTBOX_LEN: usize = 10_000;
/// How far back a host starts reading the stream when it connects.
const JOIN_LOOKBACK_MS: u64 = 2_000;
/// Entries read at most per sync.
pub const READ_COUNT: usize = 1_000;

/// One change made through an agent's API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    ApiKeyAdded {
        name: String,
        plan: Option<String>,
        /// The token's hash under the fleet's secret, in hex.
        hash: String,
        /// The id of the secret it was hashed under.
        secret: String,
    },
    ApiKeyRemoved {
        name: String,
    },
    OverrideSet {
        #[serde(rename = "override")]
        item: Override,
    },
    OverrideRemoved {
        cidr: String,
    },
    /// `limiter quota KEY --add N`: the window now of every host.
    QuotaTopUp {
        hash: String,
        add: u32,
    },
    Reset {
        request: ResetRequest,
        /// With `quota`: the API keys whose quota count the reset gave back, and the window
        /// (token hash in hex, window tag): the fleet's count of them starts anew.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        counts: Vec<(String, u32)>,
    },
}

/// A stream entry: the change and the host it was made on.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub host: String,
    pub change: Change,
}

/// Changes made here, waiting for the next sync to send them.
#[derive(Default)]
pub struct Outbox {
    waiting: Mutex<VecDeque<Change>>,
}

impl Outbox {
    pub fn push(&self, change: Change) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.len() == OUTBOX_LEN {
            waiting.pop_front();
            warn!("fleet: {OUTBOX_LEN} changes wait for Redis already: the oldest is dropped");
        }
        waiting.push_back(change);
    }

    pub fn take(&self) -> Vec<Change> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.drain(..).collect()
    }

    /// Puts back changes that could not be sent, before any made since.
    pub fn put_back(&self, changes: Vec<Change>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for change in changes.into_iter().rev() {
            if waiting.len() < OUTBOX_LEN {
                waiting.push_front(change);
            }
        }
    }
}

impl Change {
    pub fn api_key_added(key: &Registered, secret_id: String) -> Change {
        Change::ApiKeyAdded {
            name: key.name.clone(),
            plan: key.plan.clone(),
            hash: format!("{:016x}", key.hash),
            secret: secret_id,
        }
    }
}

/// The token hashes of a reset's `counts`.
fn reset_hashes(counts: &[(String, u32)]) -> Vec<u64> {
    counts
        .iter()
        .filter_map(|(hash, _)| u64::from_str_radix(hash, 16).ok())
        .collect()
}

/// Applies another host's entry here, as its API call did there; says what it did, or why
/// not. Never publishes again. The API keys whose quota count a reset gave back (the sync's
/// leases of them are dropped).
pub fn apply(state: &AgentState, text: &str) -> Vec<u64> {
    let entry: Entry = match serde_json::from_str(text) {
        Ok(entry) => entry,
        Err(err) => {
            warn!("fleet: an entry of {STREAM} is not a change of this build ({err}): skipped");
            return Vec::new();
        }
    };
    let from = entry.host;
    let done = match entry.change {
        Change::ApiKeyAdded {
            name,
            plan,
            hash,
            secret,
        } => {
            let ours = state.datapath().secret().map(|s| s.id());
            match (u64::from_str_radix(&hash, 16), ours) {
                (_, Some(ours)) if ours != secret => Err(format!(
                    "its token was hashed under another secret ({secret}, this host's: {ours}): \
                     the hosts of a fleet need the same [http] secret_file"
                )),
                (Ok(hash), _) => state
                    .register_api_key(name.clone(), plan, hash, false)
                    .map(|_| format!("API key '{name}' registered"))
                    .map_err(|e| e.to_string()),
                (Err(_), _) => Err(format!("{hash:?} is not a token hash")),
            }
        }
        Change::ApiKeyRemoved { name } => state
            .remove_api_key(&name, false)
            .map(|_| format!("API key '{name}' forgotten"))
            .map_err(|e| e.to_string()),
        Change::OverrideSet { item } => {
            let shown = format!("override {} {}", item.action, item.cidr);
            match item.check() {
                Err(why) => Err(why),
                Ok(()) => state
                    .change_overrides(|store| {
                        store.upsert(item);
                        Ok(())
                    })
                    .map(|()| format!("{shown} set"))
                    .map_err(|e| e.to_string()),
            }
        }
        Change::OverrideRemoved { cidr } => match cidr.parse() {
            Err(_) => Err(format!("{cidr:?} is not a prefix")),
            Ok(prefix) => state
                .change_overrides(|store| {
                    store.remove(&prefix);
                    Ok(())
                })
                .map(|()| format!("override {cidr} removed"))
                .map_err(|e| e.to_string()),
        },
        Change::QuotaTopUp { hash, add } => match u64::from_str_radix(&hash, 16) {
            Err(_) => Err(format!("{hash:?} is not a token hash")),
            Ok(hash) => match state.datapath().top_up_quota(hash, add) {
                Ok(Ok(quota)) => Ok(format!(
                    "quota of key:{} topped up by {add} (limit {} this window)",
                    super::super::api_keys::fingerprint(hash),
                    quota.limit
                )),
                Ok(Err(refusal)) => Err(refusal.to_string()),
                Err(err) => Err(format!("{err:#}")),
            },
        },
        Change::Reset { request, counts } => {
            let datapath = state.datapath();
            match super::super::resets::reset_keys(&datapath, state, &request) {
                Ok((response, _)) => {
                    info!(
                        host = %from,
                        reset = response.reset,
                        quota = request.quota,
                        "fleet: applied a reset from {from}"
                    );
                    return reset_hashes(&counts);
                }
                Err(err) => Err(err.to_string()),
            }
        }
    };
    match done {
        Ok(what) => info!(host = %from, "fleet: applied from {from}: {what}"),
        Err(why) => warn!(host = %from, "fleet: a change from {from} not applied here: {why}"),
    }
    Vec::new()
}

/// Where this host reads the stream from, and whether it said it cannot.
#[derive(Default)]
pub struct Reader {
    /// The id of the last entry read; none until the first exchange (which starts
    /// [`JOIN_LOOKBACK_MS`] back: a host applies what is changed as and after it joins).
    last_id: Option<String>,
    refused_said: bool,
}

/// Sends this host's changes and reads the others', in one round trip: the entries read, as
/// stream text (to apply off the async workers), and the keys whose quota this host's own
/// resets gave back (their leases are dropped). An error of the connection is Redis being
/// unreachable (the changes stay in the outbox); a stream under the name that is not one
/// (foreign data) is said once and the changes are not shared.
pub async fn exchange(
    conn: &mut redis::aio::ConnectionManager,
    reader: &mut Reader,
    outbox: &Outbox,
    host: &str,
) -> redis::RedisResult<(Vec<String>, Vec<u64>)> {
    let result = exchange_once(conn, reader, outbox, host).await;
    match result {
        Err(err) if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() => {
            Err(err)
        }
        Err(err) => {
            if !reader.refused_said {
                warn!(
                    "fleet: {STREAM} cannot be used ({err}): registered keys, overrides and \
                     resets made here stay here"
                );
                reader.refused_said = true;
            }
            Ok((Vec::new(), Vec::new()))
        }
        ok => ok,
    }
}

async fn exchange_once(
    conn: &mut redis::aio::ConnectionManager,
    reader: &mut Reader,
    outbox: &Outbox,
    host: &str,
) -> redis::RedisResult<(Vec<String>, Vec<u64>)> {
    use redis::streams::StreamReadReply;
    let last_id = match &reader.last_id {
        Some(id) => id.clone(),
        // A host starts with the changes of the last seconds, by Redis's clock (the stream's
        // ids are its milliseconds): none made as it connects is missed, and it does not
        // replay the stream's whole history.
        None => {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
            let ms = secs * 1000 + micros / 1000;
            format!("{}-0", ms.saturating_sub(JOIN_LOOKBACK_MS))
        }
    };
    let changes = outbox.take();
    let mut pipe = redis::pipe();
    for change in &changes {
        // A reset of quotas made here: the fleet's counts of those keys start anew.
        if let Change::Reset { counts, .. } = change {
            for (hash, tag) in counts {
                pipe.del(format!("{}:q:{tag}", super::redis_key_hex(hash)))
                    .ignore();
                pipe.del(format!("{}:h:{tag}", super::redis_key_hex(hash)))
                    .ignore();
            }
        }
        let entry = Entry {
            host: host.to_owned(),
            change: change.clone(),
        };
        let text = serde_json::to_string(&entry).expect("a change serializes");
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LEN)
            .arg("*")
            .arg(FIELD)
            .arg(text)
            .ignore();
    }
    pipe.cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(&last_id);
    let read: Result<(Option<StreamReadReply>,), _> = pipe.query_async(conn).await;
    let (read,) = match read {
        Ok(read) => read,
        Err(err) => {
            outbox.put_back(changes);
            return Err(err);
        }
    };
    let mut texts = Vec::new();
    let mut last = last_id;
    for entry in read.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
        last = entry.id.clone();
        match entry
            .map
            .get(FIELD)
            .map(|v| redis::from_redis_value::<String>(v.clone()))
        {
            Some(Ok(text)) => {
                // This host's own entries were applied when they were made.
                let mine = serde_json::from_str::<Entry>(&text).is_ok_and(|e| e.host == host);
                if !mine {
                    texts.push(text);
                }
            }
            _ => warn!(id = %entry.id, "fleet: an entry of {STREAM} without a change: skipped"),
        }
    }
    reader.last_id = Some(last);
    let reset = changes
        .iter()
        .flat_map(|change| match change {
            Change::Reset { counts, .. } => reset_hashes(counts),
            _ => Vec::new(),
        })
        .collect();
    Ok((texts, reset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_carry_no_token() {
        let key = Registered {
            name: "acme".into(),
            plan: Some("pro".into()),
            hash: 0x0123_4567_89ab_cdef,
            added_at_ms: 1,
        };
        let entry = Entry {
            host: "gw-1".into(),
            change: Change::api_key_added(&key, "0011aabb".into()),
        };
        let text = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            text,
            r#"{"host":"gw-1","change":{"kind":"api_key_added","name":"acme","plan":"pro","hash":"0123456789abcdef","secret":"0011aabb"}}"#
        );
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), entry);
        let reset = Entry {
            host: "gw-2".into(),
            change: Change::Reset {
                request: ResetRequest {
                    keys: vec!["key:acme".into()],
                    quota: true,
                    ..ResetRequest::default()
                },
                counts: vec![("0123456789abcdef".into(), 7)],
            },
        };
        let text = serde_json::to_string(&reset).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), reset);
    }

    #[test]
    fn foreign_entries_are_refused() {
        for text in [
            "",
            "{}",
            r#"{"host":"gw-1","change":{"kind":"format_disk"}}"#,
            r#"{"host":"gw-1","change":{"kind":"api_key_removed","name":"a","token":"x"}}"#,
        ] {
            assert!(serde_json::from_str::<Entry>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn the_outbox_keeps_order_when_a_send_fails() {
        let outbox = Outbox::default();
        let removed = |name: &str| Change::ApiKeyRemoved { name: name.into() };
        outbox.push(removed("a"));
        outbox.push(removed("b"));
        let taken = outbox.take();
        outbox.push(removed("c"));
        outbox.put_back(taken);
        assert_eq!(outbox.take(), [removed("a"), removed("b"), removed("c")]);
    }
}
