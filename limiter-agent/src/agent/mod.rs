//! `limiter agent`: loads and attaches the XDP program, applies the configuration, serves the
//! API, and leaves the program attached with its state pinned when it exits.

mod attach;
mod bpffs;
pub mod config;
mod datapath;
mod server;

pub use attach::AttachMode;

use crate::api::InterfaceInfo;
use anyhow::{bail, Context};
use aya::programs::Xdp;
use aya::EbpfLoader;
use config::{Config, ConfigSource};
use datapath::Datapath;
use limiter_common::maps::{BUCKETS_MAP, LIMITER_PROG};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// The XDP object, built by build.rs.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("LIMITER_BPF_OBJECT"));

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
    #[arg(long, value_name = "PATH", default_value = crate::DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// bpffs directory for the maps and links; mounted when it is not on a bpffs already.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/limiter")]
    pub pin_path: PathBuf,
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Everything that can be refused is checked before any interface is touched.
    let (config, source) = Config::load(args.config.as_deref())?;
    match &source {
        ConfigSource::EmbeddedDefault => info!(
            rate = config.limits.rate.get(),
            burst = config.limits.burst.get(),
            "no --config given: running on the embedded default configuration"
        ),
        ConfigSource::File(path) => info!(path = %path.display(), "configuration loaded"),
    }
    refuse_if_agent_running(&args.api_socket)?;

    bpffs::ensure_pin_dir(&args.pin_path)?;
    let ebpf = EbpfLoader::new()
        .default_map_pin_directory(&args.pin_path)
        .map_max_entries(BUCKETS_MAP, config.agent.max_keys)
        .load(BPF_OBJECT)
        .with_context(|| {
            format!(
                "loading the XDP object (maps pinned under {})",
                args.pin_path.display()
            )
        })?;
    let mut datapath = Datapath::new(ebpf)?;
    datapath.apply(&config)?;

    let mut interfaces = Vec::new();
    {
        let program: &mut Xdp = datapath
            .ebpf_mut()
            .program_mut(LIMITER_PROG)
            .context("the XDP object has no limiter program")?
            .try_into()?;
        program
            .load()
            .context("loading the XDP program into the kernel")?;
        for iface in &args.ifaces {
            let mode = attach::attach(program, iface, args.attach_mode, &args.pin_path)?;
            interfaces.push(InterfaceInfo {
                name: iface.clone(),
                mode,
            });
        }
    }

    // Bound only now: a connectable socket means the program is attached (tests rely on it).
    let listener = bind_api_socket(&args.api_socket)?;
    let state = Arc::new(server::AgentState {
        datapath: Mutex::new(datapath),
        interfaces,
        config,
        config_source: source,
        pin_path: args.pin_path.clone(),
    });
    info!(socket = %args.api_socket.display(), "serving the API");
    let app = server::router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let _ = std::fs::remove_file(&args.api_socket);
    result.context("serving the API")?;
    info!(pin_path = %args.pin_path.display(), "exiting; the program stays attached and its state pinned");
    Ok(())
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

/// Binds the API socket, replacing a stale one left by an agent that was killed.
fn bind_api_socket(path: &Path) -> anyhow::Result<UnixListener> {
    refuse_if_agent_running(path)?;
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        _ = term.recv() => info!("SIGTERM received"),
    }
}
