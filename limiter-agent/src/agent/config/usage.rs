//! `[usage]`: how much usage history the agent keeps (see `agent::usage`).

use serde::{Deserialize, Deserializer, Serialize};

/// The most `keys` can be: beyond it the history's worst-case size on disk (see docs) would be
/// tens of gigabytes.
pub const KEYS_AT_MOST: u32 = 100_000;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UsageSection {
    /// The busiest keys of each minute kept in the history (the totals over all keys are kept
    /// whatever this is).
    #[serde(default = "default_keys", deserialize_with = "keys")]
    pub keys: u32,
}

impl Default for UsageSection {
    fn default() -> Self {
        UsageSection {
            keys: default_keys(),
        }
    }
}

fn default_keys() -> u32 {
    100
}

fn keys<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let value = i64::deserialize(d)?;
    u32::try_from(value)
        .ok()
        .filter(|v| (1..=KEYS_AT_MOST).contains(v))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "[usage] keys (the busiest keys of each minute kept in the usage history) must \
                 be between 1 and {KEYS_AT_MOST}, not {value}"
            ))
        })
}
