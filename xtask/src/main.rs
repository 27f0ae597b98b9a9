//! `cargo xtask …`: everything a newcomer or CI runs, from a fresh machine.

mod bench;
mod bench_fleet;
mod bench_flood;
mod bench_keys;
mod bench_scale;
mod bench_two_cpus;
mod bench_usage;
mod demo;
mod install;
mod setup;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "limiter's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the XDP program needs (Debian packages, the nightly's rust-src,
    /// bpf-linker on the nightly's LLVM); does nothing when everything is there. Needs root.
    Setup,
    /// Build the release binary target/release/limiter, with the XDP program embedded.
    Build,
    /// Run every test: unit, property and the integration tests with real traffic (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Show limiter at work: the real agent on a private veth pair, clients flooding, a reset.
    Demo,
    /// rustfmt and clippy (warnings are errors) over the host crates and the eBPF crate.
    Lint,
    /// Install for a gateway host: /usr/local/bin/limiter, the systemd unit, an example
    /// /etc/limiter/limiter.toml (kept if there), the `limiter` group for the API socket.
    Install {
        /// Install under this directory instead of / (for packaging).
        #[arg(long, value_name = "DIR")]
        destdir: Option<PathBuf>,
    },
    /// Benchmarks, written to BENCHMARKS.md with a chart (bench-flood.png): the per-packet cost
    /// of the XDP program against a bare XDP_DROP (BPF_PROG_TEST_RUN); flood throughput on a veth
    /// pair next to a bare XDP_DROP, nftables and iptables hashlimit; management with 1M keys
    /// next to bpftool; `limiter usage` over 7 days of 10 000 keys; fleet mode (3 hosts on one
    /// Redis). Installs nftables, iptables, perf and bpftool when missing (needs root).
    Bench {
        /// A short run of every part (under two minutes).
        #[arg(long)]
        quick: bool,
        /// Only this part (its section of BENCHMARKS.md is rewritten, the others kept).
        #[arg(long, value_enum)]
        only: Option<bench_flood::Part>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::ensure()?;
            build_release()?;
            Ok(())
        }
        Task::Test { args } => {
            setup::ensure()?;
            let bin = build_release()?;
            let mut test = cargo();
            test.args(["test", "--workspace", "--release"])
                .args(&args)
                .env("LIMITER_BIN", &bin);
            run(&mut test)
        }
        Task::Demo => {
            setup::ensure()?;
            let bin = build_release()?;
            demo::run(&bin)
        }
        Task::Bench { quick, only } => {
            setup::ensure()?;
            setup::ensure_bench_tools()?;
            build_release()?;
            bench_flood::run_all(quick, only)
        }
        Task::Install { destdir } => {
            setup::ensure()?;
            let bin = build_release()?;
            install::run(&bin, destdir)
        }
        Task::Lint => {
            setup::ensure()?;
            run(cargo().args(["fmt", "--all", "--check"]))?;
            run(cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            let ebpf = root().join("limiter-ebpf");
            run(nightly_cargo().current_dir(&ebpf).args(["fmt", "--check"]))?;
            run(nightly_cargo()
                .current_dir(&ebpf)
                .args([
                    "clippy",
                    "-Z",
                    "build-std=core",
                    "--target",
                    "bpfel-unknown-none",
                    "--release",
                ])
                .args(["--target-dir", "../target/ebpf", "--", "-D", "warnings"]))
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `cargo` in the workspace, with the real XDP program required: a build that lacks its
/// toolchain fails instead of embedding the stub newcomers' checks get (see limiter-agent's
/// build.rs).
fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root())
        .env("LIMITER_EBPF_REQUIRE", "1")
        .env_remove("LIMITER_EBPF_STUB");
    cmd
}

fn nightly_cargo() -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

/// Builds target/release/limiter and returns its path.
fn build_release() -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "limiter-agent"]))?;
    Ok(root().join("target/release/limiter"))
}

/// Runs `cmd`, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
