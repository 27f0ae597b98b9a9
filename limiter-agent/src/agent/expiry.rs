//! The task that lifts overrides whose TTL has run out.

use super::overrides;
use super::state::AgentState;
use std::sync::Arc;

/// Removes overrides whose TTL has run out, every 200 ms.
pub async fn expire_overrides(state: Arc<AgentState>) {
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
            match state.commit_overrides(&store) {
                Ok(()) => {
                    for o in &lapsed {
                        tracing::info!(cidr = %o.cidr, action = %o.action, "override expired");
                    }
                }
                Err(err) => {
                    // Try again on the next tick.
                    lapsed.into_iter().for_each(|o| store.upsert(o));
                    tracing::warn!("removing expired overrides: {err}");
                }
            }
        })
        .await;
    }
}
