//! The task that lifts overrides whose TTL has run out, and keeps the quota clock current.

use super::overrides;
use super::state::AgentState;
use std::sync::Arc;

/// Lifts overrides whose TTL has run out, every 200 ms.
pub async fn expire_overrides(state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tick.tick().await;
        let state = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || {
            match state.expire_overrides(overrides::now_ms()) {
                Ok(lapsed) => {
                    for o in &lapsed {
                        tracing::info!(cidr = %o.cidr, action = %o.action, "override expired");
                    }
                }
                // Tried again on the next tick.
                Err(err) => tracing::warn!("lifting expired overrides: {err}"),
            }
            if let Err(err) = state.refresh_quota_clock() {
                tracing::warn!("writing the quota clock: {err:#}");
            }
        })
        .await;
    }
}
