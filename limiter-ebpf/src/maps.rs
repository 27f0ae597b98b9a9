//! The maps, pinned by name so that they outlive the agent and a restarted agent adopts them.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, LruHashMap, PerCpuArray, RingBuf},
};
use limiter_common::maps::{
    BucketKey, BucketState, DatapathConfig, EventBudget, RuleEntry, COUNTER_ENTRIES, EVENTS_BYTES,
    MAX_RULES,
};

/// One bucket per tracked key. `max_entries` is set by the agent from `[agent] max_keys`.
#[map]
pub static BUCKETS: LruHashMap<BucketKey, BucketState> = LruHashMap::pinned(1, 0);

/// The configuration the agent writes; index 0.
#[map]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Counters by interface and `Counter`, per CPU.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_ENTRIES, 0);

/// The configured rules, by longest-prefix match on the source address.
#[map]
pub static RULES_V4: LpmTrie<[u8; 4], RuleEntry> = LpmTrie::pinned(MAX_RULES, 0);
#[map]
pub static RULES_V6: LpmTrie<[u8; 16], RuleEntry> = LpmTrie::pinned(MAX_RULES, 0);

/// The runtime overrides, looked up before the rules.
#[map]
pub static OVERRIDES_V4: LpmTrie<[u8; 4], RuleEntry> = LpmTrie::pinned(MAX_RULES, 0);
#[map]
pub static OVERRIDES_V6: LpmTrie<[u8; 16], RuleEntry> = LpmTrie::pinned(MAX_RULES, 0);

/// Exhaustion events for the agent (`ExhaustionEvent`), one per key that becomes exhausted.
#[map]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// The allowance for new keys (`[agent] new_keys_per_sec`): its GCRA TAT at index 0, one for
/// every CPU and interface (pinned like the buckets). Written only when a key is created, so the
/// flood of refused new keys it exists for only reads it.
#[map]
pub static NEW_KEYS: Array<u64> = Array::pinned(1, 0);

/// Each CPU's bound on the events it emits (index 0). Pinned, so one budget per CPU whatever
/// the number of interfaces.
#[map]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);
