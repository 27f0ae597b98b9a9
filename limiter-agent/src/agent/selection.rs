//! Which tracked keys a list of KEYs selects — a KEY selects every tracked key it overlaps (the
//! key it lies in, and the keys inside it) — in time proportional to the tracked keys, not to
//! tracked keys × KEYs: the KEYs are indexed by prefix length, so a tracked key is looked up
//! once per distinct length instead of compared with every KEY.

use limiter_common::key::Prefix;
use std::collections::HashMap;

/// KEYs at most in one request.
pub const MAX_KEYS_PER_REQUEST: usize = 10_000;

/// `(IPv4?, prefix length)`.
type Length = (bool, u8);

pub struct Selection {
    wanted: Vec<Prefix>,
    /// The KEYs by length, each as it is.
    exact: HashMap<Length, HashMap<Prefix, Vec<usize>>>,
    /// For a tracked key's length L: the KEYs longer than L, cut to L (built when first needed).
    cut: HashMap<Length, HashMap<Prefix, Vec<usize>>>,
}

impl Selection {
    pub fn new(wanted: Vec<Prefix>) -> Selection {
        let mut exact: HashMap<Length, HashMap<Prefix, Vec<usize>>> = HashMap::new();
        for (i, w) in wanted.iter().enumerate() {
            exact
                .entry((w.is_ipv4(), w.prefix_len()))
                .or_default()
                .entry(*w)
                .or_default()
                .push(i);
        }
        Selection {
            wanted,
            exact,
            cut: HashMap::new(),
        }
    }

    /// The indices of the KEYs that select `key`.
    pub fn selecting(&mut self, key: &Prefix) -> Vec<usize> {
        let family = key.is_ipv4();
        let mut hits = Vec::new();
        // KEYs that contain `key`: as long as it or shorter.
        for (&(v4, len), by_prefix) in &self.exact {
            if v4 == family && len <= key.prefix_len() {
                if let Some(found) = by_prefix.get(&Prefix::new(key.addr(), len)) {
                    hits.extend(found);
                }
            }
        }
        // KEYs inside `key`: longer, so cut to its length.
        let length = (family, key.prefix_len());
        let wanted = &self.wanted;
        let cut = self.cut.entry(length).or_insert_with(|| {
            let mut cut: HashMap<Prefix, Vec<usize>> = HashMap::new();
            for (i, w) in wanted.iter().enumerate() {
                if w.is_ipv4() == family && w.prefix_len() > key.prefix_len() {
                    cut.entry(Prefix::new(w.addr(), key.prefix_len()))
                        .or_default()
                        .push(i);
                }
            }
            cut
        });
        if let Some(found) = cut.get(key) {
            hits.extend(found);
        }
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prefix() -> impl Strategy<Value = Prefix> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| Prefix::new(
                std::net::Ipv4Addr::from(0xc612_0000 | (a & 0x0000_0f0f)).into(),
                l
            )),
            (any::<u128>(), 0u8..=128).prop_map(|(a, l)| Prefix::new(
                std::net::Ipv6Addr::from((0x2001_0002u128 << 96) | (a & 0x0f0f)).into(),
                l
            )),
        ]
    }

    proptest! {
        /// The same answer as comparing every KEY with the key.
        #[test]
        fn agrees_with_overlap(
            wanted in proptest::collection::vec(prefix(), 0..20),
            tracked in proptest::collection::vec(prefix(), 0..20),
        ) {
            let mut selection = Selection::new(wanted.clone());
            for key in &tracked {
                let mut got = selection.selecting(key);
                got.sort_unstable();
                let expected: Vec<usize> = wanted
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.overlaps(key))
                    .map(|(i, _)| i)
                    .collect();
                prop_assert_eq!(got, expected);
            }
        }
    }
}
