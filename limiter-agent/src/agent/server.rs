//! The JSON API on the Unix socket.

use super::config::{Action, Config, ConfigSource, ResolvedRule};
use super::datapath::Datapath;
use super::overrides::{self, Override, OverrideStore};
use crate::api::*;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use limiter_common::key::Prefix;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub struct AgentState {
    pub datapath: Mutex<Datapath>,
    /// Attached interfaces; an interface's counter slot is its index here.
    pub interfaces: Vec<InterfaceInfo>,
    /// Where the configuration comes from (the one in force is the datapath's).
    pub config_source: ConfigSource,
    /// Runtime overrides; lock before `datapath` when both are needed.
    pub overrides: Mutex<OverrideStore>,
    pub pin_path: PathBuf,
    /// Keys reset through this agent since it started (`limiter_resets_total`).
    pub resets: AtomicU64,
    /// Times a key became exhausted, as this agent learned (`limiter_exhaustion_events_total`).
    pub exhaustion_events: AtomicU64,
}

type Shared = Arc<AgentState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route(STATUS_PATH, get(status))
        .route(KEYS_PATH, get(list))
        .route(INSPECT_PATH, get(inspect))
        .route(RESET_PATH, post(reset))
        .route(RELOAD_PATH, post(reload))
        .route(
            OVERRIDES_PATH,
            get(list_overrides)
                .post(add_override)
                .delete(remove_override),
        )
        .with_state(state)
}

/// An error answer: status code and a message for a person.
pub struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Failure {
        Failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
    }
}

