//! The agent's state files (overrides, registered API keys, the token hash's secret): written
//! atomically — a temporary file in the same directory, synced, then renamed over the old one,
//! so that a crash leaves either the old or the new content — and readable by their owner only.

use anyhow::Context;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` atomically, mode 0600 (creating its directory if needed).
pub fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    // The mode of a file that existed already is not changed by `open`.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// Where a state file that cannot be read is moved, kept for a person to look at:
/// `FILE.unreadable-<ms since the epoch>`.
pub fn aside_path(path: &Path) -> std::path::PathBuf {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".unreadable-{}", super::overrides::now_ms()));
    std::path::PathBuf::from(aside)
}
