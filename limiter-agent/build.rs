//! Builds the XDP program (limiter-ebpf) for the BPF target and hands its path to the agent,
//! which embeds it, so that a plain `cargo build --release` yields a self-contained `limiter`.
//!
//! aya-build cannot pass `-C target-cpu=v3` (needed for the compare-and-swap the datapath relies
//! on), so the nested build is run here with the flags spelled out.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// rustc flags of the eBPF build: BTF for the loader, v3 for 64-bit atomics with fetch.
const EBPF_RUSTFLAGS: &[&str] = &[
    "--cfg=bpf_target_arch=\"x86_64\"",
    "-Cdebuginfo=2",
    "-Clink-arg=--btf",
    "-Ctarget-cpu=v3",
];

fn main() {
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
        .env("CARGO_ENCODED_RUSTFLAGS", EBPF_RUSTFLAGS.join("\x1f"))
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
