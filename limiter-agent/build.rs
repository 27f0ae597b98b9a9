//! Builds the XDP program (limiter-ebpf) for the BPF target and hands its path to the agent,
//! which embeds it, so that a plain `cargo build --release` yields a self-contained `limiter`.
//!
//! aya-build cannot pass `-C target-cpu=v3` (needed for the compare-and-swap the datapath relies
//! on), so the nested build is run here with the flags spelled out.
//!
//! Without the nightly toolchain or bpf-linker (a newcomer's machine with only stable Rust, an
//! editor's rust-analyzer), or with `LIMITER_EBPF_STUB=1`, an empty stub is embedded instead and
//! a warning says so: `cargo check`, clippy and the unit tests work, and the agent, if started,
//! refuses at once. `cargo xtask` sets `LIMITER_EBPF_REQUIRE=1`, with which a missing toolchain
//! is an error rather than a stub.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// rustc flags of the eBPF build: BTF for the loader, v3 for 64-bit atomics with fetch (and,
/// added in `main`, the architecture the agent is built for, which aya-ebpf's helpers need).
const EBPF_RUSTFLAGS: &[&str] = &["-Cdebuginfo=2", "-Clink-arg=--btf", "-Ctarget-cpu=v3"];

/// Set: embed an empty stub instead of building the XDP program.
const STUB_VAR: &str = "LIMITER_EBPF_STUB";
/// Set: the XDP program must be built (no stub, whatever is missing).
const REQUIRE_VAR: &str = "LIMITER_EBPF_REQUIRE";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(limiter_ebpf_stub)");
    println!("cargo:rerun-if-env-changed={STUB_VAR}");
    println!("cargo:rerun-if-env-changed={REQUIRE_VAR}");
    let required = env::var_os(REQUIRE_VAR).is_some_and(|v| v == "1");
    if env::var_os(STUB_VAR).is_some_and(|v| v == "1") && !required {
        return stub(&format!("{STUB_VAR}=1"));
    }
    if !required {
        if let Some(missing) = missing_toolchain() {
            return stub(&missing);
        }
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let ebpf_dir = root.join("limiter-ebpf");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        root.join("limiter-common/src"),
        root.join("limiter-common/Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }

    // The architecture of the build target (not of the machine that builds), for aya-ebpf.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let mut rustflags = vec![format!("--cfg=bpf_target_arch=\"{arch}\"")];
    rustflags.extend(EBPF_RUSTFLAGS.iter().map(|f| f.to_string()));

    let target_dir = root.join("target/ebpf");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "--quiet", "--release"])
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .arg("--manifest-path")
        .arg(ebpf_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // Replaces the outer build's flags (set after the removals below would be too late: the
        // last change to a variable wins).
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"))
        // Cargo parses a build script's stdout; keep the nested build's output on stderr.
        .stdout(Stdio::from(std::io::stderr()));
    // The outer build's toolchain and settings must not leak into the nightly BPF build.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
    ] {
        cargo.env_remove(var);
    }
    for (var, _) in env::vars() {
        if var.starts_with("CARGO_PROFILE_") || var.starts_with("CARGO_CFG_") {
            cargo.env_remove(var);
        }
    }

    let status = cargo
        .status()
        .unwrap_or_else(|err| fail(&format!("cannot run rustup: {err}")));
    if !status.success() {
        fail("the nightly build of limiter-ebpf failed (see above)");
    }
    let object = target_dir.join("bpfel-unknown-none/release/limiter");
    embed(&object);
}

/// What the eBPF build needs and this machine lacks, if anything: the nightly toolchain with
/// its rust-src (for `-Z build-std=core`), and bpf-linker.
fn missing_toolchain() -> Option<String> {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stderr(Stdio::null())
        .output();
    let sysroot = match sysroot {
        Ok(out) if out.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
        _ => return Some("no nightly toolchain".to_owned()),
    };
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Some("the nightly toolchain has no rust-src".to_owned());
    }
    let linker = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !linker.is_ok_and(|s| s.success()) {
        return Some("no bpf-linker".to_owned());
    }
    None
}

/// Embeds an empty object: the agent refuses to start with it (see `limiter_ebpf_stub`).
fn stub(why: &str) {
    println!(
        "cargo:warning=limiter: the XDP program is not built ({why}): an empty stub is embedded, \
         so checks and unit tests work but `limiter agent` will refuse to start. \
         `cargo xtask setup` installs what the real build needs."
    );
    println!("cargo:rustc-cfg=limiter_ebpf_stub");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("limiter.bpf.o");
    std::fs::write(&out, []).unwrap_or_else(|err| fail(&format!("writing the stub: {err}")));
    println!("cargo:rustc-env=LIMITER_BPF_OBJECT={}", out.display());
}

fn embed(object: &Path) {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("limiter.bpf.o");
    std::fs::copy(object, &out)
        .unwrap_or_else(|err| fail(&format!("cannot copy {}: {err}", object.display())));
    println!("cargo:rustc-env=LIMITER_BPF_OBJECT={}", out.display());
}

fn fail(why: &str) -> ! {
    eprintln!(
        "error: building the XDP program: {why}.\n\
         It needs the nightly toolchain with rust-src and bpf-linker built on the nightly's LLVM:\n\
         run `cargo xtask setup` (as root on Debian) to install them."
    );
    std::process::exit(1);
}
