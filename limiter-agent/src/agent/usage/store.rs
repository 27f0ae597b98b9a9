//! The usage history on disk: `usage.redb` in the state directory (redb: an embedded store whose
//! commits are atomic and synced and whose pages are checksummed).
//!
//! Rows are keyed by period first and key second: a minute's write touches only the last pages
//! of the tables, pruning takes only their first ones, and the rows of a window are one range.
//! A key's name is stored once (`key_names`); rows carry its id, so that a row is 24 bytes.
//!
//! - `minutes`: (minute, key id) → (passed, dropped): the totals over all keys (id
//!   [`TOTAL`]) and the busiest keys of the minute.
//! - `hours`: (hour, key id) → the sums of the key's minute rows in that hour, kept as the
//!   minutes are written: an hour, and so a day, adds up to exactly what its minutes hold.

use super::{Counts, UsageKey, KEPT_MINUTES};
use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use tracing::warn;

/// The file in the state directory.
pub const FILE: &str = "usage.redb";

const MINUTES: TableDefinition<(u32, u32), (u64, u64)> = TableDefinition::new("minutes");
const HOURS: TableDefinition<(u32, u32), (u64, u64)> = TableDefinition::new("hours");
/// Key name → id.
const KEY_IDS: TableDefinition<&str, u32> = TableDefinition::new("key_ids");
/// Key id → (name, the last hour with a row of it): names no row refers to are pruned.
const KEY_NAMES: TableDefinition<u32, (&str, u32)> = TableDefinition::new("key_names");
/// `next_key_id`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const CLOSED: &str = "the usage history is closed after an I/O error (it is opened again)";

/// The id of the totals over all keys; keys' ids start after it.
pub const TOTAL: u32 = 0;

/// Which rows a window is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Minutes,
    Hours,
}

impl Table {
    fn definition(self) -> TableDefinition<'static, (u32, u32), (u64, u64)> {
        match self {
            Table::Minutes => MINUTES,
            Table::Hours => HOURS,
        }
    }
}

/// A minute as the store holds it.
pub struct MinuteRows {
    pub total: Counts,
    /// Id, key, counts.
    pub keys: Vec<(u32, UsageKey, Counts)>,
}

/// The history file.
pub struct Store {
    path: PathBuf,
    /// None between closing and opening again (see [`Store::reopen`]).
    db: RwLock<Option<Database>>,
}

