//! The maps, pinned by name so that they outlive the agent and a restarted agent adopts them.

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use limiter_common::{
    http::Answer,
    maps::{
        ApiKeyEntry, BucketKey, BucketState, DatapathConfig, DropTally, EventBudget, FlowKey,
        FlowState, PlanQuota, RuleEntry, ANSWER_ENTRIES, COUNTER_ENTRIES, DROP_TALLY_SLOTS,
        EVENTS_BYTES, MAX_API_KEYS, MAX_FLOWS, MAX_PLANS, MAX_QUOTA_KEYS, MAX_QUOTA_TOPUPS,
        MAX_RULES,
    },
};

use crate::http::Scratch;

/// One bucket per tracked key. `max_entries` is set by the agent from `[agent] max_keys`.
#[map]
pub static BUCKETS: LruHashMap<BucketKey, BucketState> = LruHashMap::pinned(1, 0);

/// Each CPU's counts of the drops of keys over their limit (`DropTally`): a key flooded from
/// several CPUs is then only read by them, not written on every packet.
#[map]
pub static DROP_TALLIES: PerCpuArray<DropTally> = PerCpuArray::pinned(DROP_TALLY_SLOTS, 0);

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

/// Registered API keys by token hash (`limiter keys add`), written by the agent.
#[map]
pub static API_KEYS: HashMap<u64, ApiKeyEntry> = HashMap::pinned(MAX_API_KEYS, 0);

/// Each plan's rendered 429s by plan slot (0: `[http]`'s), for its rate, then for its quota
/// (at `QUOTA_ANSWERS` + slot), written by the agent.
#[map]
pub static ANSWERS: Array<Answer> = Array::pinned(ANSWER_ENTRIES, 0);

/// Each plan's quota by plan slot (0: `[http]`'s), written by the agent.
#[map]
pub static PLAN_QUOTAS: Array<PlanQuota> = Array::pinned(MAX_PLANS + 1, 0);

/// Each API key's count in its quota window (`quota`), by token hash.
#[map]
pub static QUOTAS: LruHashMap<u64, u64> = LruHashMap::pinned(MAX_QUOTA_KEYS, 0);

/// Requests added to API keys' quotas for a window (`quota::TopUp`), by token hash.
#[map]
pub static QUOTA_TOPUPS: HashMap<u64, u64> = HashMap::pinned(MAX_QUOTA_TOPUPS, 0);

/// The last decided request of each connection (see `http`).
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::pinned(MAX_FLOWS, 0);

/// Working memory of the request path, per CPU (not pinned: nothing in it outlives a packet).
#[map]
pub static HTTP_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);
