//! Work inside the test bed's network namespaces: on a thread that entered one, or through
//! `ip netns exec`.

use anyhow::{ensure, Context};
use limiter_tests::netns::Netns;
use std::io::Write as _;
use std::process::{Command, Stdio};

pub(super) fn ifindex(ns: &Netns, iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    let index = within(ns, move || {
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })?;
    ensure!(index != 0, "no interface {iface}");
    Ok(index)
}

/// Runs `work` on a thread that has entered `ns` (the thread ends with it).
pub(super) fn within<T: Send>(ns: &Netns, work: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            Ok(work())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in {path} panicked"))?
    })
}

/// `ip netns exec NS ARGS…`, with `stdin` fed to it; its stdout.
pub(super) fn ns_command(ns: &Netns, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .with_context(|| format!("feeding {}", args.join(" ")))?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{} (in namespace {}) failed: {}{}",
        args.join(" "),
        ns.name,
        String::from_utf8_lossy(&out.stderr).trim(),
        stdin.map_or(String::new(), |s| format!("\ninput:\n{s}"))
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) fn ns_shell(ns: &Netns, script: &str) -> anyhow::Result<()> {
    ns_command(ns, &["sh", "-c", script], None).map(|_| ())
}
