//! `cargo xtask setup`: makes a fresh Debian machine able to build limiter. Idempotent; `ensure`
//! (run by build, test and demo) only installs when a check fails.

use anyhow::{bail, Context};
use std::path::Path;
use std::process::Command;

/// The bpf-linker release the project builds with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Installs what is missing, after saying what it is.
pub fn run() -> anyhow::Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        println!("setup: everything is in place");
        return Ok(());
    }
    install(&missing)
}

/// Like `run`, but silent when nothing is missing.
pub fn ensure() -> anyhow::Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        return Ok(());
    }
    install(&missing)
}

#[derive(Debug)]
enum Missing {
    DebianPackages(Vec<String>),
    RustSrc,
    BpfLinker,
}

/// The LLVM major version of the nightly toolchain, which bpf-linker must match.
fn nightly_llvm_major() -> anyhow::Result<u32> {
    let out = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "the nightly toolchain is not installed: install it with `rustup toolchain install nightly` \
             (this machine cannot download toolchains; it is part of the machine image)"
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    Ok(version.split('.').next().unwrap_or("").parse()?)
}

/// The LLVM major version bpf-linker is linked against (None: no usable bpf-linker).
fn bpf_linker_llvm_major() -> Option<u32> {
    let path = which("bpf-linker")?;
    let version = Command::new(&path).arg("--version").output().ok()?;
    if !String::from_utf8_lossy(&version.stdout).contains(BPF_LINKER_VERSION) {
        return None;
    }
    let ldd = Command::new("ldd").arg(&path).output().ok()?;
    let text = String::from_utf8_lossy(&ldd.stdout);
    // "libLLVM.so.22.1 => …" (Debian) or "libLLVM-22.so => …".
    let start = text.find("libLLVM")? + "libLLVM".len();
    let digits: String = text[start..]
        .trim_start_matches(['.', '-', 's', 'o'])
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|h| h.join("bin"));
    std::env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// What building and testing need from Debian.
fn debian_packages(llvm: u32) -> Vec<String> {
    vec![
        format!("llvm-{llvm}-dev"),
        format!("libpolly-{llvm}-dev"),
        "libzstd-dev".into(),
        "zlib1g-dev".into(),
        // The tests: namespaces and veth (ip), `limiter top` driven in a terminal (tmux), a
        // real gateway and HTTP client for API keys (nginx, curl), a real Prometheus that runs
        // every query of the Grafana dashboard (tests/tests/dashboard.rs), and the fleet's
        // shared state (redis-server).
        "iproute2".into(),
        "tmux".into(),
        "nginx-light".into(),
        "curl".into(),
        "prometheus".into(),
        "redis-server".into(),
    ]
}

fn missing() -> anyhow::Result<Vec<Missing>> {
    let llvm = nightly_llvm_major()?;
    let mut missing = Vec::new();
    let packages: Vec<String> = debian_packages(llvm)
        .into_iter()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !packages.is_empty() {
        missing.push(Missing::DebianPackages(packages));
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        missing.push(Missing::RustSrc);
    }
    match bpf_linker_llvm_major() {
        Some(linker) if linker == llvm => {}
        Some(linker) => {
            println!(
                "setup: bpf-linker is built on LLVM {linker} but the nightly uses LLVM {llvm}: rebuilding it"
            );
            missing.push(Missing::BpfLinker);
        }
        None => missing.push(Missing::BpfLinker),
    }
    Ok(missing)
}

/// Debian packages `cargo xtask bench` runs besides the build's: the peers of the flood
/// benchmark (nftables, iptables), perf for its profile, bpftool for the management benchmark,
/// and a font for the chart's text.
const BENCH_PACKAGES: &[&str] = &[
    "nftables",
    "iptables",
    "linux-perf",
    "bpftool",
    "fonts-dejavu-core",
    // The keyed flood: a gateway, its load generator, and the peers.
    "nginx-light",
    "wrk",
    "haproxy",
];

/// Installs what `cargo xtask bench` needs besides the build, when missing.
pub fn ensure_bench_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = BENCH_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !Path::new("/etc/debian_version").exists() || !nix::unistd::geteuid().is_root() {
        bail!(
            "the benchmark needs these Debian packages, missing here: {}\ninstall them (as root \
             on Debian, `apt-get install {}`) and run it again",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("bench: installing {}", missing.join(" "));
    crate::run(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update, before installing the benchmark's packages")?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {} for the benchmark", missing.join(" ")))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn install(missing: &[Missing]) -> anyhow::Result<()> {
    let llvm = nightly_llvm_major()?;
    for item in missing {
        match item {
            Missing::DebianPackages(packages) => {
                if !Path::new("/etc/debian_version").exists() {
                    bail!(
                        "these packages are missing and this is not Debian, so setup cannot install them: {}",
                        packages.join(" ")
                    );
                }
                if !nix::unistd::geteuid().is_root() {
                    bail!(
                        "these Debian packages are missing: {}\ninstall them as root (`sudo cargo xtask setup`)",
                        packages.join(" ")
                    );
                }
                println!("setup: installing {}", packages.join(" "));
                crate::run(Command::new("apt-get").args(["update", "-q"]))?;
                crate::run(
                    Command::new("apt-get")
                        .args(["install", "-y", "-q", "--no-install-recommends"])
                        .args(packages)
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                )
                .with_context(|| {
                    format!(
                        "is llvm-{llvm}-dev available from apt? `apt-cache policy llvm-{llvm}-dev`"
                    )
                })?;
            }
            Missing::RustSrc => {
                println!("setup: adding rust-src to the nightly toolchain");
                crate::run(Command::new("rustup").args([
                    "component",
                    "add",
                    "rust-src",
                    "--toolchain",
                    "nightly",
                ]))?;
            }
            Missing::BpfLinker => {
                println!("setup: building bpf-linker {BPF_LINKER_VERSION} on LLVM {llvm} (a few minutes)");
                let prefix = format!("/usr/lib/llvm-{llvm}");
                if !Path::new(&prefix).join("lib").exists() {
                    bail!(
                        "LLVM {llvm} is not installed at {prefix}: install llvm-{llvm}-dev first"
                    );
                }
                let path = format!("{prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
                crate::run(
                    Command::new("cargo")
                        .args([
                            "install",
                            "bpf-linker",
                            "--locked",
                            "--force",
                            "--version",
                            BPF_LINKER_VERSION,
                        ])
                        .args([
                            "--no-default-features",
                            "--features",
                            &format!("llvm-{llvm}"),
                        ])
                        .env("LLVM_PREFIX", &prefix)
                        .env("PATH", path)
                        .env_remove("RUSTUP_TOOLCHAIN"),
                )?;
                match bpf_linker_llvm_major() {
                    Some(linker) if linker == llvm => {}
                    other => bail!(
                        "bpf-linker was installed but links LLVM {other:?}, not the nightly's LLVM {llvm}: \
                         check `ldd $(which bpf-linker)`"
                    ),
                }
            }
        }
    }
    println!("setup: done");
    Ok(())
}
