//! Names and layouts of the maps the XDP program and the agent share.
//!
//! Every type is `#[repr(C)]` with explicit padding fields, so its bytes are fully defined
//! (the kernel hashes keys byte by byte) and both sides agree on the layout.

use crate::bucket::Limit;
use crate::http::KeyHeaders;

/// LRU hash: [`BucketKey`] → [`BucketState`], one per tracked key. Sized by `[agent] max_keys`.
pub const BUCKETS_MAP: &str = "BUCKETS";
/// Array with one [`DatapathConfig`], written by the agent.
pub const CONFIG_MAP: &str = "CONFIG";
/// Per-CPU array of `u64` counters, indexed by [`counter_index`].
pub const COUNTERS_MAP: &str = "COUNTERS";
/// LPM tries of the configured rules: IPv4 address ([u8; 4]) / IPv6 address ([u8; 16]) →
/// [`RuleEntry`]. Written by the agent.
pub const RULES_V4_MAP: &str = "RULES_V4";
pub const RULES_V6_MAP: &str = "RULES_V6";
/// LPM tries of the runtime overrides (`limiter allow|deny|limit CIDR`), same layout as the
/// rule tries, looked up first: an override wins over every configured rule.
pub const OVERRIDES_V4_MAP: &str = "OVERRIDES_V4";
pub const OVERRIDES_V6_MAP: &str = "OVERRIDES_V6";
/// Rules per trie at most.
pub const MAX_RULES: u32 = 16_384;

/// `BPF_MAP_TYPE_RINGBUF`, whose capacity the kernel rounds (so it is not compared on adoption).
pub const RINGBUF_MAP_TYPE: u32 = 27;

/// Ring buffer of [`ExhaustionEvent`]s, one per key that becomes exhausted, read by the agent.
pub const EVENTS_MAP: &str = "EVENTS";
/// Capacity of [`EVENTS_MAP`] in bytes (a power of two of pages): about 5 400 events of 48 bytes
/// (with the ring's header) — more than a second of one CPU's bound ([`EVENTS_PER_SEC_PER_CPU`]),
/// ample for an agent that drains it within milliseconds of each wake-up. When it does fill,
/// the events that do not fit are counted as [`Counter::EventsLost`].
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Per-CPU array with one [`EventBudget`]: the bound on events each CPU emits.
pub const EVENT_BUDGET_MAP: &str = "EVENT_BUDGET";
/// Exhaustion events one CPU may emit per second, sustained; beyond it (and beyond
/// [`EVENT_BURST_PER_CPU`] at once) the datapath counts them as [`Counter::EventsSuppressed`]
/// instead, so that a flood of new keys cannot flood the agent.
pub const EVENTS_PER_SEC_PER_CPU: u64 = 4096;
/// Exhaustion events one CPU may emit back to back.
pub const EVENT_BURST_PER_CPU: u64 = 1024;

/// Array with one `u64`: the GCRA theoretical arrival time of the allowance for new keys
/// (`[agent] new_keys_per_sec`), one for all CPUs and interfaces.
pub const NEW_KEYS_MAP: &str = "NEW_KEYS";

/// Per-CPU array of [`DropTally`], [`DROP_TALLY_SLOTS`] per CPU: the drops of keys over their
/// limit, counted on the CPU that dropped them instead of in their bucket (see [`DropTally`]).
pub const DROP_TALLIES_MAP: &str = "DROP_TALLIES";
/// Slots of [`DROP_TALLIES_MAP`] per CPU (a power of two); a key's is [`drop_tally_slot`].
pub const DROP_TALLY_SLOTS: u32 = 64;
/// A slot whose key has dropped nothing over this many jiffies (64 ms at 1000 Hz, 640 ms at
/// 100 Hz), as another key that wanted it saw, goes to that key: the datapath adds what it held
/// to its old key's bucket then.
pub const DROP_TALLY_IDLE_JIFFIES: u64 = 64;

