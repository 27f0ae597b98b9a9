//! Which bucket a packet is charged to — defined once, for the XDP program and the agent.
//!
//! The program calls it for every packet, with its rule tries as the lookups; the agent calls
//! it with its lists of resolved rules to find the bucket a source is charged to (`inspect`)
//! and which rule is in force for it. The order: a runtime override if one matches (the
//! longest), else a configured rule (the longest), else `[limits]`; then an allow rule passes
//! and a deny rule drops without a bucket, and everything else is charged to the bucket of its
//! key: the source masked to the configured prefix (or to the rule's CIDR when the rule is
//! `shared`), under the rule's id.
//!
//! A source key is one kind of key; an API key is the other: an HTTP request on `[http] ports`
//! that passed its source's limit is charged once more, to the bucket of its token's keyed hash,
//! under its registered plan's limit or `[http]`'s ([`api_key_charge`]).

use crate::bucket::Limit;
use crate::maps::{
    ApiKeyEntry, BucketKey, DatapathConfig, RuleEntry, ACTION_ALLOW, ACTION_DENY,
    CONFIG_HAS_OVERRIDES_V4, CONFIG_HAS_OVERRIDES_V6, CONFIG_HAS_RULES_V4, CONFIG_HAS_RULES_V6,
    DEFAULT_RULE_ID, FAMILY_API_KEY, FAMILY_IPV4, FAMILY_IPV6, RULE_SHARED,
};

/// A packet's source address, as 32-bit words in network byte order (each word holds the
/// address's bytes as they are in the packet): masked and copied a word at a time, which the
/// BPF target does in a few instructions where a byte at a time takes dozens. An IPv4 source
/// is the first word, the others zero.
///
/// A struct, not an enum of the two families: an enum leaves the words an IPv4 source does not
/// use undefined, and LLVM may then spill an undefined register, which the verifier refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    words: [u32; 4],
    family: u32,
}

impl Source {
    #[inline(always)]
    pub const fn v4(word: u32) -> Source {
        Source {
            words: [word, 0, 0, 0],
            family: FAMILY_IPV4 as u32,
        }
    }

    #[inline(always)]
    pub const fn v6(words: [u32; 4]) -> Source {
        Source {
            words,
            family: FAMILY_IPV6 as u32,
        }
    }

    #[inline(always)]
    pub fn is_ipv4(&self) -> bool {
        self.family == FAMILY_IPV4 as u32
    }

    /// The address words (IPv4: the first one, then zeros).
    #[inline(always)]
    pub fn words(&self) -> [u32; 4] {
        self.words
    }

    /// Link-local: 169.254.0.0/16 or fe80::/10. Such sources are keyed by their full address
    /// whatever the configured prefix: the neighbours on a link share one /64 (and a /24 of
    /// 169.254 is no one's network), so a flooder among them must not starve the others'
    /// routing protocols and DHCPv6 in a shared bucket.
    #[inline(always)]
    pub fn is_link_local(&self) -> bool {
        let [a, b, ..] = self.words[0].to_ne_bytes();
        if self.is_ipv4() {
            a == 169 && b == 254
        } else {
            a == 0xfe && b & 0xc0 == 0x80
        }
    }
}

/// What a packet gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Passed without a bucket: an allow rule.
    Allow,
    /// Dropped (or counted as would-drop in dry run) without a bucket: a deny rule.
    Deny,
    /// Charged to the bucket of `key`, under `limit`.
    Bucket { key: BucketKey, limit: Limit },
}

/// The rule in force for a source: the override if `overrides` finds one, else what `rules`
/// finds, else none (`[limits]`). Each lookup runs only when the configuration says its table
/// is not empty for the source's family, as the datapath's tries are only looked up then.
#[inline(always)]
pub fn find_rule<R>(
    ipv4: bool,
    config: &DatapathConfig,
    overrides: impl FnOnce() -> Option<R>,
    rules: impl FnOnce() -> Option<R>,
) -> Option<R> {
    let (has_overrides, has_rules) = if ipv4 {
        (CONFIG_HAS_OVERRIDES_V4, CONFIG_HAS_RULES_V4)
    } else {
        (CONFIG_HAS_OVERRIDES_V6, CONFIG_HAS_RULES_V6)
    };
    if config.flags & has_overrides != 0 {
        if let Some(rule) = overrides() {
            return Some(rule);
        }
    }
    if config.flags & has_rules != 0 {
        return rules();
    }
    None
}

