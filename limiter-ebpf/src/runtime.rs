//! What every XDP program of this crate needs besides its code: a panic handler (`no_std`; the
//! verifier rejects any path that could reach it) and the license the kernel checks for
//! GPL-only helpers. `src/main.rs` includes it with `mod runtime;`, each program of
//! `cargo xtask bench` with `#[path = "../runtime.rs"] mod runtime;`.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