/// Name of the XDP program attached to interfaces.
pub const LIMITER_PROG: &str = "limiter";
/// Name of the TC egress program attached beside the XDP program: the gateway's side of
/// connections kept open after a 429 (`[http] keep_alive`).
pub const EGRESS_PROG: &str = "limiter_egress";
/// Name of the XDP program the agent runs through `BPF_PROG_TEST_RUN` to reset one key. Running
/// the reset in the kernel lets it touch only the bucket's TAT, with the packet counters that the
/// datapath increments at the same moment left intact — a write of the whole map value from
/// userspace would lose those increments.
pub const RESET_PROG: &str = "limiter_reset";
/// Name of the XDP program the agent runs through `BPF_PROG_TEST_RUN` to move one API key's
/// quota count ([`QuotaAdjust`]): in the kernel, with a compare-and-swap, so that requests the
/// datapath counts at the same moment stay counted (fleet leases).
pub const QUOTA_ADJUST_PROG: &str = "limiter_quota_adjust";
/// `QUOTA_ADJUST_PROG`'s answers: moved; the count is of a later window (left alone); the
/// compare-and-swap lost every attempt to the datapath (try again).
pub const ADJUST_DONE: u32 = 2; // XDP_PASS
pub const ADJUST_LATER_WINDOW: u32 = 1; // XDP_DROP
pub const ADJUST_BUSY: u32 = 3; // XDP_TX

/// Address family of a key: IPv4.
pub const FAMILY_IPV4: u8 = 4;
/// Address family of a key: IPv6.
pub const FAMILY_IPV6: u8 = 6;

/// Kind of a key: an API key (its token's keyed hash in the first 8 bytes of `addr`,
/// little-endian; prefix length and rule id 0).
pub const FAMILY_API_KEY: u8 = b'K';

/// Hash map of registered API keys: token hash (`u64`) → [`ApiKeyEntry`], written by the agent
/// (`limiter keys add`). A key not in it is limited by `[http]`'s default.
pub const API_KEYS_MAP: &str = "API_KEYS";
/// Registered API keys at most.
pub const MAX_API_KEYS: u32 = 65_536;
/// Array of rendered 429s ([`crate::http::Answer`]) by plan slot: 0 for `[http]`'s default,
/// then one per `[[plans]]` entry.
pub const ANSWERS_MAP: &str = "ANSWERS";
/// Plans at most (plan slots 1 ..= MAX_PLANS).
pub const MAX_PLANS: u32 = 63;
/// Where a plan's 429 for its quota is in [`ANSWERS_MAP`]: this plus its slot (the rate's 429
/// is at the slot itself).
pub const QUOTA_ANSWERS: u32 = MAX_PLANS + 1;
/// Entries of [`ANSWERS_MAP`]: a rate 429 and a quota 429 per plan slot.
pub const ANSWER_ENTRIES: u32 = 2 * (MAX_PLANS + 1);
/// Array of [`PlanQuota`] by plan slot (0: `[http]`'s), written by the agent.
pub const PLAN_QUOTAS_MAP: &str = "PLAN_QUOTAS";
/// LRU hash: an API key's token hash → its count in its quota window (`quota::Usage` as a word).
pub const QUOTAS_MAP: &str = "QUOTAS";
/// API keys whose quota use the datapath keeps at most (least recently used go first).
pub const MAX_QUOTA_KEYS: u32 = 262_144;
/// Hash: an API key's token hash → requests added to its quota for a window
/// (`quota::TopUp` as a word), written by the agent (`limiter quota KEY --add N`), which also
/// removes the entries of windows that ended. Not an LRU: a top-up is never evicted.
pub const QUOTA_TOPUPS_MAP: &str = "QUOTA_TOPUPS";
/// Keys with a top-up at most.
pub const MAX_QUOTA_TOPUPS: u32 = 65_536;
/// LRU hash of the connections whose last request the program decided: [`FlowKey`] →
/// [`FlowState`]. A retransmitted request gets the same verdict without being charged again,
/// and the client's next segment after a 429 becomes the reset that frees the gateway's socket.
pub const FLOWS_MAP: &str = "FLOWS";
/// Connections remembered at most.
pub const MAX_FLOWS: u32 = 65_536;

/// A registered API key: its plan's limit, and the plan's slot (its 429 in [`ANSWERS_MAP`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiKeyEntry {
    pub limit: Limit,
    pub plan: u32,
    pub _pad: u32,
}

/// A plan's quota: `quota` requests per window of `period` (`PERIOD_*`; [`PERIOD_NONE`]: no
/// quota).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlanQuota {
    pub quota: u32,
    pub period: u32,
}

/// `PlanQuota::period`.
pub const PERIOD_NONE: u32 = 0;
pub const PERIOD_MINUTE: u32 = 1;
pub const PERIOD_HOUR: u32 = 2;
pub const PERIOD_DAY: u32 = 3;
pub const PERIOD_MONTH: u32 = 4;