/// What a packet from `source` gets under `rule` (the one [`find_rule`] found).
#[inline(always)]
pub fn charge(source: &Source, config: &DatapathConfig, rule: Option<&RuleEntry>) -> Charge {
    match rule_action(rule) {
        RuleAction::Allow => Charge::Allow,
        RuleAction::Deny => Charge::Deny,
        RuleAction::Limit => {
            let (key, limit) = bucket_of(source, config, rule);
            Charge::Bucket { key, limit }
        }
    }
}

/// What a rule does with a packet, before any bucket (see [`charge`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Deny,
    /// Charged to a bucket: [`bucket_of`].
    Limit,
}

/// [`charge`] in two steps, as the datapath takes it: the rule's action, then — for
/// [`RuleAction::Limit`] — the bucket. (An enum carrying the bucket only in one variant leaves
/// the others' payload undefined; LLVM may then spill an undefined register, which the
/// verifier refuses.)
#[inline(always)]
pub fn rule_action(rule: Option<&RuleEntry>) -> RuleAction {
    match rule {
        Some(rule) if rule.action == ACTION_ALLOW => RuleAction::Allow,
        Some(rule) if rule.action == ACTION_DENY => RuleAction::Deny,
        _ => RuleAction::Limit,
    }
}

/// The bucket a packet from `source` is charged to under `rule` (one that limits, or none).
#[inline(always)]
pub fn bucket_of(
    source: &Source,
    config: &DatapathConfig,
    rule: Option<&RuleEntry>,
) -> (BucketKey, Limit) {
    match rule {
        None => (
            source_key(source, config, DEFAULT_RULE_ID, None),
            config.default_limit,
        ),
        Some(rule) => {
            let shared = (rule.flags & RULE_SHARED != 0).then_some(rule.prefix_len);
            (source_key(source, config, rule.id, shared), rule.limit)
        }
    }
}

/// The key a packet from `source` is counted under: the source masked to the configured
/// prefix (the full address for a link-local one), or to the rule's CIDR (`shared`), under
/// `rule_id`.
#[inline(always)]
pub fn source_key(
    source: &Source,
    config: &DatapathConfig,
    rule_id: u32,
    shared: Option<u32>,
) -> BucketKey {
    let (width, prefix) = if source.is_ipv4() {
        (32, config.ipv4_prefix)
    } else {
        (128, config.ipv6_prefix)
    };
    let prefix = match shared {
        Some(len) => len,
        None if source.is_link_local() => width,
        None => prefix,
    };
    bucket_key(source, prefix, rule_id)
}

/// The key of `source` cut to `prefix` bits (at most the family's width), under `rule_id`.
#[inline(always)]
pub fn bucket_key(source: &Source, prefix: u32, rule_id: u32) -> BucketKey {
    let (family, width) = if source.is_ipv4() {
        (FAMILY_IPV4, 32)
    } else {
        (FAMILY_IPV6, 128)
    };
    let mut addr = source.words();
    let prefix = if prefix > width { width } else { prefix };
    // Clear the bits past `prefix`, a word at a time.
    for (i, word) in addr.iter_mut().enumerate() {
        *word &= prefix_mask(prefix, i as u32 * 32);
    }
    BucketKey {
        family,
        prefix_len: prefix as u8,
        _pad: 0,
        rule_id,
        addr: words_to_bytes(addr),
    }
}

/// The bucket key of the API key whose token hashes to `hash`.
#[inline(always)]
pub fn api_key(hash: u64) -> BucketKey {
    let mut addr = [0u8; 16];
    let bytes = hash.to_le_bytes();
    let mut i = 0;
    while i < 8 {
        addr[i] = bytes[i];
        i += 1;
    }
    BucketKey {
        family: FAMILY_API_KEY,
        prefix_len: 0,
        _pad: 0,
        rule_id: 0,
        addr,
    }
}

/// The token hash of an API key's bucket key (`None` for a source key).
pub fn api_key_hash(key: &BucketKey) -> Option<u64> {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&key.addr[..8]);
    (key.family == FAMILY_API_KEY).then_some(u64::from_le_bytes(bytes))
}

