//! What the agent's tasks share: the datapath behind its lock, the configuration in force
//! (published, so readers never take the datapath's lock for it), the overrides, and the
//! operations that change them — a reload, a change of overrides.

use super::config::{Config, ConfigSource, ResolvedRule};
use super::datapath::Datapath;
use super::error::AgentError;
use super::overrides::OverrideStore;
use crate::api::{ErrorCode, InterfaceInfo, ReloadResponse};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

pub struct AgentState {
    datapath: Mutex<Datapath>,
    /// The configuration in force, published on every reload.
    config: watch::Sender<Arc<Config>>,
    /// Attached interfaces; an interface's counter slot is its index here.
    pub interfaces: Vec<InterfaceInfo>,
    /// Where the configuration comes from.
    pub config_source: ConfigSource,
    /// Runtime overrides; lock before `datapath` when both are needed.
    pub overrides: Mutex<OverrideStore>,
    pub pin_path: PathBuf,
    /// Keys reset through this agent since it started (`limiter_resets_total`).
    pub resets: AtomicU64,
    /// Times a key became exhausted, as this agent learned (`limiter_exhaustion_events_total`).
    pub exhaustion_events: AtomicU64,
}

impl AgentState {
    /// `datapath` has `config` applied.
    pub fn new(
        datapath: Datapath,
        config: Config,
        config_source: ConfigSource,
        overrides: OverrideStore,
        interfaces: Vec<InterfaceInfo>,
        pin_path: PathBuf,
    ) -> AgentState {
        AgentState {
            datapath: Mutex::new(datapath),
            config: watch::Sender::new(Arc::new(config)),
            interfaces,
            config_source,
            overrides: Mutex::new(overrides),
            pin_path,
            resets: AtomicU64::new(0),
            exhaustion_events: AtomicU64::new(0),
        }
    }

    /// The datapath, for a blocking call (map walks and updates are syscalls).
    pub fn datapath(&self) -> MutexGuard<'_, Datapath> {
        self.datapath
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.borrow())
    }

    /// Follows the configuration in force: a new value on every reload.
    pub fn watch_config(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    /// Re-reads the config file and applies it, or refuses it and changes nothing. Shared by
    /// `limiter reload` and SIGHUP.
    pub fn reload_config(&self) -> Result<ReloadResponse, AgentError> {
        let refuse = |message: String| {
            tracing::warn!("reload refused: {message}");
            AgentError::new(ErrorCode::ReloadRefused, message)
        };
        let ConfigSource::File(path) = &self.config_source else {
            return Err(refuse(
                "the agent runs on the embedded default: there is no config file to re-read \
                 (restart it with --config PATH)"
                    .to_owned(),
            ));
        };
        let (config, _) = Config::load(Some(path)).map_err(|err| refuse(err.to_string()))?;
        let mut datapath = self.datapath();
        let running = self.config();
        if config.agent.max_keys != running.agent.max_keys {
            return Err(refuse(format!(
                "{}: [agent] max_keys cannot change while the agent runs (the bucket map was \
                 created with {}); put it back, or stop the agent, `limiter detach` and start it \
                 again (which drops every bucket)",
                path.display(),
                running.agent.max_keys
            )));
        }
        if let Err(err) = datapath.apply(&config) {
            // Put back what was in force; the error says what went wrong.
            let _ = datapath.apply(&running);
            return Err(AgentError::from(
                err.context("applying the new configuration"),
            ));
        }
        let rules = config.rules.len();
        self.config.send_replace(Arc::new(config));
        tracing::info!(path = %path.display(), rules, "configuration reloaded");
        Ok(ReloadResponse {
            reloaded: true,
            config: path.display().to_string(),
            rules,
        })
    }

    /// Applies the store's overrides to the datapath and saves them; on failure the datapath
    /// keeps what it had and the caller puts the store back.
    pub fn commit_overrides(&self, store: &OverrideStore) -> Result<(), AgentError> {
        let mut datapath = self.datapath();
        let resolved = resolved_overrides(store, &self.config());
        store.save()?;
        Ok(datapath.set_overrides(resolved)?)
    }
}

/// The overrides as the datapath applies them.
pub fn resolved_overrides(store: &OverrideStore, config: &Config) -> Vec<ResolvedRule> {
    store
        .list()
        .iter()
        .map(|o| o.resolved(config.default_limit()))
        .collect()
}