/// What the datapath needs to tell a quota's window from the clock it reads anyway
/// (CLOCK_MONOTONIC, `bpf_ktime_get_ns`), written by the agent: UTC is that clock plus
/// `utc_offset_ns` (CLOCK_REALTIME less CLOCK_MONOTONIC: it moves only when the wall clock is
/// stepped — NTP at boot, `date -s`, a leap second — and the agent keeps it current), and the
/// month windows' bounds, which the calendar decides: the current month's end (`month_tag`'s)
/// and the next one's, in UTC seconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaClock {
    pub utc_offset_ns: u64,
    pub month_end: u64,
    pub next_month_end: u64,
    pub month_tag: u32,
    pub _pad: u32,
}

/// A TCP connection to the gateway, as the client's segments carry it. `family` is
/// [`FAMILY_IPV4`] (addresses in the first four bytes) or [`FAMILY_IPV6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: [u8; 16],
    pub gateway: [u8; 16],
    pub client_port: u16,
    pub gateway_port: u16,
    pub family: u32,
}

/// `FlowState::verdict`: the request passed.
pub const FLOW_PASSED: u32 = 1;
/// `FlowState::verdict`: the request was answered with a 429; the gateway's socket still waits.
pub const FLOW_ANSWERED: u32 = 2;
/// `FlowState::verdict`: answered, and the gateway's socket was reset.
pub const FLOW_RESET: u32 = 3;

/// What the program decided for a connection's last request, and — with `[http] keep_alive`,
/// once a 429 was answered on it — how far the client's and the gateway's views of the
/// connection's sequence numbers have come apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// The request segment's sequence number and payload length (the client's view).
    pub seq: u32,
    pub len: u32,
    /// `FLOW_*`.
    pub verdict: u32,
    /// With `FLOW_ANSWERED`: the answer's slot in `ANSWERS` (the plan's, or `QUOTA_ANSWERS` + it)
    /// and the seconds it gave.
    pub plan: u32,
    pub retry_s: u64,
    /// Bytes the client sent that the gateway never got (the answered requests): the client's
    /// sequence numbers are this far ahead of the gateway's.
    pub client_shift: u32,
    /// Bytes the client got that the gateway never sent (the 429s): the client's view of the
    /// gateway's sequence numbers is this far ahead.
    pub gateway_shift: u32,
    /// The client's acknowledgement number that covers the last 429 whole (an ACK of it alone
    /// is not the gateway's business).
    pub answer_end: u32,
    pub _pad: u32,
}

impl FlowState {
    /// Whether the two views have come apart (segments must be rewritten both ways).
    pub fn shifted(&self) -> bool {
        self.client_shift != 0 || self.gateway_shift != 0
    }
}

/// `[http]` as the datapath applies it (part of [`DatapathConfig`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// The headers that carry the key; `count() == 0`: API keys are off.
    pub key_headers: KeyHeaders,
    /// The limit of a key that is not registered.
    pub default_limit: Limit,
    /// The secret of the token hash (SipHash-1-3 key).
    pub secret: [u64; 2],
    /// The TCP ports where requests reach the gateway; `port_count` of them.
    pub ports: [u16; MAX_HTTP_PORTS],
    pub port_count: u32,
    /// `HTTP_*` bits.
    pub flags: u32,
    /// The quota windows' clock.
    pub quota_clock: QuotaClock,
    /// Bit `p`: plan slot `p` (0: `[http]`'s) has a quota. A key of a plan without one skips
    /// the quota check (its call and lookup) altogether.
    pub quota_plans: u64,
}

/// `HttpConfig::flags`: a 429 keeps the client's connection open (`[http] keep_alive`); the
/// program then shifts the sequence numbers of that connection both ways (the egress program
/// the gateway's side) for as long as it lasts.
pub const HTTP_KEEP_ALIVE: u32 = 1;

/// `[http] ports` at most.
pub const MAX_HTTP_PORTS: usize = 8;

impl HttpConfig {
    pub const OFF: HttpConfig = HttpConfig {
        key_headers: KeyHeaders::NONE,
        default_limit: Limit {
            interval_ns: 1,
            tolerance_ns: 0,
        },
        secret: [0; 2],
        ports: [0; MAX_HTTP_PORTS],
        port_count: 0,
        flags: 0,
        quota_clock: QuotaClock {
            utc_offset_ns: 0,
            month_end: 0,
            next_month_end: 0,
            month_tag: 0,
            _pad: 0,
        },
        quota_plans: 0,
    };