/// What a request with the API key whose token hashes to `hash` is charged to: the key's
/// bucket, under its registered plan's limit (`registered`, looked up by the hash) or else
/// `[http]`'s; and the slot of the plan whose 429 answers it (0: `[http]`'s).
#[inline(always)]
pub fn api_key_charge(
    hash: u64,
    config: &DatapathConfig,
    registered: Option<&ApiKeyEntry>,
) -> (BucketKey, Limit, u32) {
    match registered {
        Some(entry) => (api_key(hash), entry.limit, entry.plan),
        None => (api_key(hash), config.http.default_limit, 0),
    }
}

/// The mask, in network byte order, of the bits of `prefix` that fall in the 32-bit word starting
/// at bit `start` of an address.
#[inline(always)]
fn prefix_mask(prefix: u32, start: u32) -> u32 {
    if prefix <= start {
        0
    } else if prefix - start >= 32 {
        u32::MAX
    } else {
        (u32::MAX << (32 - (prefix - start))).to_be()
    }
}

/// Address words (network byte order) as the bytes they hold.
#[inline(always)]
pub fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, and every bit pattern is a valid [u8; 16].
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) }
}

/// Address bytes as words in network byte order (the inverse of [`words_to_bytes`]).
#[inline(always)]
pub fn bytes_to_words(bytes: [u8; 16]) -> [u32; 4] {
    // SAFETY: same size, and every bit pattern is a valid [u32; 4].
    unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(bytes) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{ACTION_LIMIT, CONFIG_HAS_RULES_V4};
    use proptest::prelude::*;

    fn v4(a: [u8; 4]) -> Source {
        Source::v4(u32::from_ne_bytes(a))
    }

    fn v6(a: [u8; 16]) -> Source {
        Source::v6(bytes_to_words(a))
    }

    fn config(ipv4_prefix: u32, ipv6_prefix: u32, flags: u32) -> DatapathConfig {
        DatapathConfig {
            default_limit: Limit::new(10, 20),
            new_key_limit: Limit::new(1, 1),
            ipv4_prefix,
            ipv6_prefix,
            flags,
            http: crate::maps::HttpConfig::OFF,
            valid: 1,
        }
    }

    #[test]
    fn an_api_key_is_its_own_kind_of_key() {
        let config = config(32, 64, 0);
        let (key, limit, plan) = api_key_charge(0x0102_0304_0506_0708, &config, None);
        assert_eq!(key.family, FAMILY_API_KEY);
        assert_eq!(api_key_hash(&key), Some(0x0102_0304_0506_0708));
        assert_eq!((limit, plan), (config.http.default_limit, 0));
        let entry = ApiKeyEntry {
            limit: Limit::new(100, 200),
            plan: 3,
            _pad: 0,
        };
        assert_eq!(
            api_key_charge(7, &config, Some(&entry)),
            (api_key(7), entry.limit, 3)
        );
        let source = source_key(&v4([198, 18, 0, 1]), &config, 0, None);
        assert_eq!(api_key_hash(&source), None);
    }

    /// The model: the address as a 128-bit number, its first `len` bits kept.
    fn masked(bytes: &[u8], len: u32) -> Vec<u8> {
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let start = i as u32 * 8;
                if len >= start + 8 {
                    *b
                } else if len <= start {
                    0
                } else {
                    b & (0xffu8 << (8 - (len - start)))
                }
            })
            .collect()
    }

    fn rule(id: u32, action: u32, prefix_len: u32, shared: bool) -> RuleEntry {
        RuleEntry {
            id,
            action,
            flags: if shared { RULE_SHARED } else { 0 },
            prefix_len,
            limit: Limit::new(5, 5),
        }
    }

    proptest! {
        /// The key is the source with every bit past the prefix cleared, whatever the prefix.
        #[test]
        fn the_key_is_the_masked_source(a in any::<[u8; 16]>(), len in 0u32..=140, id in any::<u32>()) {
            let key = bucket_key(&v6(a), len, id);
            prop_assert_eq!(key.family, FAMILY_IPV6);
            prop_assert_eq!(u32::from(key.prefix_len), len.min(128));
            prop_assert_eq!(key.rule_id, id);
            prop_assert_eq!(key.addr.to_vec(), masked(&a, len.min(128)));
            let b: [u8; 4] = [a[0], a[1], a[2], a[3]];
            let key = bucket_key(&v4(b), len, id);
            prop_assert_eq!(key.family, FAMILY_IPV4);
            prop_assert_eq!(u32::from(key.prefix_len), len.min(32));
            let mut expected = masked(&b, len.min(32));
            expected.resize(16, 0);
            prop_assert_eq!(key.addr.to_vec(), expected);
        }

        /// The override wins over the rule, the rule over `[limits]`; a table the configuration
        /// says is empty is not looked up.
        #[test]
        fn overrides_then_rules_then_the_default(
            has_override in any::<bool>(), has_rule in any::<bool>(),
            override_found in any::<bool>(), rule_found in any::<bool>(), ipv4 in any::<bool>(),
        ) {
            let (o_flag, r_flag) = if ipv4 {
                (CONFIG_HAS_OVERRIDES_V4, CONFIG_HAS_RULES_V4)
            } else {
                (CONFIG_HAS_OVERRIDES_V6, CONFIG_HAS_RULES_V6)
            };
            let flags = if has_override { o_flag } else { 0 } | if has_rule { r_flag } else { 0 };
            let config = config(32, 64, flags);
            let mut looked_up = (false, false);
            let found = find_rule(
                ipv4,
                &config,
                || { looked_up.0 = true; override_found.then_some("override") },
                || { looked_up.1 = true; rule_found.then_some("rule") },
            );
            let expected = if has_override && override_found {
                Some("override")
            } else if has_rule && rule_found {
                Some("rule")
            } else {
                None
            };
            prop_assert_eq!(found, expected);
            prop_assert!(has_override || !looked_up.0);
            prop_assert!(has_rule || !looked_up.1);
        }

        /// Per key under the configured prefix, or one bucket for a shared rule's CIDR; allow and
        /// deny without a bucket.
        #[test]
        fn what_a_packet_is_charged_to(a in any::<[u8; 4]>(), v4_len in 0u32..=32, cidr_len in 0u32..=32, id in 1u32..) {
            let a = [198, 18, a[2], a[3]];
            let source = v4(a);
            let config = config(v4_len, 64, CONFIG_HAS_RULES_V4);
            prop_assert_eq!(
                charge(&source, &config, None),
                Charge::Bucket { key: bucket_key(&source, v4_len, DEFAULT_RULE_ID), limit: config.default_limit }
            );
            let limit = rule(id, ACTION_LIMIT, cidr_len, false);
            prop_assert_eq!(
                charge(&source, &config, Some(&limit)),
                Charge::Bucket { key: bucket_key(&source, v4_len, id), limit: limit.limit }
            );
            let shared = rule(id, ACTION_LIMIT, cidr_len, true);
            prop_assert_eq!(
                charge(&source, &config, Some(&shared)),
                Charge::Bucket { key: bucket_key(&source, cidr_len, id), limit: shared.limit }
            );
            prop_assert_eq!(charge(&source, &config, Some(&rule(id, ACTION_ALLOW, cidr_len, false))), Charge::Allow);
            prop_assert_eq!(charge(&source, &config, Some(&rule(id, ACTION_DENY, cidr_len, false))), Charge::Deny);
        }

        /// Link-local sources get a key each, whatever the configured prefix.
        #[test]
        fn link_local_sources_are_keyed_by_their_full_address(rest in any::<[u8; 14]>(), second in 0x80u8..=0xbf, len in 0u32..=128) {
            let mut a = [0u8; 16];
            a[0] = 0xfe;
            a[1] = second;
            a[2..].copy_from_slice(&rest);
            let config = config(len.min(32), len, 0);
            let Charge::Bucket { key, .. } = charge(&v6(a), &config, None) else {
                panic!("not a bucket");
            };
            prop_assert_eq!((key.prefix_len, key.addr), (128, a));
            let b = [169, 254, rest[0], rest[1]];
            let Charge::Bucket { key, .. } = charge(&v4(b), &config, None) else {
                panic!("not a bucket");
            };
            prop_assert_eq!(key.prefix_len, 32);
            // Not link-local: the configured prefix.
            let Charge::Bucket { key, .. } = charge(&v6([0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), &config, None) else {
                panic!("not a bucket");
            };
            prop_assert_eq!(u32::from(key.prefix_len), len);
        }
    }
}
