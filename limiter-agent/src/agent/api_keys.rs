//! Registered API keys (`limiter keys add|rm`) and the secret their tokens are hashed with.
//!
//! A token is never kept: only its keyed hash (SipHash-1-3 under the secret, as the XDP program
//! computes it), under the name the operator gave it. The secret is made on first start in the
//! state directory (mode 0600), or read from `[http] secret_file` so that several hosts agree.
//! The registered keys live in `<state-dir>/api-keys.json` (mode 0600, written atomically),
//! with the secret's id: keys registered under another secret hash differently, and a file
//! whose secret is not the one in force is refused, not silently misapplied.

use super::private_file;
use anyhow::{anyhow, bail, Context};
use limiter_common::keyhash::KeyHasher;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const SECRET_FILE: &str = "api-key.secret";
const KEYS_FILE: &str = "api-keys.json";
/// Registered keys at most (the datapath's API_KEYS map).
pub const MAX_REGISTERED: usize = limiter_common::maps::MAX_API_KEYS as usize;

/// The secret of the token hash.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Secret([u64; 2]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.id())
    }
}

impl Secret {
    /// The secret of `[http] secret_file` when given, else `<state_dir>/api-key.secret`, made
    /// (128 random bits) when it does not exist yet.
    pub fn load_or_create(state_dir: &Path, configured: Option<&Path>) -> anyhow::Result<Secret> {
        if let Some(path) = configured {
            return Secret::read(path);
        }
        let path = state_dir.join(SECRET_FILE);
        match Secret::read(&path) {
            Ok(secret) => Ok(secret),
            Err(_) if !path.exists() => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|e| anyhow!("no randomness: {e}"))?;
                let secret = Secret([
                    u64::from_le_bytes(bytes[..8].try_into().unwrap()),
                    u64::from_le_bytes(bytes[8..].try_into().unwrap()),
                ]);
                private_file::write(&path, format!("{}\n", secret.hex()).as_bytes())?;
                tracing::info!(path = %path.display(), "made the API key hash's secret");
                Ok(secret)
            }
            Err(err) => Err(err),
        }
    }

    /// A file of 32 hex digits (and whitespace around them).
    fn read(path: &Path) -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the API key secret {}", path.display()))?;
        let hex = text.trim();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{} is not an API key secret: it must hold 32 hex digits (128 bits), such as \
                 the output of `openssl rand -hex 16`",
                path.display()
            );
        }
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the API key secret is readable by others than its owner: whoever reads it \
                     can aim tokens at other keys' buckets; chmod 600 it"
                );
            }
        }
        let word = |at: usize| u64::from_str_radix(&hex[at..at + 16], 16).expect("hex digits");
        Ok(Secret([word(0), word(16)]))
    }

    fn hex(&self) -> String {
        format!("{:016x}{:016x}", self.0[0], self.0[1])
    }

    pub fn words(&self) -> [u64; 2] {
        self.0
    }

    /// The keyed hash of `token`, as the XDP program computes it.
    pub fn hash(&self, token: &[u8]) -> u64 {
        let mut hasher = KeyHasher::new(self.0[0], self.0[1]);
        hasher.write(token);
        hasher.finish()
    }

    /// A name for the secret that reveals nothing of it: the hash of a fixed text under it.
    pub fn id(&self) -> String {
        fingerprint(self.hash(b"limiter secret id"))
    }
}

/// How a key whose token hashes to `hash` is shown when it has no name.
pub fn fingerprint(hash: u64) -> String {
    format!("{hash:016x}")
}

/// Whether `text` looks like a fingerprint (or the start of one): 4 to 16 hex digits.
pub fn is_fingerprint(text: &str) -> bool {
    (4..=16).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A key's name: 1 to 64 of letters, digits and `-_.@`, not a fingerprint.
pub fn check_key_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(format!(
            "key name '{name}': 1 to 64 letters, digits, '-', '_', '.' or '@'"
        ));
    }
    if name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "key name '{name}' would read as a fingerprint (16 hex digits); choose another"
        ));
    }
    Ok(())
}

/// One registered key as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    pub name: String,
    /// None: the `[http]` default.
    pub plan: Option<String>,
    /// The token's keyed hash, as 16 hex digits.
    #[serde(with = "hex_u64")]
    pub hash: u64,
    pub added_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    /// [`Secret::id`] of the secret the hashes were made under.
    secret_id: String,
    keys: Vec<Registered>,
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{value:016x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() != 16 {
            return Err(serde::de::Error::custom("a hash of 16 hex digits"));
        }
        u64::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

/// Why a key cannot be added.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    Invalid(String),
    Duplicate(String),
    Capacity(String),
}

/// The registered keys and their file.
pub struct ApiKeyStore {
    path: PathBuf,
    secret_id: String,
    keys: Vec<Registered>,
}