impl Store {
    /// Opens `usage.redb` in `state_dir` (creating it). One that cannot be read (truncated,
    /// corrupt, of another format) is said so in the log, moved aside
    /// (`usage.redb.unreadable-<ms>`) for a person to look at, and a new one started: an error
    /// only when neither can be done.
    pub fn open(state_dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        let path = state_dir.join(FILE);
        match Self::open_file(&path) {
            Ok(store) => Ok(store),
            Err(err) => {
                let aside = super::super::private_file::aside_path(&path);
                warn!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    "the usage history cannot be read ({err:#}): it is moved aside and a new one \
                     started; `limiter usage` shows only what is recorded from now on"
                );
                std::fs::rename(&path, &aside).with_context(|| {
                    format!("moving {} aside to {}", path.display(), aside.display())
                })?;
                Self::open_file(&path)
                    .with_context(|| format!("starting a new usage history {}", path.display()))
            }
        }
    }

    /// Opens the file and reads a little of every table (redb checks the pages it reads).
    fn open_file(path: &PathBuf) -> anyhow::Result<Store> {
        let db = Database::create(path)?;
        // Names are fingerprints and prefixes, never tokens; still, the state directory's files
        // are its owner's alone.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let txn = db.begin_write()?;
        {
            for table in [MINUTES, HOURS] {
                let table = txn.open_table(table)?;
                table.first()?;
                table.last()?;
            }
            txn.open_table(KEY_IDS)?.first()?;
            txn.open_table(KEY_NAMES)?.last()?;
            txn.open_table(META)?.get("next_key_id")?;
        }
        txn.commit()?;
        Ok(Store {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
        })
    }

    /// Closes the file and opens it again: after an I/O error (a full disk) redb refuses every
    /// transaction until then. Not moved aside when it fails: it was readable before.
    pub fn reopen(&self) -> anyhow::Result<()> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        *db = None;
        *db = Some(Database::create(&self.path)?);
        Ok(())
    }

    fn begin_read(&self) -> anyhow::Result<redb::ReadTransaction> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        Ok(db.as_ref().context(CLOSED)?.begin_read()?)
    }

    fn begin_write(&self) -> anyhow::Result<redb::WriteTransaction> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        Ok(db.as_ref().context(CLOSED)?.begin_write()?)
    }

    /// The rows of `minute` as written: by id, the keys' with their names.
    pub fn minute_rows(&self, minute: u32) -> anyhow::Result<MinuteRows> {
        let txn = self.begin_read()?;
        let minutes = txn.open_table(MINUTES)?;
        let names = txn.open_table(KEY_NAMES)?;
        let mut total = Counts::default();
        let mut keys = Vec::new();
        for row in minutes.range((minute, 0)..=(minute, u32::MAX))? {
            let (key, value) = row?;
            let (_, id) = key.value();
            let counts = Counts::from(value.value());
            if id == TOTAL {
                total = counts;
                continue;
            }
            if let Some(name) = names.get(id)? {
                if let Some(key) = UsageKey::parse(name.value().0) {
                    keys.push((id, key, counts));
                }
            }
        }
        Ok(MinuteRows { total, keys })
    }

    /// Writes the rows of `minute` — `total` and `keys` — in place of `before` (what this
    /// minute held, by id), and brings the hour's sums along. What the minute holds now, by id.
    pub fn write_minute(
        &self,
        minute: u32,
        total: Counts,
        keys: &[(UsageKey, Counts)],
        before: &HashMap<u32, Counts>,
    ) -> anyhow::Result<HashMap<u32, Counts>> {
        let hour = minute / 60;
        let txn = self.begin_write()?;
        let mut now = HashMap::with_capacity(keys.len() + 1);
        now.insert(TOTAL, total);
        {
            let mut ids = txn.open_table(KEY_IDS)?;
            let mut names = txn.open_table(KEY_NAMES)?;
            let mut meta = txn.open_table(META)?;
            for (key, counts) in keys {
                let name = key.to_string();
                let known = ids.get(name.as_str())?.map(|id| id.value());
                let id = match known {
                    Some(id) => id,
                    None => {
                        let id = meta
                            .get("next_key_id")?
                            .map_or(TOTAL + 1, |v| v.value() as u32);
                        meta.insert("next_key_id", u64::from(id) + 1)?;
                        ids.insert(name.as_str(), id)?;
                        id
                    }
                };
                let last_hour = names.get(id)?.map(|v| v.value().1);
                if last_hour != Some(hour) {
                    names.insert(id, (name.as_str(), hour))?;
                }
                *now.entry(id).or_default() += *counts;
            }
            let mut minutes = txn.open_table(MINUTES)?;
            let mut hours = txn.open_table(HOURS)?;
            for (&id, &counts) in &now {
                minutes.insert((minute, id), counts.pair())?;
            }
            for id in before.keys().filter(|id| !now.contains_key(id)) {
                minutes.remove((minute, *id))?;
            }
            for id in now
                .keys()
                .chain(before.keys().filter(|id| !now.contains_key(id)))
            {
                let old = before.get(id).copied().unwrap_or_default();
                let new = now.get(id).copied().unwrap_or_default();
                if old == new {
                    continue;
                }
                let sum = hours
                    .get((hour, *id))?
                    .map_or(Counts::default(), |v| Counts::from(v.value()));
                let sum = (sum - old) + new;
                if sum == Counts::default() {
                    hours.remove((hour, *id))?;
                } else {
                    hours.insert((hour, *id), sum.pair())?;
                }
            }
        }
        txn.commit()?;
        Ok(now)
    }

    /// Removes the rows older than [`KEPT_MINUTES`] before `minute` (hours: those wholly
    /// before), and the names no row refers to any more.
    pub fn prune(&self, minute: u32) -> anyhow::Result<()> {
        let oldest_minute = minute.saturating_sub(KEPT_MINUTES);
        let oldest_hour = oldest_minute / 60;
        let txn = self.begin_write()?;
        {
            let mut minutes = txn.open_table(MINUTES)?;
            minutes.retain_in(..(oldest_minute, 0), |_, _| false)?;
            let mut hours = txn.open_table(HOURS)?;
            hours.retain_in(..(oldest_hour, 0), |_, _| false)?;
            let mut names = txn.open_table(KEY_NAMES)?;
            let gone: Vec<String> = names
                .extract_if(|_, (_, last_hour)| last_hour < oldest_hour)?
                .map(|row| row.map(|(_, value)| value.value().0.to_owned()))
                .collect::<Result<_, _>>()?;
            let mut ids = txn.open_table(KEY_IDS)?;
            for name in gone {
                ids.remove(name.as_str())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Rows of minutes, rows of hours, and key names held.
    pub fn sizes(&self) -> anyhow::Result<(u64, u64, u64)> {
        use redb::ReadableTableMetadata;
        let txn = self.begin_read()?;
        Ok((
            txn.open_table(MINUTES)?.len()?,
            txn.open_table(HOURS)?.len()?,
            txn.open_table(KEY_NAMES)?.len()?,
        ))
    }

    /// Every key with rows, by id.
    pub fn keys(&self) -> anyhow::Result<Vec<(u32, UsageKey)>> {
        let txn = self.begin_read()?;
        let names = txn.open_table(KEY_NAMES)?;
        let mut keys = Vec::new();
        for row in names.iter()? {
            let (id, value) = row?;
            if let Some(key) = UsageKey::parse(value.value().0) {
                keys.push((id.value(), key));
            }
        }
        Ok(keys)
    }

    /// The rows of `id` in periods `from..=to` of `table`, by period (periods without a row
    /// are left out).
    pub fn rows(
        &self,
        table: Table,
        id: u32,
        from: u32,
        to: u32,
    ) -> anyhow::Result<Vec<(u32, Counts)>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(table.definition())?;
        let mut rows = Vec::new();
        for period in from..=to {
            if let Some(value) = table.get((period, id))? {
                rows.push((period, Counts::from(value.value())));
            }
        }
        Ok(rows)
    }

    /// Every key's sum over periods `from..=to` of `table` (not the totals), by id.
    pub fn sums(&self, table: Table, from: u32, to: u32) -> anyhow::Result<HashMap<u32, Counts>> {
        let txn = self.begin_read()?;
        let table = txn.open_table(table.definition())?;
        let mut sums: HashMap<u32, Counts> = HashMap::new();
        for row in table.range((from, 0)..=(to, u32::MAX))? {
            let (key, value) = row?;
            let (_, id) = key.value();
            if id != TOTAL {
                *sums.entry(id).or_default() += Counts::from(value.value());
            }
        }
        Ok(sums)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(passed: u64, dropped: u64) -> Counts {
        Counts { passed, dropped }
    }

    fn key(text: &str) -> UsageKey {
        UsageKey::parse(text).unwrap()
    }

    /// The hours table's row of `name` in `hour`.
    fn hour_of(store: &Store, name: &str, hour: u32) -> Counts {
        let id = store
            .keys()
            .unwrap()
            .into_iter()
            .find(|(_, k)| k.to_string() == name)
            .map(|(id, _)| id)
            .unwrap_or(TOTAL);
        store
            .rows(Table::Hours, id, hour, hour)
            .unwrap()
            .first()
            .map_or(Counts::default(), |(_, c)| *c)
    }

    #[test]
    fn a_minute_rewritten_keeps_its_hour_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let minute = 29_000_000; // in 2025
        let a = key("198.18.0.10/32");
        let b = key("key:00000000000000ab");
        let written = store
            .write_minute(minute, counts(5, 1), &[(a, counts(5, 1))], &HashMap::new())
            .unwrap();
        // The same minute again, later: a counted on, b new.
        let written = store
            .write_minute(
                minute,
                counts(12, 3),
                &[(a, counts(7, 1)), (b, counts(5, 2))],
                &written,
            )
            .unwrap();
        let hour = minute / 60;
        assert_eq!(hour_of(&store, "198.18.0.10/32", hour), counts(7, 1));
        assert_eq!(hour_of(&store, "key:00000000000000ab", hour), counts(5, 2));
        // a drops out of the minute's busiest: its hour loses what the minute held of it.
        store
            .write_minute(minute, counts(12, 3), &[(b, counts(5, 2))], &written)
            .unwrap();
        assert_eq!(hour_of(&store, "198.18.0.10/32", hour), counts(0, 0));
        assert_eq!(hour_of(&store, "", hour), counts(12, 3), "the totals");
        // The next minute of the same hour adds to it.
        store
            .write_minute(
                minute + 1,
                counts(1, 0),
                &[(b, counts(1, 0))],
                &HashMap::new(),
            )
            .unwrap();
        assert_eq!(hour_of(&store, "key:00000000000000ab", hour), counts(6, 2));
        let rows = store.minute_rows(minute).unwrap();
        assert_eq!(rows.total, counts(12, 3));
        assert_eq!(rows.keys.len(), 1);
        assert_eq!((rows.keys[0].1, rows.keys[0].2), (b, counts(5, 2)));
    }

    #[test]
    fn rows_older_than_seven_days_and_their_names_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let start = 29_000_000 - 29_000_000 % 60;
        let old = key("198.18.0.1/32");
        let new = key("198.18.0.2/32");
        store
            .write_minute(start, counts(1, 0), &[(old, counts(1, 0))], &HashMap::new())
            .unwrap();
        let later = start + 2 * 60;
        store
            .write_minute(later, counts(1, 0), &[(new, counts(1, 0))], &HashMap::new())
            .unwrap();
        // Seven days after the first minute's hour ended: it goes, the later one stays.
        let now = start + 60 + KEPT_MINUTES;
        store.prune(now).unwrap();
        assert!(store
            .rows(Table::Minutes, TOTAL, start, start)
            .unwrap()
            .is_empty());
        assert!(store
            .rows(Table::Hours, TOTAL, start / 60, start / 60)
            .unwrap()
            .is_empty());
        assert_eq!(
            store
                .rows(Table::Minutes, TOTAL, later, later)
                .unwrap()
                .len(),
            1
        );
        let names: Vec<String> = store
            .keys()
            .unwrap()
            .iter()
            .map(|(_, k)| k.to_string())
            .collect();
        assert_eq!(names, ["198.18.0.2/32"]);
        // A name that comes back gets an id again, and its rows are found by it.
        store
            .write_minute(now, counts(2, 0), &[(old, counts(2, 0))], &HashMap::new())
            .unwrap();
        let sums = store.sums(Table::Minutes, now, now).unwrap();
        let (id, _) = store
            .keys()
            .unwrap()
            .into_iter()
            .find(|(_, k)| *k == old)
            .unwrap();
        assert_eq!(sums[&id], counts(2, 0));
    }

    #[test]
    fn a_file_that_is_not_a_history_is_moved_aside_and_a_new_one_started() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), vec![0x5a; 10_000]).unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_minute(1, counts(1, 0), &[], &HashMap::new())
            .unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("usage.redb.unreadable-")),
            "{names:?}"
        );
        let aside = names
            .iter()
            .find(|n| n.starts_with("usage.redb.unreadable-"))
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join(aside)).unwrap(),
            vec![0x5a; 10_000],
            "kept as it was"
        );
    }

    #[test]
    fn a_truncated_history_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for minute in 0..200 {
            let keys: Vec<_> = (0..50)
                .map(|i| {
                    (
                        key(&format!("198.18.{}.{}/32", i / 200, i % 200)),
                        counts(i, 1),
                    )
                })
                .collect();
            store
                .write_minute(29_000_000 + minute, counts(1, 1), &keys, &HashMap::new())
                .unwrap();
        }
        drop(store);
        let path = dir.path().join(FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len / 3).unwrap();
        drop(file);
        let store = Store::open(dir.path()).unwrap();
        let moved = std::fs::read_dir(dir.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("usage.redb.unreadable-")
        });
        assert!(moved, "a third of the file is no history");
        assert!(store.keys().unwrap().is_empty(), "a new one");
        store.minute_rows(29_000_000).unwrap();
    }
}
