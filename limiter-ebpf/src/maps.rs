//! The maps, pinned by name so that they outlive the agent and a restarted agent adopts them.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, LruHashMap, PerCpuArray},
};
use limiter_common::maps::{
    BucketKey, BucketState, DatapathConfig, RuleEntry, COUNTER_SLOTS, MAX_RULES,
};

/// One bucket per tracked key. `max_entries` is set by the agent from `[agent] max_keys`.
#[map]
pub static BUCKETS: LruHashMap<BucketKey, BucketState> = LruHashMap::pinned(1, 0);

/// The configuration the agent writes; index 0.
#[map]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Global counters by `Counter`, per CPU.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// The configured rules, by longest-prefix match on the source address.
#[map]
pub static RULES_V4: LpmTrie<[u8; 4], RuleEntry> = LpmTrie::pinned(MAX_RULES, 0);
#[map]
pub static RULES_V6: LpmTrie<[u8; 16], RuleEntry> = LpmTrie::pinned(MAX_RULES, 0);
