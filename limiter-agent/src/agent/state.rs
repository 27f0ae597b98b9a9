//! What the agent's tasks share: the datapath behind its lock, the configuration in force
//! (published, so readers never take the datapath's lock for it), the overrides, and the
//! operations that change them — a reload, a change of overrides.

use super::api_keys::{self, AddError, ApiKeyStore, Registered};
use super::config::{Config, ConfigSource, ResolvedRule};
use super::datapath::Datapath;
use super::error::AgentError;
use super::overrides::{Override, OverrideStore};
use crate::api::{ApiKeyAdded, ErrorCode, InterfaceInfo, ReloadResponse};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use tokio::sync::watch;

pub struct AgentState {
    /// Read by every API call and scrape at once; written by a reload or a change of overrides.
    datapath: RwLock<Datapath>,
    /// The configuration in force, published on every reload.
    config: watch::Sender<Arc<Config>>,
    /// Attached interfaces; an interface's counter slot is its index here.
    pub interfaces: Vec<Interface>,
    /// Where the configuration comes from.
    pub config_source: ConfigSource,
    /// Runtime overrides; lock before `datapath` when both are needed.
    pub overrides: Mutex<OverrideStore>,
    /// Registered API keys; lock before `datapath` when both are needed.
    api_keys: Mutex<ApiKeyStore>,
    pub pin_path: PathBuf,
    /// Keys reset through this agent since it started (`limiter_resets_total`).
    pub resets: AtomicU64,
    /// Times a key became exhausted, as this agent learned (`limiter_exhaustion_events_total`).
    pub exhaustion_events: AtomicU64,
    /// Quota threshold alerts by threshold (percent) since the agent started
    /// (`limiter_quota_alerts_total{threshold}`).
    quota_alerts: Mutex<std::collections::BTreeMap<u8, u64>>,
    /// The usage history, once opened (not set when it cannot be).
    pub usage: std::sync::OnceLock<Arc<super::usage::History>>,
    /// With `[fleet]`: the sync task's status.
    /// The webhook's queue, for alerts of other tasks than the event reader's (the fleet's).
    pub alerts: std::sync::OnceLock<tokio::sync::mpsc::Sender<super::events::webhook::Alert>>,
    /// With `[fleet]`: changes made through this agent's API, for the other hosts.
    pub fleet_outbox: super::fleet::events::Outbox,
    /// With `[fleet]`: the sync task's status (none without, or before the task starts).
    pub fleet: Mutex<Option<Arc<Mutex<super::fleet::FleetStatus>>>>,
}

/// An interface the agent attached the program to.
pub struct Interface {
    pub name: String,
    /// "native" or "skb".
    pub mode: String,
    /// Cleared when the program's pinned link disappears (see `link_watch`).
    pub attached: AtomicBool,
    /// The egress program (`[http] keep_alive`) is attached too.
    pub egress: bool,
}

impl Interface {
    pub fn new(name: String, mode: String, egress: bool) -> Interface {
        Interface {
            name,
            mode,
            attached: AtomicBool::new(true),
            egress,
        }
    }

    pub fn info(&self) -> InterfaceInfo {
        InterfaceInfo {
            name: self.name.clone(),
            mode: self.mode.clone(),
            attached: self.attached.load(Ordering::Relaxed),
        }
    }
}

impl AgentState {
    /// `datapath` has `config` applied.
    pub fn new(
        datapath: Datapath,
        config: Config,
        config_source: ConfigSource,
        overrides: OverrideStore,
        api_keys: ApiKeyStore,
        interfaces: Vec<Interface>,
        pin_path: PathBuf,
    ) -> AgentState {
        AgentState {
            datapath: RwLock::new(datapath),
            config: watch::Sender::new(Arc::new(config)),
            interfaces,
            config_source,
            overrides: Mutex::new(overrides),
            api_keys: Mutex::new(api_keys),
            pin_path,
            resets: AtomicU64::new(0),
            exhaustion_events: AtomicU64::new(0),
            quota_alerts: Mutex::default(),
            usage: std::sync::OnceLock::new(),
            alerts: std::sync::OnceLock::new(),
            fleet_outbox: Default::default(),
            fleet: Mutex::new(None),
        }
    }

    /// Counts one quota alert of `threshold` percent.
    pub fn count_quota_alert(&self, threshold: u8) {
        *self
            .quota_alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(threshold)
            .or_default() += 1;
    }

    /// Quota alerts sent by threshold, the thresholds in force included (at 0 if none yet).
    pub fn quota_alerts(&self) -> std::collections::BTreeMap<u8, u64> {
        let mut counts = self
            .quota_alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for threshold in self.config().alerts.thresholds() {
            counts.entry(threshold).or_default();
        }
        counts
    }

    /// With `[fleet]`: hands a change made through this agent's API to the sync, for the other
    /// hosts; without, nothing.
    pub fn publish(&self, change: super::fleet::events::Change) {
        if self.config().fleet.is_some() {
            self.fleet_outbox.push(change);
        }
    }