    /// Whether requests to `port` are scanned for keys.
    #[inline(always)]
    pub fn is_http_port(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_HTTP_PORTS {
            if (i as u32) < self.port_count && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// The rule id of `[limits]`, for sources no rule matches.
pub const DEFAULT_RULE_ID: u32 = 0;

/// What a bucket is kept for: a source prefix under one rule. `addr` holds the address in network
/// byte order, masked to `prefix_len` bits; IPv4 uses the first four bytes, the rest stays zero.
/// The rule is part of the key so that sources of one prefix that match different rules never
/// share a bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: u16,
    pub rule_id: u32,
    pub addr: [u8; 16],
}

/// What the agent hands the reset program (`RESET_PROG`) as packet data: give `key` a full
/// bucket (`tat_at_most` = `FULL_BUCKET_TAT`), or bring its TAT down to at most `tat_at_most`
/// (after its limit was raised: a key never waits longer than its limit in force says).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRequest {
    pub key: BucketKey,
    pub tat_at_most: u64,
}

/// What the agent hands the quota-adjust program (`QUOTA_ADJUST_PROG`) as packet data: move
/// the count of the API key of token hash `hash` in window `tag` by `delta` requests.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaAdjust {
    pub hash: u64,
    pub delta: i64,
    pub tag: u32,
    pub _pad: u32,
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
    /// Per-key `BUCKET_*` bits, changed with atomic and/or only. 64 bits wide: 64-bit atomics
    /// lower for every BPF CPU, 32-bit ones only with alu32 (`-C target-cpu=v3`).
    pub flags: u64,
}

/// One CPU's count of one key's drops, in the slot [`drop_tally_slot`] of the key (56 bytes).
///
/// A key flooded through several receive queues is charged by every CPU at once; were each drop
/// counted in its bucket, every CPU would write the bucket's cache line on every packet and take
/// it from the others (a packet then costs twice as much, measured). So a key over its limit
/// counts its drops in a slot of this CPU's own: its bucket is only read, and its line stays in
/// every CPU's cache. A slot belongs to a key while the key drops: a key whose slot another key
/// holds counts in its bucket as before, and a slot found idle for [`DROP_TALLY_IDLE_JIFFIES`]
/// (or empty) goes to the next key that needs it, its counts added to its old key's bucket. What
/// a key dropped is its bucket's count plus what the CPUs' slots hold for it ([`add_tallied`]).
/// The key counting here pays a compare and an increment: idleness is for the other keys to
/// find out (`probe_*`), on their own path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropTally {
    pub key: BucketKey,
    /// Drops (`BucketState::dropped`) and would-drops in dry run not yet in the bucket.
    pub dropped: u64,
    pub would_drop: u64,
    /// What another key wanting the slot saw last: the count held then, and when
    /// (`bpf_jiffies64`). A count that has not moved since a look at least
    /// [`DROP_TALLY_IDLE_JIFFIES`] ago means an idle slot.
    pub probe_count: u64,
    pub probe_jiffies: u64,
}

impl DropTally {
    /// Holds nothing: free for any key.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.dropped | self.would_drop == 0
    }

    /// What it holds: drops and would-drops.
    #[inline(always)]
    pub fn held(&self) -> u64 {
        self.dropped.wrapping_add(self.would_drop)
    }

    /// Another key wants the slot at `jiffies`: whether it may have it — empty, or its count
    /// unmoved since a look at least [`DROP_TALLY_IDLE_JIFFIES`] ago. Otherwise the look is
    /// remembered (when the count moved, from now).
    #[inline(always)]
    pub fn may_take(&mut self, jiffies: u64) -> bool {
        if self.is_empty() {
            return true;
        }
        let held = self.held();
        if held != self.probe_count {
            self.probe_count = held;
            self.probe_jiffies = jiffies;
            return false;
        }
        jiffies.wrapping_sub(self.probe_jiffies) >= DROP_TALLY_IDLE_JIFFIES
    }
}

