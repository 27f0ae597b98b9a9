//! Shared between the XDP program (`no_std`, eBPF target) and the agent (feature `user`).
//!
//! Everything that both sides must agree on lives here: the layout of every map key and value,
//! the map names, and the rate-limit arithmetic, so that the kernel's verdict and the agent's
//! view of a bucket (`remaining`, `retry_after_ms`) can never disagree.
#![cfg_attr(not(any(feature = "user", test)), no_std)]
// One unaligned 64-bit load in BPF assembly (see `http::words::load`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod bucket;
pub mod charge;
pub mod http;
pub mod keyhash;
pub mod maps;
pub mod quota;

#[cfg(feature = "user")]
pub mod batch;
#[cfg(feature = "user")]
pub mod key;
#[cfg(feature = "user")]
pub mod sys;
