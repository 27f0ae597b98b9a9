//! Making sure the pin directory is on a BPF filesystem, mounting one where needed.

use anyhow::{bail, Context};
use nix::mount::{mount, MsFlags};
use nix::sys::statfs::statfs;
use std::path::Path;
use tracing::info;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where bpffs lives by convention.
const SYS_FS_BPF: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type().0 as u32 == BPF_FS_MAGIC)
}

/// Creates `pin_path` on a bpffs: inside an existing one, on a fresh mount at /sys/fs/bpf when
/// the path is under it and nothing is mounted there (as inside `ip netns exec`), or else on a
/// bpffs mounted at `pin_path` itself.
pub fn ensure_pin_dir(pin_path: &Path) -> anyhow::Result<()> {
    let mut existing = pin_path;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(existing) {
        let mount_point = if pin_path.starts_with(SYS_FS_BPF) {
            Path::new(SYS_FS_BPF)
        } else {
            std::fs::create_dir_all(pin_path)
                .with_context(|| format!("creating the pin directory {}", pin_path.display()))?;
            pin_path
        };
        // A mount hides what the directory holds (say --pin-path /var/lib/limiter, the
        // overrides' state): only an empty one is mounted over.
        let hidden = std::fs::read_dir(mount_point)
            .with_context(|| format!("reading {}", mount_point.display()))?
            .count();
        if hidden > 0 {
            bail!(
                "{} is not on a BPF filesystem and is not empty: mounting one there would hide \
                 its {hidden} entries. Give --pin-path a directory under {SYS_FS_BPF}, an empty \
                 directory, or one on a bpffs",
                mount_point.display()
            );
        }
        mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting a bpf filesystem at {}", mount_point.display()))?;
        info!(path = %mount_point.display(), "mounted a bpf filesystem");
    }
    std::fs::create_dir_all(pin_path)
        .with_context(|| format!("creating the pin directory {}", pin_path.display()))
}