impl ApiKeyStore {
    /// Reads `<state_dir>/api-keys.json` (none yet: no keys). A file that does not parse, holds
    /// a key twice, or was written under another secret is refused whole, saying why.
    pub fn load(state_dir: &Path, secret: &Secret) -> anyhow::Result<ApiKeyStore> {
        let path = state_dir.join(KEYS_FILE);
        let invalid = |why: String| {
            anyhow!(
                "{} is not a valid API keys file: {why}; fix or remove it (its keys are then \
                 unregistered, and limited by the [http] default)",
                path.display()
            )
        };
        let mut store = ApiKeyStore {
            path: path.clone(),
            secret_id: secret.id(),
            keys: Vec::new(),
        };
        let file: KeysFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| invalid(err.to_string()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(store),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        if file.secret_id != store.secret_id {
            return Err(invalid(format!(
                "its keys were hashed under another secret (id {}, the secret in force is {}): \
                 put the old secret back, or remove the file and add the keys again",
                file.secret_id, store.secret_id
            )));
        }
        for key in file.keys {
            store.add(key).map_err(|err| match err {
                AddError::Invalid(why) | AddError::Duplicate(why) | AddError::Capacity(why) => {
                    invalid(why)
                }
            })?;
        }
        Ok(store)
    }

    pub fn list(&self) -> &[Registered] {
        &self.keys
    }

    /// The store with `keys` in place of its own (after a change that failed).
    pub fn restore(store: &ApiKeyStore, keys: Vec<Registered>) -> ApiKeyStore {
        ApiKeyStore {
            path: store.path.clone(),
            secret_id: store.secret_id.clone(),
            keys,
        }
    }

    /// Adds `key`: its name and its token must be new.
    pub fn add(&mut self, key: Registered) -> Result<(), AddError> {
        check_key_name(&key.name).map_err(AddError::Invalid)?;
        if let Some(plan) = &key.plan {
            super::config::check_plan_name(plan).map_err(AddError::Invalid)?;
        }
        if self.keys.iter().any(|k| k.name == key.name) {
            return Err(AddError::Duplicate(format!(
                "a key named '{}' is registered already (`limiter keys rm {}` first to replace it)",
                key.name, key.name
            )));
        }
        if let Some(other) = self.keys.iter().find(|k| k.hash == key.hash) {
            return Err(AddError::Duplicate(format!(
                "this token is registered already, as '{}'",
                other.name
            )));
        }
        if self.keys.len() >= MAX_REGISTERED {
            return Err(AddError::Capacity(format!(
                "{MAX_REGISTERED} keys are registered: the datapath holds no more"
            )));
        }
        self.keys.push(key);
        self.keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    /// Forgets the key named `name`; it, if there was one.
    pub fn remove(&mut self, name: &str) -> Option<Registered> {
        let at = self.keys.iter().position(|k| k.name == name)?;
        Some(self.keys.remove(at))
    }

    /// Writes the file atomically (a temporary file, synced, renamed over the old one).
    pub fn save(&self) -> anyhow::Result<()> {
        let file = KeysFile {
            secret_id: self.secret_id.clone(),
            keys: self.keys.clone(),
        };
        private_file::write(&self.path, &serde_json::to_vec_pretty(&file)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, hash: u64) -> Registered {
        Registered {
            name: name.to_owned(),
            plan: Some("pro".to_owned()),
            hash,
            added_at_ms: 1,
        }
    }

    #[test]
    fn the_secret_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::load_or_create(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Secret::load_or_create(dir.path(), None).unwrap(), secret);
        std::fs::write(dir.path().join("bad"), "not hex").unwrap();
        let err = Secret::load_or_create(dir.path(), Some(&dir.path().join("bad"))).unwrap_err();
        assert!(err.to_string().contains("32 hex digits"), "{err}");
    }

    #[test]
    fn keys_survive_a_restart_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let secret = Secret::load_or_create(dir.path(), None).unwrap();
        let mut store = ApiKeyStore::load(dir.path(), &secret).unwrap();
        store.add(key("acme", 1)).unwrap();
        assert!(matches!(
            store.add(key("acme", 2)),
            Err(AddError::Duplicate(_))
        ));
        assert!(matches!(
            store.add(key("other", 1)),
            Err(AddError::Duplicate(_))
        ));
        assert!(matches!(
            store.add(key("no spaces", 3)),
            Err(AddError::Invalid(_))
        ));
        assert!(matches!(
            store.add(key("0123456789abcdef", 3)),
            Err(AddError::Invalid(_))
        ));
        store.save().unwrap();
        let text = std::fs::read_to_string(dir.path().join(KEYS_FILE)).unwrap();
        assert!(
            text.contains("\"acme\"") && text.contains("0000000000000001"),
            "{text}"
        );
        let again = ApiKeyStore::load(dir.path(), &secret).unwrap();
        assert_eq!(again.list(), store.list());

        // Under another secret: refused, naming the file.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Secret::load_or_create(other_dir.path(), None).unwrap();
        let err = ApiKeyStore::load(dir.path(), &other).err().unwrap();
        assert!(format!("{err:#}").contains("another secret"), "{err:#}");
        // Edited by hand into nonsense: refused.
        std::fs::write(dir.path().join(KEYS_FILE), "{\"keys\": 3}").unwrap();
        let err = ApiKeyStore::load(dir.path(), &secret).err().unwrap();
        assert!(format!("{err:#}").contains("api-keys.json"), "{err:#}");
    }
}