    /// With `[fleet]`: how this host syncs, as `limiter fleet` shows it.
    pub fn fleet_info(&self) -> Option<crate::api::FleetInfo> {
        let status = self
            .fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        let info = status.lock().unwrap_or_else(|p| p.into_inner()).info();
        Some(info)
    }

    /// The datapath, to read, for a blocking call (map walks are syscalls). Readers do not wait
    /// for each other: a scrape walking a million keys does not hold up the API.
    pub fn datapath(&self) -> RwLockReadGuard<'_, Datapath> {
        self.datapath
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The datapath, to change what it enforces.
    fn datapath_mut(&self) -> RwLockWriteGuard<'_, Datapath> {
        self.datapath
            .write()
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
        let mut datapath = self.datapath_mut();
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
        if config.http.as_ref().is_some_and(|h| h.keep_alive) {
            if let Some(iface) = self.interfaces.iter().find(|i| !i.egress) {
                return Err(refuse(format!(
                    "{}: [http] keep_alive needs the egress program, which could not be attached \
                     to {} when the agent started (see its log; TCX needs Linux 6.6)",
                    path.display(),
                    iface.name
                )));
            }
        }
        let secret_file = |c: &Config| c.http.as_ref().and_then(|h| h.secret_file.clone());
        if secret_file(&config) != secret_file(&running) {
            return Err(refuse(format!(
                "{}: [http] secret_file cannot change while the agent runs (the registered keys \
                 are hashed under the secret in force); put it back, or restart the agent",
                path.display()
            )));
        }
        for key in datapath.registered() {
            if let Some(plan) = key.plan.as_deref() {
                if running.plan(plan).is_some() && config.plan(plan).is_none() {
                    return Err(refuse(format!(
                        "{}: the plan '{plan}' is gone, but the registered key '{}' is on it; \
                         keep the plan, or move the key first (`limiter keys rm {}`, then \
                         `limiter keys add {} --plan …`)",
                        path.display(),
                        key.name,
                        key.name,
                        key.name
                    )));
                }
            }
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

    /// Changes the overrides with `change`, then enforces and saves the result — or, when the
    /// datapath cannot hold it or the file cannot be written, puts back what was enforced and
    /// saved before: what is saved is always what is enforced.
    pub fn change_overrides<T>(
        &self,
        change: impl FnOnce(&mut OverrideStore) -> Result<T, AgentError>,
    ) -> Result<T, AgentError> {
        let mut store = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        let before = store.list().to_vec();
        let done = change(&mut store)?;
        let result = store
            .check_capacity()
            .map_err(|why| AgentError::new(ErrorCode::Capacity, why))
            .and_then(|()| self.enforce_overrides(&store))
            .and_then(|()| Ok(store.save()?));
        if let Err(err) = result {
            store.restore(before);
            if let Err(again) = self.enforce_overrides(&store) {
                tracing::error!("putting back the overrides in force: {again}");
            }
            return Err(err);
        }
        Ok(done)
    }

    /// Registers an API key under `name` (on `plan`, or the `[http]` default): enforced at
    /// once, then saved; on any failure nothing changes. The token is hashed here and dropped.
    pub fn add_api_key(
        &self,
        name: String,
        plan: Option<String>,
        token: &[u8],
    ) -> Result<ApiKeyAdded, AgentError> {
        let bad = |m: String| AgentError::new(ErrorCode::BadRequest, m);
        let config = self.config();
        if config.http.is_none() {
            return Err(bad(
                "API keys need [http] in the configuration (its ports and key headers)".into(),
            ));
        }
        if let Some(plan) = &plan {
            if config.plan(plan).is_none() {
                let known: Vec<_> = config
                    .plans
                    .iter()
                    .map(|p| p.get_ref().name.clone())
                    .collect();
                return Err(bad(format!(
                    "there is no plan '{plan}' (configured: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )));
            }
        }
        if token.is_empty() {
            return Err(bad("the token is empty".into()));
        }
        if token.len() > limiter_common::http::WINDOW {
            return Err(bad(format!(
                "a token of {} bytes cannot be read from a request (at most {})",
                token.len(),
                limiter_common::http::WINDOW
            )));
        }
        if token
            .iter()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad(
                "the token holds whitespace or control characters: a request header cannot \
                 carry it as such (a trailing newline of the input is taken off already)"
                    .into(),
            ));
        }
        let secret = self
            .datapath()
            .secret()
            .ok_or_else(|| bad("no API key secret".into()))?;
        self.register_api_key(name, plan, secret.hash(token), true)
    }

    /// Registers the token hash `hash` under `name` (on `plan`, or the `[http]` default):
    /// enforced at once, then saved; on any failure nothing changes. `publish`: with `[fleet]`,
    /// the other hosts register it too (a key another host registered is not published
    /// again, and one registered here already alike is left as it is).
    pub fn register_api_key(
        &self,
        name: String,
        plan: Option<String>,
        hash: u64,
        publish: bool,
    ) -> Result<ApiKeyAdded, AgentError> {
        let bad = |m: String| AgentError::new(ErrorCode::BadRequest, m);
        if let Some(plan) = &plan {
            if self.config().plan(plan).is_none() {
                return Err(bad(format!("there is no plan '{plan}' on this host")));
            }
        }
        let mut store = self.api_keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut datapath = self.datapath_mut();
        let secret = datapath
            .secret()
            .ok_or_else(|| bad("no API key secret".into()))?;
        let key = Registered {
            name,
            plan,
            hash,
            added_at_ms: super::overrides::now_ms(),
        };
        let alike = |k: &Registered| k.name == key.name && k.hash == key.hash && k.plan == key.plan;
        if !publish && store.list().iter().any(alike) {
            return Ok(ApiKeyAdded {
                name: key.name,
                plan: key.plan,
                fingerprint: api_keys::fingerprint(key.hash),
            });
        }
        let before = store.list().to_vec();
        store.add(key.clone()).map_err(|err| match err {
            AddError::Invalid(m) | AddError::Duplicate(m) => bad(m),
            AddError::Capacity(m) => AgentError::new(ErrorCode::Capacity, m),
        })?;
        self.enforce_api_keys(&mut store, &mut datapath, before)?;
        if publish {
            self.publish(super::fleet::events::Change::api_key_added(
                &key,
                secret.id(),
            ));
        }
        Ok(ApiKeyAdded {
            name: key.name,
            plan: key.plan,
            fingerprint: api_keys::fingerprint(key.hash),
        })
    }

    /// Forgets the API key registered as `name`: its requests fall back to the `[http]`
    /// default (its bucket stays).
    /// `publish`: with `[fleet]`, the other hosts forget it too.
    pub fn remove_api_key(&self, name: &str, publish: bool) -> Result<Registered, AgentError> {
        let mut store = self.api_keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut datapath = self.datapath_mut();
        let before = store.list().to_vec();
        let removed = store.remove(name).ok_or_else(|| {
            AgentError::new(
                ErrorCode::NoSuchKey,
                format!("no key is registered as '{name}' (see `limiter keys`)"),
            )
        })?;
        self.enforce_api_keys(&mut store, &mut datapath, before)?;
        if publish {
            self.publish(super::fleet::events::Change::ApiKeyRemoved {
                name: name.to_owned(),
            });
        }
        Ok(removed)
    }

    /// Enforces and saves the store's keys, or puts back `before` in both.
    fn enforce_api_keys(
        &self,
        store: &mut ApiKeyStore,
        datapath: &mut Datapath,
        before: Vec<Registered>,
    ) -> Result<(), AgentError> {
        let secret = datapath.secret().expect("checked by the caller");
        let result = datapath
            .set_api_keys(secret, store.list().to_vec())
            .map_err(AgentError::from)
            .and_then(|()| Ok(store.save()?));
        if let Err(err) = result {
            let mut restored = ApiKeyStore::restore(store, before);
            std::mem::swap(store, &mut restored);
            if let Err(again) = datapath.set_api_keys(secret, store.list().to_vec()) {
                tracing::error!("putting back the API keys in force: {again:#}");
            }
            return Err(err);
        }
        Ok(())
    }

    /// Lifts the overrides that lapsed by `now_ms`: enforced at once; the file follows, and
    /// when it cannot be written (a full disk), the next call tries again — an override
    /// lapses on time all the same. The lapsed ones, once enforced.
    pub fn expire_overrides(&self, now_ms: u64) -> Result<Vec<Override>, AgentError> {
        let mut store = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        let lapsed = store.expire(now_ms);
        if !lapsed.is_empty() {
            if let Err(err) = self.enforce_overrides(&store) {
                lapsed.iter().cloned().for_each(|o| store.upsert(o));
                return Err(err);
            }
        }
        if !lapsed.is_empty() || store.unsaved {
            match store.save() {
                Ok(()) => {
                    if store.unsaved {
                        tracing::info!("the overrides file is written again");
                    }
                    store.unsaved = false;
                }
                Err(err) if !store.unsaved => {
                    store.unsaved = true;
                    tracing::error!(
                        "saving the overrides after some lapsed: {err:#}; they are lifted, and \
                         saving is retried"
                    );
                }
                Err(_) => {}
            }
        }
        Ok(lapsed)
    }

    /// Makes the datapath enforce the store's overrides.
    /// Keeps the datapath's quota clock current (see `Datapath::refresh_quota_clock`).
    /// Looked at under the read lock; the write lock only once a month, when it changes.
    pub fn refresh_quota_clock(&self) -> anyhow::Result<()> {
        let Some(clock) = self.datapath().quota_clock_due() else {
            return Ok(());
        };
        self.datapath_mut().refresh_quota_clock(clock)
    }

    fn enforce_overrides(&self, store: &OverrideStore) -> Result<(), AgentError> {
        let resolved = resolved_overrides(store, &self.config());
        Ok(self.datapath_mut().set_overrides(resolved)?)
    }
}

/// The overrides as the datapath applies them.
pub fn resolved_overrides(store: &OverrideStore, config: &Config) -> Vec<ResolvedRule> {
    store
        .list()
        .iter()
        .map(|o| o.resolved(&config.default_rule()))
        .collect()
}
