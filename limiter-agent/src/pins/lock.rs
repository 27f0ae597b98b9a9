//! One agent per pin directory: an exclusive `flock` on the directory itself, held while the
//! agent runs (bpffs holds no regular files, and a lock on the directory needs none). A second
//! agent is refused with the first one's pid, found in /proc/locks.

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Held by the running agent; the lock goes with it (also when the agent is killed).
pub struct AgentLock {
    _dir: Flock<File>,
}

/// Takes the pin directory for this agent, or says which agent has it.
pub fn lock_pin_dir(pin_path: &Path) -> anyhow::Result<AgentLock> {
    let dir = File::open(pin_path)
        .with_context(|| format!("opening the pin directory {}", pin_path.display()))?;
    let inode = dir.metadata()?.ino();
    match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(AgentLock { _dir: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let holder = lock_holder(inode)
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            bail!(
                "another limiter agent{holder} already runs on the pins under {}: two agents \
                 would overwrite each other's rules and overrides — stop it first, or give this \
                 one another --pin-path",
                pin_path.display()
            )
        }
        Err((_, errno)) => {
            Err(errno).with_context(|| format!("locking the pin directory {}", pin_path.display()))
        }
    }
}

/// The pid holding a `flock` on the file with `inode`, from /proc/locks
/// (`1: FLOCK  ADVISORY  WRITE 4242 00:2d:1234 0 EOF`).
fn lock_holder(inode: u64) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let file = fields.get(5)?;
        let ino: u64 = file.rsplit(':').next()?.parse().ok()?;
        (fields.get(1) == Some(&"FLOCK") && ino == inode)
            .then(|| fields.get(4)?.parse().ok())
            .flatten()
    })
}