/// The slot of [`DROP_TALLIES_MAP`] (on every CPU) where `key`'s drops may be counted.
#[inline(always)]
pub fn drop_tally_slot(key: &BucketKey) -> u32 {
    let word = |i: usize| {
        u32::from_ne_bytes([
            key.addr[i],
            key.addr[i + 1],
            key.addr[i + 2],
            key.addr[i + 3],
        ])
    };
    // The first 64 bits of the address (all of IPv4, a /64's prefix) and the rule: a light
    // mix, on every drop. Keys alike in these share a slot; the first to take it counts there.
    let mixed = (word(0) ^ word(4).rotate_left(16) ^ key.rule_id).wrapping_mul(0x9e37_79b1);
    mixed >> (32 - DROP_TALLY_SLOTS.trailing_zeros())
}

/// Adds to `state` (read from the bucket map) what the CPUs' slots hold for `key`: `tallies`
/// are the per-CPU values of its slot, [`drop_tally_slot`].
pub fn add_tallied(state: &mut BucketState, key: &BucketKey, tallies: &[DropTally]) {
    for tally in tallies.iter().filter(|t| t.key == *key) {
        state.dropped += tally.dropped;
        state.would_drop += tally.would_drop;
    }
}

/// `BucketState::flags`: an [`ExhaustionEvent`] was emitted (or suppressed) for this key's
/// current exhaustion. Set by the packet that finds the key exhausted with the bit clear, so one
/// event per transition; cleared by a packet that passes and leaves the key not exhausted, and by
/// a reset.
pub const BUCKET_EXHAUSTED_NOTIFIED: u64 = 1;

/// `ExhaustionEvent::flags`: dry run (the key's packets are counted as would-drop, not dropped).
pub const EVENT_DRY_RUN: u32 = 1;

/// A key became exhausted: what the datapath writes to [`EVENTS_MAP`] (40 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExhaustionEvent {
    /// The key (source prefix and rule id).
    pub key: BucketKey,
    /// When its packet was refused: CLOCK_MONOTONIC nanoseconds (`bpf_ktime_get_ns`).
    pub at_ns: u64,
    /// The counter slot of the interface the packet arrived on (see [`counter_index`]).
    pub iface_slot: u32,
    /// `EVENT_*` bits.
    pub flags: u32,
}

/// One CPU's bound on exhaustion events, index 0 of [`EVENT_BUDGET_MAP`] (per CPU, so plain
/// writes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    /// GCRA theoretical arrival time of the budget ([`EVENTS_PER_SEC_PER_CPU`],
    /// [`EVENT_BURST_PER_CPU`]).
    pub tat_ns: u64,
    /// Events this CPU lost to a full ring buffer since it last emitted one (the datapath logs
    /// the first loss and the recovery, not each loss).
    pub lost: u64,
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
/// `DatapathConfig::flags`: the IPv4 / IPv6 override tries are not empty.
pub const CONFIG_HAS_OVERRIDES_V4: u32 = 8;
pub const CONFIG_HAS_OVERRIDES_V6: u32 = 16;
/// `DatapathConfig::flags`: keys are created at most at `new_key_limit`; the first packet of a
/// key beyond it is refused ([`Counter::NewKeysRefused`]) and no key is created for it.
pub const CONFIG_LIMIT_NEW_KEYS: u32 = 32;
/// `DatapathConfig::flags`: `[http]` is set: requests on its ports are charged to their API key.
pub const CONFIG_HTTP: u32 = 64;

/// What the agent tells the datapath; index 0 of [`CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// The `[limits]` every source without a rule gets.
    pub default_limit: Limit,
    /// How fast keys may be created, for all sources together, with `CONFIG_LIMIT_NEW_KEYS`.
    pub new_key_limit: Limit,
    /// Sources are grouped into keys by these prefix lengths.
    pub ipv4_prefix: u32,
    pub ipv6_prefix: u32,
    /// `CONFIG_*` bits.
    pub flags: u32,
    /// Zero until the agent has written a configuration (the datapath passes everything
    /// before); then [`LAYOUT_VERSION`], so that pins left by a build with other map layouts
    /// are recognised as such.
    pub valid: u32,
    /// With `CONFIG_HTTP`.
    pub http: HttpConfig,
}

/// The layout of the pinned maps, written into `DatapathConfig::valid`: a build whose maps'
/// keys, values or meaning differ from this one's bumps it, and an agent refuses to adopt pins
/// of another layout, naming it.
pub const LAYOUT_VERSION: u32 = 4;

