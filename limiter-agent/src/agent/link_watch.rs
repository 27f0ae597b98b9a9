//! Notices when the program is taken off an interface behind the agent's back (`limiter detach`
//! while it runs unpins the link, and the link goes with its pin): the interface is then shown
//! as detached in `status`, and said so in the log, instead of the agent pretending to enforce.

use super::state::AgentState;
use crate::pins::link_pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info};

/// Looks at every interface's pinned link once a second.
pub async fn watch_links(state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        for iface in &state.interfaces {
            let attached = link_pin(&state.pin_path, &iface.name).exists();
            let was = iface.attached.swap(attached, Ordering::Relaxed);
            match (was, attached) {
                (true, false) => error!(
                    iface = %iface.name,
                    "the program is no longer attached to {} (its pinned link is gone: \
                     `limiter detach`?): packets there are NOT limited; restart the agent to \
                     attach it again",
                    iface.name
                ),
                (false, true) => info!(iface = %iface.name, "the program's link is back"),
                _ => {}
            }
        }
    }
}
