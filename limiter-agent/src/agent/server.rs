//! The JSON API on the Unix socket.

use super::config::{Action, Config, ConfigSource};
use super::datapath::Datapath;
use crate::api::*;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use limiter_common::key::Prefix;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct AgentState {
    pub datapath: Mutex<Datapath>,
    pub interfaces: Vec<InterfaceInfo>,
    pub config: Config,
    pub config_source: ConfigSource,
    pub pin_path: PathBuf,
}

type Shared = Arc<AgentState>;

pub fn router(state: Shared) -> Router {
    Router::new()
        .route(STATUS_PATH, get(status))
        .route(KEYS_PATH, get(list))
        .route(INSPECT_PATH, get(inspect))
        .route(RESET_PATH, post(reset))
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
        let totals = datapath.totals()?;
        let keys = datapath.keys()?;
        let limits = &state.config.limits;
        Ok(Json(Status {
            interfaces: state.interfaces.clone(),
            tracked_keys: keys.len() as u64,
            exhausted_keys: keys.iter().filter(|(_, k)| k.exhausted).count() as u64,
            passed: totals.passed,
            dropped: totals.dropped,
            dry_run: limits.dry_run,
            would_drop: totals.would_drop,
            allowed_by_rule: totals.allowed_by_rule,
            denied_by_rule: totals.denied_by_rule,
            not_limited: totals.not_limited,
            unparsed: totals.unparsed,
            insert_failed: totals.insert_failed,
            evicted_keys: totals.keys_created.saturating_sub(keys.len() as u64),
            contention_drops: totals.contention_drops,
            rules: state.config.rules.len(),
            config: ConfigInfo {
                source: state.config_source.to_string(),
                rate: limits.rate.get(),
                burst: limits.burst.get(),
                ipv4_prefix: limits.ipv4_prefix,
                ipv6_prefix: limits.ipv6_prefix,
                max_keys: state.config.agent.max_keys,
                pin_path: state.pin_path.display().to_string(),
            },
        }))
    })
    .await
}

async fn list(
    State(state): State<Shared>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<KeyInfo>>, Failure> {
    with_datapath(&state, move |datapath, _| {
        Ok(Json(datapath.list(
            query.exhausted,
            query.sort,
            query.top,
        )?))
    })
    .await
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
    with_datapath(&state, move |datapath, state| {
        let mut matches: Vec<_> = datapath
            .keys()?
            .into_iter()
            .filter(|(key, _)| Prefix::from_bucket_key(key).is_some_and(|p| p.overlaps(&wanted)))
            .map(|(_, info)| info)
            .collect();
        match matches.len() {
            0 => Err(Failure(
                StatusCode::NOT_FOUND,
                match state.config.rule_for(&wanted) {
                    Some(rule) if rule.action != Action::Limit => format!(
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
    with_datapath(&state, move |datapath, _| {
        let keys = datapath.keys()?;
        let mut reset = 0;
        let mut selected = vec![false; wanted.len()];
        for (key, info) in &keys {
            let chosen = if request.all {
                true
            } else if request.exhausted {
                info.exhausted
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
