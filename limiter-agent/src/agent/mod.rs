//! `limiter agent`: loads and attaches the XDP program, applies the configuration, serves the
//! API, and leaves the program attached with its state pinned when it exits.
//!
//! Inside, modules depend one way: the tasks (`server`, `metrics`, `events`, `expiry`, `usage`,
//! `turnover`) → `state` (what they share) → `datapath` (the kernel's maps) → `overrides`,
//! `config` → `limiter-common`.

mod api_keys;
mod attach;
pub mod config;
mod datapath;
mod error;
mod events;
mod expiry;
mod fleet;
mod link_watch;
mod metrics;
mod overrides;
mod private_file;
mod quota_checkpoint;
mod quotas;
mod resets;
mod selection;
mod selectors;
mod serve;
mod server;
mod state;
mod turnover;
mod usage;

pub use attach::AttachMode;
pub use usage::{fill as fill_usage, FillArgs as FillUsageArgs};

use crate::api::DEFAULT_API_SOCKET;
use crate::object::map_names;
use crate::pins::{self, DEFAULT_PIN_PATH};
use anyhow::{bail, Context};
use aya::programs::Xdp;
use aya::EbpfLoader;
use config::{Config, ConfigSource};
use datapath::Datapath;
use limiter_common::maps::{
    BUCKETS_MAP, EGRESS_PROG, IFACE_SLOT_GLOBAL, LIMITER_PROG, MAX_INTERFACES, TICK_GLOBAL,
};
use state::{AgentState, Interface};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

/// Members of this group may use the API socket.
const API_GROUP: &str = "limiter";

