//! Names and layouts of the maps the XDP program and the agent share.
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so its bytes are fully defined
//! (the kernel hashes keys byte by byte) and both sides agree on the layout.

use crate::bucket::Limit;

/// LRU hash: [`BucketKey`] → [`BucketState`], one per tracked key. Sized by `[agent] max_keys`.
pub const BUCKETS_MAP: &str = "BUCKETS";
/// Array with one [`DatapathConfig`], written by the agent.
pub const CONFIG_MAP: &str = "CONFIG";
/// Per-CPU array of `u64` counters, indexed by [`Counter`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// LPM tries of the configured rules: IPv4 address ([u8; 4]) / IPv6 address ([u8; 16]) →
/// [`RuleEntry`]. Written by the agent.
pub const RULES_V4_MAP: &str = "RULES_V4";
pub const RULES_V6_MAP: &str = "RULES_V6";
/// Rules per trie at most.
pub const MAX_RULES: u32 = 16_384;

/// Name of the XDP program attached to interfaces.
pub const LIMITER_PROG: &str = "limiter";
/// Name of the XDP program the agent runs through `BPF_PROG_TEST_RUN` to reset one key. Running
/// the reset in the kernel lets it touch only the bucket's TAT, with the packet counters that the
/// datapath increments at the same moment left intact — a write of the whole map value from
/// userspace would lose those increments.
pub const RESET_PROG: &str = "limiter_reset";

/// Address family of a key: IPv4.
pub const FAMILY_IPV4: u8 = 4;
/// Address family of a key: IPv6.
pub const FAMILY_IPV6: u8 = 6;

/// The rule id of `[limits]`, for sources no rule matches.
pub const DEFAULT_RULE_ID: u32 = 0;

/// What a bucket is kept for: a source prefix under one rule. `addr` holds the address in network
/// byte order, masked to `prefix_len` bits; IPv4 uses the first four bytes, the rest stays zero.
/// The rule is part of the key so that sources of one prefix that match different rules never
/// share a bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: u16,
    pub rule_id: u32,
    pub addr: [u8; 16],
}

/// One key's bucket and counters (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// GCRA theoretical arrival time, CLOCK_MONOTONIC nanoseconds (see `bucket`).
    pub tat_ns: u64,
    /// Packets of this key passed (in dry run: passed within the limit).
    pub passed: u64,
    /// Packets of this key dropped.
    pub dropped: u64,
    /// Packets of this key over the limit that dry run let through.
    pub would_drop: u64,
    /// Reserved for per-key flags.
    pub flags: u32,
    pub _pad: u32,
}

/// `RuleEntry::action`: never limited.
pub const ACTION_ALLOW: u32 = 1;
/// `RuleEntry::action`: always dropped.
pub const ACTION_DENY: u32 = 2;
/// `RuleEntry::action`: limited with the rule's own limit.
pub const ACTION_LIMIT: u32 = 3;

/// `RuleEntry::flags`: one bucket for the whole CIDR instead of one per source prefix.
pub const RULE_SHARED: u32 = 1;

/// A rule as the datapath applies it, found by longest-prefix match on the source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleEntry {
    /// Stable id of the rule (see the agent's config), part of the bucket key.
    pub id: u32,
    /// `ACTION_*`.
    pub action: u32,
    /// `RULE_*` bits.
    pub flags: u32,
    /// The rule's CIDR length; with `RULE_SHARED` the bucket key is the CIDR itself.
    pub prefix_len: u32,
    /// With `ACTION_LIMIT`.
    pub limit: Limit,
}

/// `DatapathConfig::flags`: count what would be dropped, drop nothing.
pub const CONFIG_DRY_RUN: u32 = 1;
/// `DatapathConfig::flags`: the IPv4 / IPv6 rule tries are not empty (else their lookup is skipped).
pub const CONFIG_HAS_RULES_V4: u32 = 2;
pub const CONFIG_HAS_RULES_V6: u32 = 4;

/// What the agent tells the datapath; index 0 of [`CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The `[limits]` every source without a rule gets.
    pub default_limit: Limit,
    /// Sources are grouped into keys by these prefix lengths.
    pub ipv4_prefix: u32,
    pub ipv6_prefix: u32,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Zero until the agent has written a configuration; the datapath passes everything before.
    pub valid: u32,
}

/// Global counters, one slot each in [`COUNTERS_MAP`] (per CPU; the agent sums them).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets of a limited key that passed.
    Passed = 0,
    /// Packets of a limited key that were dropped.
    Dropped = 1,
    /// Packets over the limit that dry run let through.
    WouldDrop = 2,
    /// Packets passed by an `allow` rule.
    AllowedByRule = 3,
    /// Packets matched by a `deny` rule (dropped, or passed in dry run).
    DeniedByRule = 4,
    /// Packets the program never limits: non-IP (ARP …), IPv6 neighbour/router discovery.
    NotLimited = 5,
    /// Packets that could not be parsed (truncated, unknown, beyond the header bound); passed.
    Unparsed = 6,
    /// New keys that could not be inserted into the bucket map; passed (see the datapath).
    InsertFailed = 7,
    /// Keys created. Less the keys tracked now, it is how many the LRU map evicted.
    KeysCreated = 8,
    /// Packets that arrived before the agent wrote a configuration; passed.
    Unconfigured = 9,
    /// Packets dropped because their bucket's compare-and-swap lost to other CPUs every time.
    ContentionDrops = 10,
}

/// Number of slots in [`COUNTERS_MAP`].
pub const COUNTER_SLOTS: u32 = 11;

#[cfg(feature = "user")]
impl BucketKey {
    /// The key's bytes as the kernel sees them (the reset program reads them as packet data).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: BucketKey is #[repr(C)] without implicit padding, so every byte is initialised.
        unsafe {
            core::slice::from_raw_parts(
                (self as *const BucketKey).cast::<u8>(),
                core::mem::size_of::<BucketKey>(),
            )
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data without implicit padding.
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::BucketState {}
    unsafe impl aya::Pod for super::DatapathConfig {}
    unsafe impl aya::Pod for super::RuleEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<BucketKey>(), 1 + 1 + 2 + 4 + 16);
        assert_eq!(size_of::<BucketState>(), 8 * 4 + 4 + 4);
        assert_eq!(size_of::<RuleEntry>(), 4 * 4 + 16);
        assert_eq!(size_of::<DatapathConfig>(), 16 + 4 * 4);
    }

    #[test]
    fn per_key_state_fits_a_cache_line() {
        // Key and value of one tracked key, as the goal states it (≤ 64 bytes).
        assert!(size_of::<BucketState>() <= 64);
    }
}
