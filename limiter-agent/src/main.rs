//! `limiter`: the agent (`limiter agent`) and the operator's CLI, in one binary.

//!
//! Modules depend one way: `main` → {`agent`, `cli`}; `cli` → {`api`, `client`, `exit`, `object`,
//! `pins`};
//! `agent` → {`api`, `object`, `pins`}; `api`, `exit`, `object` and `pins` are leaves (and
//! `limiter-common` below all).

mod agent;
mod api;
mod cli;
mod client;
mod exit;
mod object;
mod pins;

use api::Action;
use clap::{CommandFactory, Parser, Subcommand};
use exit::Failure;
use std::process::ExitCode;

/// Kernel-accelerated rate limiting for API gateway hosts.
///
/// An XDP program keeps one token bucket per client (source address, grouped by prefix) and drops
/// what is over the limit at the NIC; with `[http]` it also keeps one per API key and answers an
/// HTTP request over its key's limit with a 429 from the kernel. `limiter agent` loads it and
/// serves an API; the other commands ask that agent.
#[derive(Debug, Parser)]
#[command(name = "limiter", version, after_help = exit::EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load and attach the XDP program, apply the config, serve the API (runs until SIGINT/SIGTERM;
    /// the program stays attached and its state pinned when it exits).
    Agent(agent::AgentArgs),
    /// Interfaces, config in force, keys tracked and exhausted, totals passed and dropped.
    Status(cli::ApiArgs),
    /// Tracked keys with their bucket state.
    List(cli::ListArgs),
    /// One key: rule, rate, burst, remaining, exhausted, retry-after, passed, dropped.
    Inspect(cli::InspectArgs),
    /// Give keys a full bucket at once; prints how many were reset.
    Reset(cli::ResetArgs),
    /// The hosts of the fleet ([fleet]): their last sync, keys and requests reported, and
    /// whether this one is in sync.
    Fleet(cli::ApiArgs),
    /// An API key's quota this window; `--add N` tops it up until the window ends.
    Quota(cli::quota::QuotaArgs),
    /// API keys (HTTP requests on [http] ports): tracked ones, `keys add NAME`, `keys rm NAME`.
    Keys(cli::keys::KeysArgs),
    /// Live full-screen view of the busiest and most throttled keys, refreshing in place.
    Top(cli::top::TopArgs),
    /// Passed and rejected per minute, hour or day, from the agent's usage history (7 days).
    Usage(cli::usage::UsageArgs),
    /// Re-read the agent's config file (as SIGHUP does); a bad one is refused and the old kept.
    Reload(cli::ApiArgs),
    /// Override: never limit CIDR (above every config rule; --ttl to lapse by itself).
    Allow(cli::overrides::OverrideArgs),
    /// Override: drop everything from CIDR (above every config rule; --ttl to lapse by itself).
    Deny(cli::overrides::OverrideArgs),
    /// Override: limit each key in CIDR to --rate/--burst (above every config rule).
    Limit(cli::overrides::LimitArgs),
    /// The overrides in force; `overrides rm CIDR` removes one.
    Overrides(cli::overrides::OverridesArgs),
    /// Take the program off an interface and remove its pins; works with no agent running.
    Detach(cli::detach::DetachArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// For `cargo xtask bench`: write a synthetic usage history (days of minutes of many keys)
    /// into a state directory that has none.
    #[command(hide = true)]
    UsageFill(agent::FillUsageArgs),
    /// Print the man page (roff), e.g. `limiter man > /usr/local/share/man/man1/limiter.1`.
    Man,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(args),
        Command::Detach(args) => cli::detach::run(args),
        Command::UsageFill(args) => agent::fill_usage(&args).map_err(Failure::from),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "limiter",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .map_err(|e| Failure::Other(e.to_string())),
        command => run_cli(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

fn run_agent(args: agent::AgentArgs) -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: not in journald, a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::Other(e.to_string()))?;
    runtime.block_on(agent::run(args)).map_err(Failure::from)
}

fn run_cli(command: Command) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(e.to_string()))?;
    runtime.block_on(async {
        match command {
            Command::Status(args) => cli::status(args).await,
            Command::List(args) => cli::list::run(args).await,
            Command::Inspect(args) => cli::inspect::run(args).await,
            Command::Reset(args) => cli::reset::run(args).await,
            Command::Quota(args) => cli::quota::run(args).await,
            Command::Fleet(args) => cli::fleet::run(args).await,
            Command::Keys(args) => cli::keys::run(args).await,
            Command::Reload(args) => cli::reload::run(args).await,
            Command::Usage(args) => cli::usage::run(args).await,
            Command::Top(args) => cli::top::run(args).await,
            Command::Allow(args) => cli::overrides::add(args, Action::Allow, None).await,
            Command::Deny(args) => cli::overrides::add(args, Action::Deny, None).await,
            Command::Limit(args) => {
                let limit = (args.rate, args.burst);
                cli::overrides::add(args.common, Action::Limit, Some(limit)).await
            }
            Command::Overrides(args) => cli::overrides::run(args).await,
            Command::Agent(_)
            | Command::Detach(_)
            | Command::UsageFill(_)
            | Command::Completions { .. }
            | Command::Man => {
                unreachable!("handled in main")
            }
        }
    })
}