/// Runs `work` on the datapath off the async workers (map walks are blocking syscalls).
async fn with_datapath<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&Datapath, &AgentState) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || {
        let datapath = state
            .datapath
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        work(&datapath, &state)
    })
    .await
    .map_err(|err| Failure(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
}

async fn status(State(state): State<Shared>) -> Result<Json<Status>, Failure> {
    with_datapath(&state, |datapath, state| {
        let totals = datapath.counter_sums()?.totals(None);
        let (tracked, exhausted) = datapath.key_counts()?;
        let config = datapath.config();
        let limits = &config.limits;
        Ok(Json(Status {
            interfaces: state.interfaces.clone(),
            tracked_keys: tracked,
            exhausted_keys: exhausted,
            passed: totals.passed,
            dropped: totals.dropped,
            dry_run: limits.dry_run,
            would_drop: totals.would_drop,
            allowed_by_rule: totals.allowed_by_rule,
            denied_by_rule: totals.denied_by_rule,
            not_limited: totals.not_limited,
            unparsed: totals.unparsed,
            insert_failed: totals.insert_failed,
            evicted_keys: totals.keys_created.saturating_sub(tracked),
            contention_drops: totals.contention_drops,
            new_keys_refused: totals.new_keys_refused,
            rules: config.rules.len(),
            config: ConfigInfo {
                source: state.config_source.to_string(),
                rate: limits.rate.get(),
                burst: limits.burst.get(),
                ipv4_prefix: limits.ipv4_prefix,
                ipv6_prefix: limits.ipv6_prefix,
                max_keys: config.agent.max_keys,
                new_keys_per_sec: config.agent.new_keys_per_sec.map(NonZeroU64::get),
                pin_path: state.pin_path.display().to_string(),
            },
        }))
    })
    .await
}

/// Streams the answer: a million keys are written out in chunks as they are described, never
/// held in memory as one big JSON text.
async fn list(
    State(state): State<Shared>,
    Query(query): Query<ListQuery>,
) -> Result<Response, Failure> {
    let prefix = query.prefix.as_deref().map(parse_key).transpose()?;
    let list = with_datapath(&state, move |datapath, _| {
        Ok(datapath.select(query.exhausted, query.sort, query.top, prefix.as_ref())?)
    })
    .await?;
    let (chunks, body) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        const CHUNK: usize = 256 * 1024;
        let mut buf = Vec::with_capacity(CHUNK + 1024);
        buf.push(b'[');
        for (i, info) in list.infos().enumerate() {
            buf.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            serde_json::to_writer(&mut buf, &info).expect("a KeyInfo always serializes");
            if buf.len() >= CHUNK
                && chunks
                    .blocking_send(Ok(std::mem::take(&mut buf).into()))
                    .is_err()
            {
                return; // The client went away.
            }
        }
        buf.extend_from_slice(b"\n]\n");
        let _ = chunks.blocking_send(Ok(buf.into()));
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

fn parse_key(text: &str) -> Result<Prefix, Failure> {
    text.parse()
        .map_err(|err: limiter_common::key::PrefixError| {
            Failure(StatusCode::BAD_REQUEST, err.to_string())
        })
}

async fn inspect(
    State(state): State<Shared>,
    Query(query): Query<InspectQuery>,
) -> Result<Json<KeyInfo>, Failure> {
    let wanted = parse_key(&query.key)?;
    with_datapath(&state, move |datapath, _| {
        // An address's bucket in force is found with one lookup; a prefix, or an address whose
        // bucket is not there (stale buckets of other rules, or none), takes a walk of the map.
        let mut selected = None;
        if wanted.is_host() {
            selected = Some(datapath.select_in_force(&wanted)?).filter(|one| !one.is_empty());
        }
        let selected = match selected {
            Some(one) => one,
            None => datapath.select(false, None, None, Some(&wanted))?,
        };
        let overlapping: Vec<_> = selected.described().collect();
        // A source keeps the bucket of a rule that no longer applies to it (after a reload or
        // an override) until the LRU map evicts it: show the bucket in force.
        let in_force: Vec<_> = overlapping
            .iter()
            .filter(|(key, _)| {
                Prefix::from_bucket_key(key)
                    .is_some_and(|p| datapath.rule_in_force(&p).id == key.rule_id)
            })
            .cloned()
            .collect();
        let chosen = if in_force.is_empty() { overlapping } else { in_force };
        let mut matches: Vec<_> = chosen.into_iter().map(|(_, info)| info).collect();
        match matches.len() {
            0 => Err(Failure(
                StatusCode::NOT_FOUND,
                match datapath.rule_in_force(&wanted) {
                    rule if rule.action != Action::Limit => format!(
                        "{wanted} is not tracked: rule '{}' ({}) {} it without a bucket",
                        rule.name,
                        rule.cidr,
                        if rule.action == Action::Allow { "allows" } else { "denies" }
                    ),
                    _ => format!("{wanted} is not tracked: no packet from it since its key was last evicted, or ever"),
                },
            )),
            1 => Ok(Json(matches.remove(0))),
            n => {
                let names: Vec<_> = matches.iter().take(5).map(|k| k.key.as_str()).collect();
                Err(Failure(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{wanted} selects {n} tracked keys ({}{}); inspect takes one — name one of them, or use `limiter list`",
                        names.join(", "),
                        if n > 5 { ", …" } else { "" }
                    ),
                ))
            }
        }
    })
    .await
}

async fn reset(
    State(state): State<Shared>,
    Json(request): Json<ResetRequest>,
) -> Result<Json<ResetResponse>, Failure> {
    let selections = (!request.keys.is_empty()) as u8 + request.exhausted as u8 + request.all as u8;
    if selections != 1 {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "reset takes exactly one of: a list of keys, exhausted, all".to_owned(),
        ));
    }
    // Parse every key before touching any bucket: a bad one changes nothing.
    let wanted = request
        .keys
        .iter()
        .map(|k| parse_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    with_datapath(&state, move |datapath, state| {
        // One walk of the map on raw entries; with `exhausted` only exhausted keys come back.
        let candidates = datapath.select(request.exhausted, None, None, None)?;
        let mut reset = 0;
        let mut selected = vec![false; wanted.len()];
        for key in candidates.keys() {
            let chosen = if request.all || request.exhausted {
                true
            } else {
                let prefix = Prefix::from_bucket_key(key);
                let mut hit = false;
                for (i, w) in wanted.iter().enumerate() {
                    if prefix.is_some_and(|p| p.overlaps(w)) {
                        selected[i] = true;
                        hit = true;
                    }
                }
                hit
            };
            if chosen && datapath.reset(key)? {
                reset += 1;
                state.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
        let not_tracked = wanted
            .iter()
            .zip(selected)
            .filter(|(_, hit)| !hit)
            .map(|(w, _)| w.to_string())
            .collect();
        tracing::info!(reset, "reset keys");
        Ok(Json(ResetResponse { reset, not_tracked }))
    })
    .await
}

async fn reload(State(state): State<Shared>) -> Result<Json<ReloadResponse>, Failure> {
    let state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || reload_config(&state))
        .await
        .map_err(|err| Failure(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
        .map(Json)
}

/// Re-reads the config file and applies it, or refuses it and changes nothing. Shared by
/// `limiter reload` and SIGHUP.
pub fn reload_config(state: &AgentState) -> Result<ReloadResponse, Failure> {
    let refuse = |message: String| {
        tracing::warn!("reload refused: {message}");
        Failure(StatusCode::UNPROCESSABLE_ENTITY, message)
    };
    let ConfigSource::File(path) = &state.config_source else {
        return Err(refuse(
            "the agent runs on the embedded default: there is no config file to re-read \
             (restart it with --config PATH)"
                .to_owned(),
        ));
    };
    let (config, _) = Config::load(Some(path)).map_err(|err| refuse(err.to_string()))?;
    let mut datapath = state
        .datapath
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let running = datapath.config().clone();
    if config.agent.max_keys != running.agent.max_keys {
        return Err(refuse(format!(
            "{}: [agent] max_keys cannot change while the agent runs (the bucket map was created \
             with {}); put it back, or stop the agent, `limiter detach` and start it again \
             (which drops every bucket)",
            path.display(),
            running.agent.max_keys
        )));
    }
    if let Err(err) = datapath.apply(&config) {
        // Put back what was in force; the error says what went wrong.
        let _ = datapath.apply(&running);
        return Err(Failure::from(err.context("applying the new configuration")));
    }
    tracing::info!(path = %path.display(), rules = config.rules.len(), "configuration reloaded");
    Ok(ReloadResponse {
        reloaded: true,
        config: path.display().to_string(),
        rules: config.rules.len(),
    })
}

/// The overrides as the datapath applies them.
pub fn resolved_overrides(store: &OverrideStore, config: &Config) -> Vec<ResolvedRule> {
    store
        .list()
        .iter()
        .map(|o| o.resolved(config.default_limit()))
        .collect()
}

fn override_info(item: &Override, now_ms: u64) -> OverrideInfo {
    OverrideInfo {
        cidr: item.cidr.to_string(),
        action: format!("{:?}", item.action).to_lowercase(),
        rate: item.rate,
        burst: item.burst,
        expires_in_ms: item.expires_in_ms(now_ms),
        rule: item.name(),
    }
}

/// Applies the store's overrides to the datapath and saves them; on failure the datapath keeps
/// what it had and the caller puts the store back.
fn commit_overrides(state: &AgentState, store: &OverrideStore) -> Result<(), Failure> {
    let mut datapath = state.datapath.lock().unwrap_or_else(|p| p.into_inner());
    let resolved = resolved_overrides(store, datapath.config());
    store.save().map_err(Failure::from)?;
    datapath.set_overrides(resolved).map_err(Failure::from)
}

async fn list_overrides(State(state): State<Shared>) -> Json<Vec<OverrideInfo>> {
    let store = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
    let now = overrides::now_ms();
    Json(store.list().iter().map(|o| override_info(o, now)).collect())
}

async fn add_override(
    State(state): State<Shared>,
    Json(request): Json<OverrideRequest>,
) -> Result<Json<OverrideInfo>, Failure> {
    let cidr = parse_key(&request.cidr)?;
    let action = match request.action.as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        "limit" => Action::Limit,
        other => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                format!("unknown action '{other}': allow, deny or limit"),
            ))
        }
    };
    let (rate, burst) = match (action, request.rate, request.burst) {
        (Action::Limit, Some(rate), Some(burst)) if rate > 0 && burst > 0 => {
            super::config::check_limit(rate, burst)
                .map_err(|why| Failure(StatusCode::BAD_REQUEST, why))?;
            (Some(rate), Some(burst))
        }
        (Action::Limit, _, _) => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                "limit needs --rate and --burst, both at least 1".to_owned(),
            ))
        }
        _ => (None, None),
    };
    let now = overrides::now_ms();
    let item = Override {
        cidr,
        action,
        rate,
        burst,
        expires_at_ms: request.ttl_ms.map(|ttl| now.saturating_add(ttl)),
        created_at_ms: now,
    };
    let state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let mut store = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
        let before = store.list().to_vec();
        store.upsert(item.clone());
        if let Err(err) = commit_overrides(&state, &store) {
            for o in store.list().to_vec() {
                store.remove(&o.cidr);
            }
            before.into_iter().for_each(|o| store.upsert(o));
            return Err(err);
        }
        tracing::info!(cidr = %item.cidr, action = ?item.action, ttl_ms = ?request.ttl_ms, "override added");
        Ok(Json(override_info(&item, now)))
    })
    .await
    .map_err(|err| Failure(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
}

async fn remove_override(
    State(state): State<Shared>,
    Query(query): Query<OverrideQuery>,
) -> Result<Json<OverrideRemoved>, Failure> {
    let cidr = parse_key(&query.cidr)?;
    let state = Arc::clone(&state);
    tokio::task::spawn_blocking(move || {
        let mut store = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = store.list().iter().find(|o| o.cidr == cidr).cloned() else {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("there is no override for {cidr} (see `limiter overrides`)"),
            ));
        };
        store.remove(&cidr);
        if let Err(err) = commit_overrides(&state, &store) {
            store.upsert(old);
            return Err(err);
        }
        tracing::info!(%cidr, "override removed");
        Ok(Json(OverrideRemoved { removed: 1 }))
    })
    .await
    .map_err(|err| Failure(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
}

/// Removes overrides whose TTL has run out, every 200 ms.
pub async fn expire_overrides(state: Shared) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tick.tick().await;
        let state = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || {
            let mut store = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
            let lapsed = store.expire(overrides::now_ms());
            if lapsed.is_empty() {
                return;
            }
            match commit_overrides(&state, &store) {
                Ok(()) => {
                    for o in &lapsed {
                        tracing::info!(cidr = %o.cidr, action = ?o.action, "override expired");
                    }
                }
                Err(Failure(_, err)) => {
                    // Try again on the next tick.
                    lapsed.into_iter().for_each(|o| store.upsert(o));
                    tracing::warn!("removing expired overrides: {err}");
                }
            }
        })
        .await;
    }
}
