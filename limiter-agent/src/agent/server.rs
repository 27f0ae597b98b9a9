//! The JSON API on the Unix socket: one handler per path, each turning a request into a call
//! on the shared state and the answer (or an [`AgentError`]) into JSON.

use super::config::Action;
use super::datapath::Datapath;
use super::error::AgentError;
use super::overrides::{self, Override};
use super::quotas::TopUpRefusal;
use super::resets::reset_keys;
use super::selection::MAX_KEYS_PER_REQUEST;
use super::selectors::{parse_key, parse_selector, Selector};
use super::state::AgentState;
use crate::api::*;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use limiter_common::key::Prefix;
use std::sync::Arc;

type Shared = Arc<AgentState>;

/// Who is calling: the peer credentials of the connection, logged with every change.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    /// -1 where the kernel does not say.
    pub pid: i32,
}

impl Caller {
    /// The peer credentials of an API connection.
    pub fn of(stream: &tokio::net::UnixStream) -> Caller {
        match stream.peer_cred() {
            Ok(cred) => Caller {
                uid: cred.uid(),
                pid: cred.pid().unwrap_or(-1),
            },
            Err(_) => Caller {
                uid: u32::MAX,
                pid: -1,
            },
        }
    }
}

pub fn router(state: Shared) -> Router {
    Router::new()
        .route(STATUS_PATH, get(status))
        .route(KEYS_PATH, get(list))
        .route(INSPECT_PATH, get(inspect))
        .route(RESET_PATH, post(reset))
        .route(QUOTA_PATH, get(quota).post(top_up_quota))
        .route(FLEET_PATH, get(fleet))
        .route(RELOAD_PATH, post(reload))
        .route(
            OVERRIDES_PATH,
            get(list_overrides)
                .post(add_override)
                .delete(remove_override),
        )
        .route(API_KEYS_PATH, post(add_api_key).delete(remove_api_key))
        .route(USAGE_PATH, get(usage))
        .with_state(state)
}

/// Runs `work` on the datapath off the async workers (map walks are blocking syscalls).
async fn with_datapath<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&Datapath, &AgentState) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state.datapath(), &state)).await?
}

/// Runs `work` on the state off the async workers.
async fn blocking<T: Send + 'static>(
    state: &Shared,
    work: impl FnOnce(&AgentState) -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    let state = Arc::clone(state);
    tokio::task::spawn_blocking(move || work(&state)).await?
}

async fn status(State(state): State<Shared>) -> Result<Json<Status>, AgentError> {
    with_datapath(&state, |datapath, state| {
        let counters = datapath.counter_sums()?.totals(None);
        let (tracked, exhausted) = datapath.key_counts()?;
        let config = state.config();
        let limits = &config.limits;
        Ok(Json(Status {
            interfaces: state.interfaces.iter().map(|i| i.info()).collect(),
            tracked_keys: tracked,
            exhausted_keys: exhausted,
            dry_run: limits.dry_run,
            evicted_keys: counters
                .get(limiter_common::maps::Counter::KeysCreated)
                .saturating_sub(tracked),
            counters,
            rules: config.rules.len(),
            config: ConfigInfo {
                source: state.config_source.to_string(),
                rate: limits.rate.get(),
                burst: limits.burst.get(),
                ipv4_prefix: limits.ipv4_prefix,
                ipv6_prefix: limits.ipv6_prefix,
                max_keys: config.agent.max_keys,
                new_keys_per_sec: config
                    .agent
                    .new_keys_per_sec
                    .rate_and_burst(config.agent.max_keys)
                    .map(|(rate, _)| rate),
                new_keys_burst: config
                    .agent
                    .new_keys_per_sec
                    .rate_and_burst(config.agent.max_keys)
                    .map(|(_, burst)| burst),
                new_keys_bound: config.agent.new_keys_per_sec.source().to_owned(),
                pin_path: state.pin_path.display().to_string(),
            },
            fleet: state.fleet_info().map(|info| FleetSync {
                connected: info.connected,
                lag_ms: info.lag_ms,
            }),
        }))
    })
    .await
}

