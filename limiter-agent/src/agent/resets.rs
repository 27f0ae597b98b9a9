//! Resetting what a reset request selects — for the API, and for a reset another host of the
//! fleet made.

use super::datapath::Datapath;
use super::error::AgentError;
use super::selection::Selection;
use super::selectors::{parse_selector, Selector};
use super::state::AgentState;
use crate::api::{ResetRequest, ResetResponse};
use limiter_common::key::Prefix;
use std::sync::atomic::Ordering;

/// Resets what `request` selects (parsed in full first: a bad KEY changes nothing); what was
/// reset, and the token hashes of the API keys among it.
pub fn reset_keys(
    datapath: &Datapath,
    state: &AgentState,
    request: &ResetRequest,
) -> Result<(ResetResponse, Vec<u64>), AgentError> {
    // Parse every key before touching any bucket: a bad one changes nothing.
    let api = datapath.api();
    let selectors = request
        .keys
        .iter()
        .map(|k| parse_selector(k, &api))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sources = Vec::new();
    let mut api_keys = Vec::new();
    for (i, selector) in selectors.iter().enumerate() {
        match selector {
            Selector::Source(prefix) => sources.push((i, *prefix)),
            other => api_keys.push((i, other.clone())),
        }
    }
    // One walk of the map on raw entries; with `exhausted` only exhausted keys come back.
    let candidates = datapath.select(request.exhausted, None, None, None, None)?;
    let mut reset = 0;
    let mut hashes = Vec::new();
    let mut selection = Selection::new(sources.iter().map(|(_, p)| *p).collect());
    let mut selected = vec![false; selectors.len()];
    for key in candidates.keys() {
        let hash = limiter_common::charge::api_key_hash(key);
        let chosen = if request.all || request.exhausted {
            true
        } else if let Some(hash) = hash {
            let fingerprint = super::api_keys::fingerprint(hash);
            let mut hit = false;
            for (i, selector) in &api_keys {
                let hits = match selector {
                    Selector::ApiKey(_, wanted) => *wanted == hash,
                    Selector::Fingerprint(start) => fingerprint.starts_with(start.as_str()),
                    Selector::Source(_) => false,
                };
                if hits {
                    selected[*i] = true;
                    hit = true;
                }
            }
            hit
        } else {
            let hits =
                Prefix::from_bucket_key(key).map_or_else(Vec::new, |p| selection.selecting(&p));
            hits.iter().for_each(|&i| selected[sources[i].0] = true);
            !hits.is_empty()
        };
        let done = match (chosen, request.quota) {
            (false, _) => false,
            (true, true) => datapath.reset_quota(key)?,
            (true, false) => datapath.reset(key)?,
        };
        if done {
            reset += 1;
            hashes.extend(hash);
            state.resets.fetch_add(1, Ordering::Relaxed);
        }
    }
    let not_tracked = selectors
        .iter()
        .zip(selected)
        .filter(|(_, hit)| !hit)
        .map(|(w, _)| w.to_string())
        .collect();
    Ok((ResetResponse { reset, not_tracked }, hashes))
}