/// Declares [`Counter`] from one table: each counter's slot, its name (a field of `status --json`,
/// and of the metrics where it is exported), a label and a note for a person (`limiter status`).
/// Everything that lists counters iterates [`Counter::ALL`], so adding one is one line here (and
/// the agent's metrics, which match on every counter, say where it is exported).
macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $variant:ident = $slot:literal, $name:literal, $label:literal, $note:literal; )*) => {
        /// Global counters, one slot each in [`COUNTERS_MAP`] (per CPU; the agent sums them).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Counter {
            $( $(#[doc = $doc])* $variant = $slot, )*
        }

        impl Counter {
            /// Every counter, in slot order.
            pub const ALL: [Counter; [$($slot),*].len()] = [$(Counter::$variant),*];

            /// Its name in `status --json` (snake case).
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }

            /// How `limiter status` names it.
            pub const fn label(self) -> &'static str {
                match self { $(Counter::$variant => $label,)* }
            }

            /// What `limiter status` says after the number (may be empty).
            pub const fn note(self) -> &'static str {
                match self { $(Counter::$variant => $note,)* }
            }
        }
    };
}

counters! {
    /// Packets of a limited key that passed.
    Passed = 0, "passed", "passed", "";
    /// Packets of a limited key that were dropped.
    Dropped = 1, "dropped", "dropped", "";
    /// Packets over the limit that dry run let through.
    WouldDrop = 2, "would_drop", "would drop", "let through by dry run";
    /// Packets passed by an `allow` rule.
    AllowedByRule = 3, "allowed_by_rule", "allowed by rule", "";
    /// Packets matched by a `deny` rule (dropped, or passed in dry run).
    DeniedByRule = 4, "denied_by_rule", "denied by rule", "";
    /// Packets the program never limits: non-IP (ARP …), IPv6 neighbour/router discovery.
    NotLimited = 5, "not_limited", "not limited", "ARP, IPv6 neighbour discovery …; always passed";
    /// Packets that could not be parsed (truncated, unknown, beyond the header bound); passed.
    Unparsed = 6, "unparsed", "unparsed", "truncated or malformed; passed";
    /// New keys that could not be inserted into the bucket map; passed (see the datapath).
    InsertFailed = 7, "insert_failed", "insert failures", "new keys not tracked: map full; passed";
    /// Keys created. Less the keys tracked now, it is how many the LRU map evicted.
    KeysCreated = 8, "keys_created", "keys created", "";
    /// Packets that arrived before the agent wrote a configuration; passed.
    Unconfigured = 9, "unconfigured", "unconfigured", "before the agent configured the program; passed";
    /// Packets dropped because their bucket's compare-and-swap lost to other CPUs every time.
    ContentionDrops = 10, "contention_drops", "contention", "dropped after losing every retry to other CPUs";
    /// Exhaustion events not emitted: over the per-CPU bound ([`EVENTS_PER_SEC_PER_CPU`]).
    EventsSuppressed = 11, "events_suppressed", "events skipped", "exhaustion events over the per-CPU bound";
    /// Exhaustion events lost: the ring buffer was full (the agent is not reading it fast enough).
    EventsLost = 12, "events_lost", "events lost", "exhaustion events lost to a full ring buffer";
    /// First packets of new keys refused, over `[agent] new_keys_per_sec`: dropped (or passed in
    /// dry run, and counted as would-drop), and no key created for them.
    NewKeysRefused = 13, "new_keys_refused", "new keys refused", "first packets over new_keys_per_sec; no key created";
    /// HTTP requests on `[http] ports` charged to their API key.
    KeyedRequests = 14, "keyed_requests", "API-key requests", "requests charged to their API key";
    /// HTTP requests on `[http] ports` without a key header (limited by their source only).
    KeylessRequests = 15, "keyless_requests", "keyless requests", "requests without a key header; source limits only";
    /// Requests answered with a 429 by the kernel (their key over its limit).
    Rejected = 16, "rejected", "rejected (429)", "requests answered with 429 Too Many Requests";
    /// Segments on `[http] ports` that start no HTTP/1.x request: bodies, h2c, binary data.
    NotHttp = 17, "not_http", "not HTTP/1.x", "segments on HTTP ports starting no request; passed";
    /// TLS handshakes on `[http] ports` (configured for cleartext): passed untouched.
    TlsHandshakes = 18, "tls_handshakes", "TLS on HTTP ports", "TLS handshakes on ports configured for cleartext; passed";
    /// A 429 could not be built in the request's frame: the request was dropped instead.
    AnswersFailed = 19, "answers_failed", "429s not built", "requests over the limit dropped without an answer";
    /// Gateway sockets of answered requests released by a reset.
    GatewayResets = 20, "gateway_resets", "gateway resets", "gateway sockets of 429-answered connections released";
    /// Retransmitted requests: given the verdict the first copy got, not charged again.
    Retransmits = 21, "retransmits", "retransmitted requests", "given the first copy's verdict, not charged again";
    /// Of the packets dropped (or would-drop), those proven over the limit on the coarse clock
    /// (the jiffies counter), without reading the precise one (see `bucket::over_limit_until`).
    CoarseDrops = 22, "coarse_drops", "of which on the coarse clock", "proven over the limit without the precise clock";
    /// Times the coarse clock (the jiffies counter) was found lagging the precise one by more
    /// than the datapath assumes (a tick and a quarter): its fast path is then off for a second.
    CoarseClockLate = 23, "coarse_clock_late", "coarse clock late", "coarse clock behind by more than assumed: fast path paused";
    /// Requests refused because their API key's quota for the window is used up (answered with
    /// a 429, among `rejected`).
    OverQuota = 24, "over_quota", "over quota", "requests refused for their key's quota (429)";
}