#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Interface to attach to; repeat for several.
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub ifaces: Vec<String>,
    /// Configuration file (TOML). Without it the agent runs on the embedded default.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,
    /// Unix socket the API listens on.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// bpffs directory for the maps and links; mounted when it is not on a bpffs already.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Directory of the agent's own state (kept across restarts): the runtime overrides, the
    /// registered API keys and the secret their tokens are hashed with.
    #[arg(long, value_name = "DIR", default_value = overrides::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (plain HTTP, no authentication:
    /// keep it on loopback or a management network).
    #[arg(long, value_name = "ADDR:PORT", default_value = metrics::DEFAULT_ADDR)]
    pub metrics: std::net::SocketAddr,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Everything that can be refused is checked before any interface is touched.
    let object = crate::object::require()?;
    let (config, source) = Config::load(args.config.as_deref())?;
    let overrides = overrides::OverrideStore::load(&args.state_dir)?;
    let secret = api_keys::Secret::load_or_create(
        &args.state_dir,
        config.http.as_ref().and_then(|h| h.secret_file.as_deref()),
    )?;
    let api_keys = api_keys::ApiKeyStore::load(&args.state_dir, &secret)?;
    for key in api_keys.list() {
        if let Some(plan) = key.plan.as_deref().filter(|p| config.plan(p).is_none()) {
            warn!(
                key = %key.name,
                plan,
                "this registered key's plan is not in the configuration: it gets the [http] \
                 default until the plan is back or the key is moved (`limiter keys rm`, `add`)"
            );
        }
    }
    match &source {
        ConfigSource::EmbeddedDefault => info!(
            rate = config.limits.rate.get(),
            burst = config.limits.burst.get(),
            "no --config given: running on the embedded default configuration"
        ),
        ConfigSource::File(path) => info!(path = %path.display(), "configuration loaded"),
    }
    refuse_if_agent_running(&args.api_socket)?;
    refuse_foreign_socket_path(&args.api_socket)?;
    // Bound now, so that a taken port is refused before any interface is touched; served
    // only once the API is (see below).
    let metrics_listener = metrics::bind(args.metrics).await?;

    if args.ifaces.len() > MAX_INTERFACES as usize {
        bail!("at most {MAX_INTERFACES} interfaces per agent");
    }
    pins::ensure_pin_dir(&args.pin_path)?;
    pins::check_own_content(&args.pin_path, &map_names()?)?;
    // Held until the agent exits: one agent per pin directory.
    let _lock = pins::lock_pin_dir(&args.pin_path)?;
    pins::check_pinned_maps(object, &args.pin_path, config.agent.max_keys)?;
    let tick = limiter_common::sys::tick_ns();
    let loader = |slot: u32| {
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&args.pin_path)
            .map_max_entries(BUCKETS_MAP, config.agent.max_keys)
            .override_global(IFACE_SLOT_GLOBAL, &slot, true)
            .override_global(TICK_GLOBAL, &tick, true);
        loader.load(object).with_context(|| {
            format!(
                "loading the XDP object (maps pinned under {})",
                args.pin_path.display()
            )
        })
    };
    // The first load creates (or adopts) the pinned maps; the agent reads and writes them
    // through it, and runs the reset program from it.
    let mut datapath = Datapath::new(loader(0)?)?;
    datapath.set_api_keys(secret, api_keys.list().to_vec())?;
    datapath.apply(&config)?;
    datapath.set_overrides(state::resolved_overrides(&overrides, &config))?;
    // Quota counts the kernel lost (a reboot) come back before the program runs again.
    let checkpoint = match quota_checkpoint::Checkpoint::open(&args.state_dir) {
        Ok((checkpoint, saved)) => {
            if let Err(err) = quota_checkpoint::restore(&datapath, &saved) {
                warn!("bringing back the quota checkpoint: {err:#}");
            }
            Some(Arc::new(std::sync::Mutex::new(checkpoint)))
        }
        Err(err) => {
            warn!("quota counts will not be kept across a reboot: {err:#}");
            None
        }
    };

    // One instance of the program per interface, sharing the pinned maps, each counting into
    // its own slot of COUNTERS.
    let mut interfaces = Vec::new();
    let mut attachments = Vec::new();
    for (slot, iface) in args.ifaces.iter().enumerate() {
        let mut ebpf = loader(slot as u32)?;
        let program: &mut Xdp = ebpf
            .program_mut(LIMITER_PROG)
            .context("the XDP object has no limiter program")?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program into the kernel")?;
        let mode = attach::attach(program, iface, args.attach_mode, &args.pin_path)?;
        // The gateway's side of connections kept open after a 429 (`[http] keep_alive`);
        // attached whatever the configuration says, so that a reload can turn it on.
        let egress: &mut aya::programs::SchedClassifier = ebpf
            .program_mut(EGRESS_PROG)
            .context("the XDP object has no egress program")?
            .try_into()?;
        egress
            .load()
            .context("loading the egress program into the kernel")?;
        let egress = match attach::attach_egress(egress, iface, &args.pin_path) {
            Ok(()) => true,
            Err(err) if config.http.as_ref().is_some_and(|h| h.keep_alive) => {
                return Err(err.context("[http] keep_alive needs the egress program"));
            }
            Err(err) => {
                warn!(
                    iface,
                    "the egress program is not attached ({err:#}): [http] keep_alive cannot be \
                     turned on"
                );
                false
            }
        };
        interfaces.push(Interface::new(iface.clone(), mode, egress));
        attachments.push(ebpf);
    }
    // Exhaustion events (the pinned ring buffer) and the program instances' log lines.
    let events = events::Events::take(&mut attachments)?;

    let state = Arc::new(AgentState::new(
        datapath,
        config,
        source,
        overrides,
        api_keys,
        interfaces,
        args.pin_path.clone(),
    ));
    tokio::spawn(reload_on_sighup(Arc::clone(&state)));
    tokio::spawn(expiry::expire_overrides(Arc::clone(&state)));
    tokio::spawn(fleet::supervise(Arc::clone(&state)));
    if let Some(checkpoint) = &checkpoint {
        quota_checkpoint::spawn(Arc::clone(checkpoint), Arc::clone(&state));
    }
    metrics::spawn(metrics_listener, Arc::clone(&state));
    events.spawn(Arc::clone(&state), &args.state_dir)?;
    turnover::spawn(&args.pin_path, state.watch_config())?;
    tokio::spawn(link_watch::watch_links(Arc::clone(&state)));
    let history = start_usage_history(&args.state_dir, &state).await;
    // Bound last: a connectable socket means the program is attached and every task has started
    // (tests rely on it).
    let listener = bind_api_socket(&args.api_socket)?;
    info!(socket = %args.api_socket.display(), "serving the API");
    let app = server::router(Arc::clone(&state));
    // The program instances stay loaded while the agent runs (the pinned links keep them
    // attached after it exits).
    let _attachments = attachments;
    serve::serve_unix(
        listener,
        app,
        serve::API_LIMITS,
        server::Caller::of,
        shutdown_signal(),
    )
    .await;
    let _ = remove_socket(&args.api_socket);
    if let Some(checkpoint) = checkpoint {
        // The last second's counts too, when stopped in order.
        let state = Arc::clone(&state);
        let _ = tokio::task::spawn_blocking(move || {
            let mut checkpoint = checkpoint.lock().unwrap_or_else(|p| p.into_inner());
            checkpoint.write_from(&state.datapath());
        })
        .await;
    }
    if let Some(history) = history {
        // What came since the last sample too, when stopped in order.
        let _ = tokio::task::spawn_blocking(move || {
            let keep = state.config().usage.keys as usize;
            history.record(&state.datapath(), keep, std::time::SystemTime::now());
        })
        .await;
    }
    info!(pin_path = %args.pin_path.display(), "exiting; the program stays attached and its state pinned");
    Ok(())
}

