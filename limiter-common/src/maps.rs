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

/// Name of the XDP program attached to interfaces.
pub const LIMITER_PROG: &str = "limiter";
/// Name of the XDP program the agent runs through `BPF_PROG_TEST_RUN` to reset one key. Running
/// the reset in the kernel lets it touch only the bucket's TAT, with the packet counters that the
/// datapath increments at the same moment left intact — a write of the whole map value from
/// userspace would lose those increments.
pub const RESET_PROG: &str = "limiter_reset";

/// Address family of a key: IPv4.
pub const FAMILY_IPV4: u32 = 4;
/// Address family of a key: IPv6.
pub const FAMILY_IPV6: u32 = 6;

/// What a bucket is kept for: a source prefix. `addr` holds the address in network byte order,
/// masked to `prefix_len` bits; IPv4 uses the first four bytes, the rest stays zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub family: u32,
    pub prefix_len: u32,
    pub addr: [u8; 16],
}

/// One key's bucket and counters (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketState {
    /// GCRA theoretical arrival time, CLOCK_MONOTONIC nanoseconds (see `bucket`).
    pub tat_ns: u64,
    /// Packets of this key passed.
    pub passed: u64,
    /// Packets of this key dropped.
    pub dropped: u64,
    /// Reserved for the rule that applies (0: the default `[limits]`).
    pub rule_id: u32,
    /// Reserved for per-key flags.
    pub flags: u32,
}

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
    /// Packets the program does not limit (not IPv4, or cannot be parsed); always passed.
    NotLimited = 2,
    /// New keys that could not be inserted into the bucket map; passed (see the datapath).
    InsertFailed = 3,
    /// Packets that arrived before the agent wrote a configuration; passed.
    Unconfigured = 4,
}

/// Number of slots in [`COUNTERS_MAP`].
pub const COUNTER_SLOTS: u32 = 5;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data without implicit padding.
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::BucketState {}
    unsafe impl aya::Pod for super::DatapathConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<BucketKey>(), 4 + 4 + 16);
        assert_eq!(size_of::<BucketState>(), 8 * 3 + 4 + 4);
        assert_eq!(size_of::<DatapathConfig>(), 16 + 4 * 4);
    }
}