/// Counters per interface.
pub const COUNTER_SLOTS: u32 = Counter::ALL.len() as u32;

// Each counter's slot is its place in `Counter::ALL`: slots are dense and none is used twice.
const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

impl Counter {
    /// The counter with this `status --json` name.
    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Interfaces one agent attaches to at most; each has its own set of counters.
pub const MAX_INTERFACES: u32 = 16;

/// Entries of [`COUNTERS_MAP`]: a set of [`COUNTER_SLOTS`] counters per interface.
pub const COUNTER_ENTRIES: u32 = COUNTER_SLOTS * MAX_INTERFACES;

/// Name of the program's read-only global holding the interface's counter set, set by the agent
/// when it loads the program for an interface (so the lookup costs nothing per packet).
pub const IFACE_SLOT_GLOBAL: &str = "IFACE_SLOT";

/// Name of the program's read-only global holding the kernel's timer tick, ns (`sys::tick_ns`):
/// one step of the jiffies counter, the coarse clock of the datapath's fast path. Set by the
/// agent at load time; 0 turns the fast path off.
pub const TICK_GLOBAL: &str = "TICK_NS";

/// The index in [`COUNTERS_MAP`] of `counter` for the interface in `slot`.
pub const fn counter_index(slot: u32, counter: Counter) -> u32 {
    slot * COUNTER_SLOTS + counter as u32
}

#[cfg(feature = "user")]
impl QuotaAdjust {
    /// The request's bytes as the kernel sees them (packet data of the quota-adjust program).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: QuotaAdjust is #[repr(C)] without implicit padding (u64, i64, u32, u32), so
        // every byte is initialised.
        unsafe {
            core::slice::from_raw_parts(
                (self as *const QuotaAdjust).cast::<u8>(),
                core::mem::size_of::<QuotaAdjust>(),
            )
        }
    }
}