/// Streams the answer: a million keys are written out in chunks as they are described, never
/// held in memory as one big JSON text.
async fn list(
    State(state): State<Shared>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, AgentError> {
    let Query(query) = query?;
    let prefix = query.prefix.as_deref().map(parse_key).transpose()?;
    let list = with_datapath(&state, move |datapath, _| {
        Ok(datapath.select(
            query.exhausted,
            query.sort,
            query.top,
            prefix.as_ref(),
            query.kind,
        )?)
    })
    .await?;
    let (chunks, body) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        const CHUNK: usize = 256 * 1024;
        // A client that stops reading gets this long before the list is dropped.
        const STALLED: std::time::Duration = std::time::Duration::from_secs(5);
        let send = |chunk: Vec<u8>| {
            let sent =
                runtime.block_on(tokio::time::timeout(STALLED, chunks.send(Ok(chunk.into()))));
            match sent {
                Ok(Ok(())) => true,
                // The client went away.
                Ok(Err(_)) => false,
                Err(_) => {
                    tracing::warn!(
                        "a client stopped reading the key list for {STALLED:?}: stopped sending it"
                    );
                    false
                }
            }
        };
        let mut buf = Vec::with_capacity(CHUNK + 1024);
        buf.push(b'[');
        for (i, info) in list.infos().enumerate() {
            buf.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            serde_json::to_writer(&mut buf, &info).expect("a KeyInfo always serializes");
            if buf.len() >= CHUNK && !send(std::mem::take(&mut buf)) {
                return;
            }
        }
        buf.extend_from_slice(b"\n]\n");
        send(buf);
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

async fn inspect(
    State(state): State<Shared>,
    query: Result<Query<InspectQuery>, QueryRejection>,
) -> Result<Json<KeyInfo>, AgentError> {
    let Query(query) = query?;
    with_datapath(&state, move |datapath, _| {
        let wanted = match parse_selector(&query.key, &datapath.api())? {
            Selector::Source(prefix) => prefix,
            Selector::ApiKey(name, hash) => {
                let mut one: Vec<_> = datapath.select_api_key(hash)?.infos().collect();
                return one.pop().map(Json).ok_or_else(|| {
                    AgentError::new(
                        ErrorCode::NotTracked,
                        format!(
                            "key:{name} is registered, but not tracked: no request with it since \
                             its bucket was last evicted, or ever"
                        ),
                    )
                });
            }
            Selector::Fingerprint(start) => {
                let (list, total) = datapath.api_keys_starting(&start, 5)?;
                let mut found: Vec<_> = list.infos().collect();
                return match total {
                    0 => Err(AgentError::new(
                        ErrorCode::NotTracked,
                        format!("no tracked API key has a fingerprint starting with {start}"),
                    )),
                    1 => Ok(Json(found.remove(0))),
                    n => Err(AgentError::new(
                        ErrorCode::AmbiguousKey,
                        format!(
                            "key:{start} selects {n} tracked API keys ({}{}); inspect takes one — \
                             give more of the fingerprint",
                            found.iter().map(|k| k.key.as_str()).collect::<Vec<_>>().join(", "),
                            if n > found.len() { ", …" } else { "" }
                        ),
                    )),
                };
            }
        };
        // An address's bucket in force is found with one lookup; a prefix, or an address whose
        // bucket is not there (stale buckets of other rules, or none), takes a walk of the map.
        // Beyond a few dozen keys a KEY is too wide to inspect whatever they are: only that many
        // are kept, and counted.
        const KEEP: usize = 64;
        let mut selected = None;
        if wanted.is_host() {
            selected = Some(datapath.select_in_force(&wanted)?)
                .filter(|one| !one.is_empty())
                .map(|one| (one, 1));
        }
        let (selected, total) = match selected {
            Some(one) => one,
            None => datapath.overlapping(&wanted, KEEP)?,
        };
        if total > KEEP {
            let names: Vec<_> = selected.infos().take(5).map(|k| k.key).collect();
            return Err(AgentError::new(
                ErrorCode::AmbiguousKey,
                format!(
                    "{wanted} selects {total} tracked keys ({}, …); inspect takes one — name one \
                     of them, or use `limiter list`",
                    names.join(", ")
                ),
            ));
        }
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
            0 => Err(AgentError::new(
                ErrorCode::NotTracked,
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
                Err(AgentError::new(
                    ErrorCode::AmbiguousKey,
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
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Result<Json<ResetRequest>, JsonRejection>,
) -> Result<Json<ResetResponse>, AgentError> {
    let Json(request) = request?;
    let selections = (!request.keys.is_empty()) as u8 + request.exhausted as u8 + request.all as u8;
    if selections != 1 {
        return Err(AgentError::bad_request(
            "reset takes exactly one of: a list of keys, exhausted, all",
        ));
    }
    if request.keys.len() > MAX_KEYS_PER_REQUEST {
        return Err(AgentError::bad_request(format!(
            "reset takes at most {MAX_KEYS_PER_REQUEST} KEYs at once ({} given): name prefixes \
             that cover them, or send several",
            request.keys.len()
        )));
    }
    with_datapath(&state, move |datapath, state| {
        let (response, hashes) = reset_keys(datapath, state, &request)?;
        tracing::info!(
            reset = response.reset,
            keys = request.keys.len(),
            exhausted = request.exhausted,
            all = request.all,
            quota = request.quota,
            uid = caller.uid,
            pid = caller.pid,
            "reset keys"
        );
        if state.config().fleet.is_some() {
            let counts = match request.quota {
                true => hashes
                    .iter()
                    .filter_map(|&hash| {
                        let tag = super::fleet::quota_window(datapath, hash)?;
                        Some((format!("{hash:016x}"), tag))
                    })
                    .collect(),
                false => Vec::new(),
            };
            state.publish(super::fleet::events::Change::Reset { request, counts });
        }
        Ok(Json(response))
    })
    .await
}

/// The API key a quota call is about: its token hash and its name as shown.
fn quota_key(text: &str, datapath: &Datapath) -> Result<(u64, String), AgentError> {
    let api = datapath.api();
    match parse_selector(text, &api)? {
        Selector::ApiKey(_, hash) => Ok((hash, api.names(hash).0)),
        Selector::Fingerprint(start) => {
            let (list, total) = datapath.api_keys_starting(&start, 2)?;
            let hash = list.keys().find_map(limiter_common::charge::api_key_hash);
            match (total, hash) {
                (1, Some(hash)) => Ok((hash, api.names(hash).0)),
                (0, _) | (_, None) => Err(AgentError::new(
                    ErrorCode::NotTracked,
                    format!("no tracked API key has a fingerprint starting with {start}"),
                )),
                (n, _) => Err(AgentError::new(
                    ErrorCode::AmbiguousKey,
                    format!(
                        "key:{start} selects {n} tracked API keys; a quota call is about one — \
                         give more of the fingerprint"
                    ),
                )),
            }
        }
        Selector::Source(prefix) => Err(AgentError::bad_request(format!(
            "{prefix} is an address: only API keys (key:NAME, key:FINGERPRINT) have quotas"
        ))),
    }
}

async fn quota(
    State(state): State<Shared>,
    query: Result<Query<InspectQuery>, QueryRejection>,
) -> Result<Json<QuotaResponse>, AgentError> {
    let Query(query) = query?;
    with_datapath(&state, move |datapath, _| {
        let (hash, shown) = quota_key(&query.key, datapath)?;
        let quota = datapath
            .quota_info_of(hash)
            .ok_or_else(|| AgentError::bad_request(format!("{shown} {}", TopUpRefusal::NoQuota)))?;
        Ok(Json(QuotaResponse { key: shown, quota }))
    })
    .await
}

async fn top_up_quota(
    State(state): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Result<Json<QuotaTopUpRequest>, JsonRejection>,
) -> Result<Json<QuotaResponse>, AgentError> {
    let Json(request) = request?;
    let add = match u32::try_from(request.add) {
        Ok(0) => {
            return Err(AgentError::bad_request(
                "nothing to add: a top-up is a positive number of requests",
            ))
        }
        Ok(add) => add,
        Err(_) => {
            return Err(AgentError::bad_request(format!(
                "{} requests is more than a quota window counts (at most {})",
                request.add,
                u32::MAX
            )))
        }
    };
    with_datapath(&state, move |datapath, state| {
        let (hash, shown) = quota_key(&request.key, datapath)?;
        let quota = datapath.top_up_quota(hash, add)?.map_err(|refusal| {
            let code = match refusal {
                TopUpRefusal::Full => ErrorCode::Capacity,
                _ => ErrorCode::BadRequest,
            };
            AgentError::new(code, format!("{shown} {refusal}"))
        })?;
        tracing::info!(
            key = %shown,
            added = add,
            added_this_window = quota.added,
            limit = quota.limit,
            uid = caller.uid,
            pid = caller.pid,
            "quota topped up"
        );
        state.publish(super::fleet::events::Change::QuotaTopUp {
            hash: format!("{hash:016x}"),
            add,
        });
        Ok(Json(QuotaResponse { key: shown, quota }))
    })
    .await
}

async fn fleet(State(state): State<Shared>) -> Result<Json<FleetInfo>, AgentError> {
    let info = state.fleet_info().ok_or_else(|| {
        AgentError::bad_request(
            "this agent has no [fleet] in its configuration: it counts alone (see `[fleet]` in \
             docs/configuration.md)",
        )
    })?;
    Ok(Json(info))
}

async fn reload(
    State(state): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
) -> Result<Json<ReloadResponse>, AgentError> {
    tracing::info!(uid = caller.uid, pid = caller.pid, "reload asked");
    blocking(&state, |state| state.reload_config().map(Json)).await
}

fn override_info(item: &Override, now_ms: u64) -> OverrideInfo {
    OverrideInfo {
        cidr: item.cidr.to_string(),
        action: item.action,
        rate: item.rate,
        burst: item.burst,
        expires_in_ms: item.expires_in_ms(now_ms),
        rule: item.name(),
    }
}

async fn list_overrides(State(state): State<Shared>) -> Json<Vec<OverrideInfo>> {
    let store = state.overrides.lock().unwrap_or_else(|p| p.into_inner());
    let now = overrides::now_ms();
    Json(store.list().iter().map(|o| override_info(o, now)).collect())
}

async fn add_override(
    State(state): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Result<Json<OverrideRequest>, JsonRejection>,
) -> Result<Json<OverrideInfo>, AgentError> {
    let Json(request) = request?;
    if request
        .ttl_ms
        .is_some_and(|ttl| ttl > MAX_TTL.as_millis() as u64)
    {
        return Err(AgentError::bad_request(format!(
            "a TTL of at most {} (without one, an override stays until removed)",
            humantime::format_duration(MAX_TTL)
        )));
    }
    let cidr = parse_key(&request.cidr)?;
    let action = request.action;
    let (rate, burst) = match (action, request.rate, request.burst) {
        (Action::Limit, Some(rate), Some(burst)) if rate > 0 && burst > 0 => {
            super::config::check_limit(rate, burst).map_err(AgentError::bad_request)?;
            (Some(rate), Some(burst))
        }
        (Action::Limit, _, _) => {
            return Err(AgentError::bad_request(
                "limit needs --rate and --burst, both at least 1",
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
    blocking(&state, move |state| {
        state.change_overrides(|store| {
            store.upsert(item.clone());
            Ok(())
        })?;
        tracing::info!(
            cidr = %item.cidr,
            action = %item.action,
            ttl_ms = ?request.ttl_ms,
            uid = caller.uid,
            pid = caller.pid,
            "override added"
        );
        state.publish(super::fleet::events::Change::OverrideSet { item: item.clone() });
        Ok(Json(override_info(&item, now)))
    })
    .await
}

async fn remove_override(
    State(state): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    query: Result<Query<OverrideQuery>, QueryRejection>,
) -> Result<Json<OverrideRemoved>, AgentError> {
    let Query(query) = query?;
    let cidr = parse_key(&query.cidr)?;
    blocking(&state, move |state| {
        state.change_overrides(|store| match store.remove(&cidr) {
            true => Ok(()),
            false => Err(AgentError::new(
                ErrorCode::NoSuchOverride,
                format!("there is no override for {cidr} (see `limiter overrides`)"),
            )),
        })?;
        tracing::info!(%cidr, uid = caller.uid, pid = caller.pid, "override removed");
        state.publish(super::fleet::events::Change::OverrideRemoved {
            cidr: cidr.to_string(),
        });
        Ok(Json(OverrideRemoved { removed: 1 }))
    })
    .await
}

async fn add_api_key(
    State(state): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    request: Result<Json<AddApiKey>, JsonRejection>,
) -> Result<Json<ApiKeyAdded>, AgentError> {
    let Json(request) = request?;
    blocking(&state, move |state| {
        let added = state.add_api_key(request.name, request.plan, request.token.as_bytes())?;
        tracing::info!(
            key = %added.name,
            plan = added.plan.as_deref().unwrap_or("[http] default"),
            fingerprint = %added.fingerprint,
            uid = caller.uid,
            pid = caller.pid,
            "API key registered"
        );
        Ok(Json(added))
    })
    .await
}

async fn remove_api_key(
    State(state): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    query: Result<Query<ApiKeyQuery>, QueryRejection>,
) -> Result<Json<ApiKeyAdded>, AgentError> {
    let Query(query) = query?;
    blocking(&state, move |state| {
        let removed = state.remove_api_key(&query.name, true)?;
        tracing::info!(key = %removed.name, uid = caller.uid, pid = caller.pid, "API key forgotten");
        Ok(Json(ApiKeyAdded {
            name: removed.name,
            plan: removed.plan,
            fingerprint: super::api_keys::fingerprint(removed.hash),
        }))
    })
    .await
}

async fn usage(
    State(state): State<Shared>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<Vec<UsageSeries>>, AgentError> {
    use super::usage::Wanted;
    let Query(query) = query?;
    blocking(&state, move |state| {
        let history = state.usage.get().ok_or_else(|| {
            AgentError::internal(
                "this agent keeps no usage history: it could not open it when it started (its \
                 log says why)",
            )
        })?;
        let api = state.datapath().api();
        let wanted = match query.key.as_deref() {
            None => None,
            Some(text) => {
                let selector = parse_selector(text, &api)?;
                let wanted = match &selector {
                    Selector::Source(prefix) => Wanted::Source(*prefix),
                    Selector::ApiKey(_, hash) => Wanted::ApiKey(*hash),
                    Selector::Fingerprint(start) => Wanted::Fingerprint(start.clone()),
                };
                Some((wanted, selector.to_string()))
            }
        };
        let keep = state.config().usage.keys;
        let series = super::usage::answer(
            history.store(),
            &api,
            &query,
            wanted,
            keep,
            std::time::SystemTime::now(),
        )?;
        Ok(Json(series))
    })
    .await
}
