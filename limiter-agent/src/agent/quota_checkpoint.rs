//! API keys' quota counts kept across a reboot. The kernel's maps (`QUOTAS`, `QUOTA_TOPUPS`)
//! are pinned, so they outlive the agent, but not the machine: every second the agent writes
//! what changed in them to `quotas.redb` in the state directory (redb: an embedded store whose
//! commits are atomic and synced, and whose pages are checksummed), and on start brings back
//! what the kernel lost ([`Datapath::restore_quota_words`]). A power loss costs at most the
//! requests of the last second.
//!
//! A file that cannot be read (truncated, corrupt, of another format) is said so in the log and
//! moved aside, kept for a person to look at; the agent goes on with what the kernel holds.

use super::datapath::Datapath;
use super::quotas::QuotaWords;
use super::state::AgentState;
use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// The file in the state directory.
pub const FILE: &str = "quotas.redb";
/// How often the counts are written (and so, at most, how much a power loss costs).
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Token hash → (`quota::Usage` word, `quota::TopUp` word).
const WORDS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("quota_words");
/// `taken_at_ms`: when the last checkpoint was written (ms since the Unix epoch).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The checkpoint file, and what was last written to it.
pub struct Checkpoint {
    db: Database,
    written: HashMap<u64, QuotaWords>,
    /// When writing last failed and was said (said once a minute at most).
    failing_since: Option<SystemTime>,
}

/// What a checkpoint held at start.
pub struct Saved {
    pub words: HashMap<u64, QuotaWords>,
    /// When it was written (ms since the Unix epoch); none for a new file.
    pub taken_at_ms: Option<u64>,
}

impl Checkpoint {
    /// Opens the checkpoint in `state_dir` (creating it), with what it holds. One that cannot be
    /// read is moved aside (`quotas.redb.unreadable-<ms>`) and a new one started: an error
    /// only when neither can be done.
    pub fn open(state_dir: &Path) -> anyhow::Result<(Checkpoint, Saved)> {
        let path = state_dir.join(FILE);
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        match Self::open_file(&path) {
            Ok(opened) => Ok(opened),
            Err(err) => {
                let aside = super::private_file::aside_path(&path);
                warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    "the quota checkpoint cannot be read ({err:#}): it is moved aside and a new \
                     one started; quota counts the kernel lost (a reboot) are not brought back"
                );
                std::fs::rename(&path, &aside).with_context(|| {
                    format!("moving {} aside to {}", path.display(), aside.display())
                })?;
                Self::open_file(&path)
                    .with_context(|| format!("starting a new quota checkpoint {}", path.display()))
            }
        }
    }

    fn open_file(path: &Path) -> anyhow::Result<(Checkpoint, Saved)> {
        let db = Database::create(path)?;
        // Token hashes are not tokens, but the state directory's files are its owner's alone.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let read = db.begin_read()?;
        let mut words = HashMap::new();
        match read.open_table(WORDS) {
            Ok(table) => {
                for entry in table.iter()? {
                    let (hash, value) = entry?;
                    let (usage, top_up) = value.value();
                    words.insert(hash.value(), QuotaWords { usage, top_up });
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(err) => return Err(err.into()),
        }
        let taken_at_ms = match read.open_table(META) {
            Ok(table) => table.get("taken_at_ms")?.map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(err) => return Err(err.into()),
        };
        drop(read);
        let checkpoint = Checkpoint {
            db,
            written: words.clone(),
            failing_since: None,
        };
        Ok((checkpoint, Saved { words, taken_at_ms }))
    }

    /// Writes what changed since the last write (one synced commit; none when nothing did).
    pub fn write(&mut self, now: HashMap<u64, QuotaWords>) -> anyhow::Result<()> {
        let changed: Vec<_> = now
            .iter()
            .filter(|(hash, words)| self.written.get(hash) != Some(words))
            .collect();
        let gone: Vec<_> = self
            .written
            .keys()
            .filter(|hash| !now.contains_key(hash))
            .collect();
        if changed.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(WORDS)?;
            for (hash, words) in changed {
                table.insert(hash, (words.usage, words.top_up))?;
            }
            for hash in gone {
                table.remove(hash)?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert("taken_at_ms", super::overrides::now_ms())?;
        }
        txn.commit()?;
        self.written = now;
        Ok(())
    }

    /// Writes what the datapath holds now; a failure is logged (once a minute while it lasts)
    /// and tried again on the next call.
    pub fn write_from(&mut self, datapath: &Datapath) {
        let result = datapath.quota_words().and_then(|words| self.write(words));
        match result {
            Ok(()) => {
                if self.failing_since.take().is_some() {
                    info!("the quota checkpoint is written again");
                }
            }
            Err(err) => {
                let now = SystemTime::now();
                let said = self.failing_since.is_some_and(|t| {
                    now.duration_since(t).unwrap_or_default() < Duration::from_secs(60)
                });
                if !said {
                    warn!("writing the quota checkpoint: {err:#} (tried again every second)");
                    self.failing_since = Some(now);
                }
            }
        }
    }
}

/// Writes the checkpoint every [`INTERVAL`] until the runtime ends.
pub fn spawn(checkpoint: Arc<Mutex<Checkpoint>>, state: Arc<AgentState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let checkpoint = Arc::clone(&checkpoint);
            let state = Arc::clone(&state);
            let _ = tokio::task::spawn_blocking(move || {
                let mut checkpoint = checkpoint.lock().unwrap_or_else(|p| p.into_inner());
                checkpoint.write_from(&state.datapath());
            })
            .await;
        }
    });
}

/// Brings back what `saved` holds that the datapath lost, and says what it did.
pub fn restore(datapath: &Datapath, saved: &Saved) -> anyhow::Result<()> {
    if saved.words.is_empty() {
        return Ok(());
    }
    let restored = datapath.restore_quota_words(&saved.words)?;
    let age_s = saved
        .taken_at_ms
        .map(|ms| super::overrides::now_ms().saturating_sub(ms) / 1000);
    info!(
        counts = restored.counts,
        top_ups = restored.top_ups,
        left_out = restored.skipped,
        checkpoint_age_s = age_s,
        "quota checkpoint read: counts the kernel lost are brought back (windows over, or \
         keys without a quota now, are left out)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(usage: u64, top_up: u64) -> QuotaWords {
        QuotaWords { usage, top_up }
    }

    #[test]
    fn what_is_written_is_read_back_and_what_is_gone_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut checkpoint, saved) = Checkpoint::open(dir.path()).unwrap();
        assert!(saved.words.is_empty() && saved.taken_at_ms.is_none());
        let first = HashMap::from([(1, words(10, 0)), (2, words(20, 5))]);
        checkpoint.write(first.clone()).unwrap();
        drop(checkpoint);
        let (mut checkpoint, saved) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(saved.words, first);
        assert!(saved.taken_at_ms.is_some());
        // Key 1 evicted by the kernel, key 2 counted on, key 3 new.
        let second = HashMap::from([(2, words(21, 5)), (3, words(1, 0))]);
        checkpoint.write(second.clone()).unwrap();
        drop(checkpoint);
        let (_, saved) = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(saved.words, second);
    }

    #[test]
    fn a_file_that_is_not_a_checkpoint_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"not\": \"a redb file\"}").unwrap();
        let (_, saved) = Checkpoint::open(dir.path()).unwrap();
        assert!(saved.words.is_empty());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("quotas.redb.unreadable-")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == FILE), "{names:?}");
    }
}