#[cfg(feature = "user")]
impl ResetRequest {
    /// The request's bytes as the kernel sees them (the reset program reads them as packet
    /// data).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: ResetRequest is #[repr(C)] without implicit padding (a 24-byte key, then a
        // u64), so every byte is initialised.
        unsafe {
            core::slice::from_raw_parts(
                (self as *const ResetRequest).cast::<u8>(),
                core::mem::size_of::<ResetRequest>(),
            )
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (each): #[repr(C)] plain data without implicit padding (sizes checked in the
    // tests below), valid for every bit pattern.
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BucketKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BucketState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DropTally {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PlanQuota {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatapathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RuleEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ExhaustionEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EventBudget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ApiKeyEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::http::Answer {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<BucketKey>(), 1 + 1 + 2 + 4 + 16);
        assert_eq!(size_of::<BucketState>(), 8 * 5);
        assert_eq!(size_of::<ResetRequest>(), size_of::<BucketKey>() + 8);
        assert_eq!(size_of::<RuleEntry>(), 4 * 4 + 16);
        assert_eq!(
            size_of::<DatapathConfig>(),
            16 + 16 + 4 * 4 + size_of::<HttpConfig>()
        );
        assert_eq!(
            size_of::<HttpConfig>(),
            size_of::<KeyHeaders>()
                + 16
                + 16
                + 2 * MAX_HTTP_PORTS
                + 8
                + size_of::<QuotaClock>()
                + 8
        );
        assert_eq!(size_of::<QuotaClock>(), 4 * 8);
        assert_eq!(size_of::<PlanQuota>(), 8);
        assert_eq!(size_of::<KeyHeaders>(), 3 * 8 * 5 * 2 + 4 * 4);
        assert_eq!(size_of::<ApiKeyEntry>(), 16 + 8);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 4 + 4);
        assert_eq!(size_of::<FlowState>(), 4 * 4 + 8 + 4 * 4);
        assert_eq!(
            size_of::<crate::http::Answer>(),
            8 + 8 + 8 + crate::http::ANSWER_BYTES
        );
        assert_eq!(
            size_of::<ExhaustionEvent>(),
            size_of::<BucketKey>() + 8 + 4 + 4
        );
        assert_eq!(size_of::<EventBudget>(), 8 + 8);
        assert_eq!(size_of::<DropTally>(), size_of::<BucketKey>() + 4 * 8);
    }

    fn key(addr: [u8; 4], rule_id: u32) -> BucketKey {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&addr);
        BucketKey {
            family: FAMILY_IPV4,
            prefix_len: 32,
            _pad: 0,
            rule_id,
            addr: bytes,
        }
    }

    #[test]
    fn drop_tally_slots_are_in_range_and_spread_neighbours() {
        let mut used = std::collections::HashSet::new();
        for host in 0..=255u8 {
            let slot = drop_tally_slot(&key([198, 18, 0, host], 0));
            assert!(slot < DROP_TALLY_SLOTS);
            used.insert(slot);
        }
        // 256 neighbouring sources over 64 slots: nearly every slot used.
        assert!(used.len() >= 48, "{} slots used", used.len());
        assert_ne!(
            drop_tally_slot(&key([198, 18, 0, 1], 0)),
            drop_tally_slot(&key([198, 18, 0, 1], 1)),
            "another rule, another slot (for these two)"
        );
    }

    #[test]
    fn a_slot_goes_to_another_key_once_seen_idle_long_enough() {
        let mut tally = DropTally::default();
        assert!(tally.may_take(5), "empty");
        tally.dropped = 3;
        assert!(!tally.may_take(100), "first look");
        tally.dropped = 4;
        assert!(
            !tally.may_take(100 + DROP_TALLY_IDLE_JIFFIES),
            "it moved since"
        );
        assert!(
            !tally.may_take(100 + 2 * DROP_TALLY_IDLE_JIFFIES - 1),
            "not long enough"
        );
        assert!(
            tally.may_take(100 + 2 * DROP_TALLY_IDLE_JIFFIES),
            "unmoved since the look"
        );
    }

    #[test]
    fn what_a_key_dropped_is_its_bucket_plus_its_own_tallies() {
        let mine = key([198, 18, 0, 1], 0);
        let other = key([198, 18, 0, 2], 0);
        let tally = |key, dropped, would_drop| DropTally {
            key,
            dropped,
            would_drop,
            ..DropTally::default()
        };
        let mut state = BucketState {
            dropped: 10,
            would_drop: 1,
            ..BucketState::default()
        };
        add_tallied(
            &mut state,
            &mine,
            &[tally(mine, 5, 0), tally(other, 100, 100), tally(mine, 7, 2)],
        );
        assert_eq!((state.dropped, state.would_drop), (22, 3));
    }

    #[test]
    fn an_event_fits_a_cache_line_and_the_ring_is_pages() {
        assert!(size_of::<ExhaustionEvent>() <= 64);
        assert!(size_of::<ExhaustionEvent>().is_multiple_of(8));
        assert!(EVENTS_BYTES.is_power_of_two() && EVENTS_BYTES.is_multiple_of(4096));
    }

    #[test]
    fn per_key_state_fits_a_cache_line() {
        // Key and value of one tracked key, as the goal states it (≤ 64 bytes).
        assert!(size_of::<BucketState>() <= 64);
    }

    #[test]
    fn counter_names_are_distinct_and_found_again() {
        for counter in Counter::ALL {
            assert_eq!(Counter::from_name(counter.name()), Some(counter));
            assert!(!counter.label().is_empty());
        }
        assert_eq!(COUNTER_SLOTS as usize, Counter::ALL.len());
    }
}