/// Opens the usage history and takes its first sample (the baseline: traffic from then on is
/// recorded, before the API answers), then records on; without it (the log says why) the agent
/// runs all the same.
async fn start_usage_history(
    state_dir: &Path,
    state: &Arc<AgentState>,
) -> Option<Arc<usage::History>> {
    let opened = {
        let state_dir = state_dir.to_owned();
        let state = Arc::clone(state);
        tokio::task::spawn_blocking(move || {
            let history = usage::History::open(&state_dir)?;
            let keep = state.config().usage.keys as usize;
            history.record(&state.datapath(), keep, std::time::SystemTime::now());
            anyhow::Ok(history)
        })
        .await
    };
    match opened {
        Ok(Ok(history)) => {
            let history = Arc::new(history);
            let _ = state.usage.set(Arc::clone(&history));
            usage::spawn(Arc::clone(&history), Arc::clone(state));
            Some(history)
        }
        Ok(Err(err)) => {
            warn!("no usage history (`limiter usage`) this run: {err:#}");
            None
        }
        Err(err) => {
            warn!("no usage history (`limiter usage`) this run: {err}");
            None
        }
    }
}

/// Refuses to start next to a live agent on the same socket.
fn refuse_if_agent_running(path: &Path) -> anyhow::Result<()> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "an agent is already listening on {} — stop it first, or give this one another --api-socket",
            path.display()
        );
    }
    Ok(())
}

/// Refuses a socket path where something other than a socket is (a file, a symlink): as root
/// the agent replaces only a stale socket.
fn refuse_foreign_socket_path(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => bail!(
            "{} exists and is not a socket ({}): refusing to replace it — remove it, or give \
             the agent another --api-socket",
            path.display(),
            if meta.file_type().is_symlink() {
                "a symbolic link"
            } else if meta.is_dir() {
                "a directory"
            } else {
                "a file"
            }
        ),
        _ => Ok(()),
    }
}

/// Binds the API socket, replacing a stale one left by an agent that was killed. As root it
/// touches only sockets and never follows a symlink: anything else at the path is refused.
fn bind_api_socket(path: &Path) -> anyhow::Result<UnixListener> {
    refuse_if_agent_running(path)?;
    refuse_foreign_socket_path(path)?;
    remove_socket(path)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Root and, when the group exists, members of `limiter` may use the API; nobody else. The
    // mode comes from the umask at bind time: a chmod after it would follow whatever replaced
    // the socket by then.
    let umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o117));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(umask);
    let listener = listener.with_context(|| format!("listening on {}", path.display()))?;
    if let Ok(Some(group)) = nix::unistd::Group::from_name(API_GROUP) {
        nix::unistd::fchownat(
            None,
            path,
            None,
            Some(group.gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("giving {} to group {API_GROUP}", path.display()))?;
    }
    Ok(listener)
}

/// Removes `path` if it is a socket; whether it did.
fn remove_socket(path: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// SIGHUP re-reads the config file, like `limiter reload`.
async fn reload_on_sighup(state: Arc<AgentState>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; use `limiter reload`");
        return;
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP received: reloading the configuration");
        let state = Arc::clone(&state);
        // The outcome is logged by reload_config.
        let _ = tokio::task::spawn_blocking(move || state.reload_config()).await;
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
}
