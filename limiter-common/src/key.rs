//! The one place where keys are turned into text and back: the CLI, the API and the metrics all
//! go through here.
//!
//! A tracked key is shown as a prefix (`198.18.1.7/32`, `2001:2::/64`). On the command line a
//! KEY is an address or a prefix; it selects every tracked key it overlaps: an address selects
//! the key it belongs to, a prefix every key inside it (and the key it lies in, if keys are wider).

use crate::charge::{self, Source};
use crate::maps::{BucketKey, FAMILY_IPV4, FAMILY_IPV6};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address with a prefix length, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a text is not a KEY or CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixError(String);

impl fmt::Display for PrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PrefixError {}

const EXAMPLES: &str =
    "an address or a prefix, such as 198.18.1.7, 198.18.1.0/24, 2001:2::5 or 2001:2::/64";

impl Prefix {
    /// `addr/len` with the bits beyond `len` cleared; `len` is capped at the family's width.
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        let len = len.min(max_len(addr));
        Prefix {
            addr: mask(addr, len),
            len,
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The address bytes in network order: 4 for IPv4, 16 for IPv6.
    pub fn octets(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// A single address (/32, /128).
    pub fn is_host(&self) -> bool {
        self.prefix_len() == max_len(self.addr())
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `other` lies inside this prefix.
    pub fn contains(&self, other: &Prefix) -> bool {
        self.addr.is_ipv4() == other.addr.is_ipv4()
            && other.len >= self.len
            && mask(other.addr, self.len) == self.addr
    }

    /// Whether the two prefixes share any address (one contains the other).
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The datapath key for this prefix under rule `rule_id`.
    pub fn to_bucket_key(&self, rule_id: u32) -> BucketKey {
        charge::bucket_key(&self.source(), u32::from(self.len), rule_id)
    }

    /// The prefix's address as the datapath reads a packet's source.
    pub fn source(&self) -> Source {
        match self.addr {
            IpAddr::V4(a) => Source::v4(u32::from_ne_bytes(a.octets())),
            IpAddr::V6(a) => Source::v6(charge::bytes_to_words(a.octets())),
        }
    }

    /// The prefix a datapath key stands for; `None` for bytes no datapath would write.
    pub fn from_bucket_key(key: &BucketKey) -> Option<Prefix> {
        let addr = match key.family {
            FAMILY_IPV4 => IpAddr::V4(Ipv4Addr::new(
                key.addr[0],
                key.addr[1],
                key.addr[2],
                key.addr[3],
            )),
            FAMILY_IPV6 => IpAddr::V6(Ipv6Addr::from(key.addr)),
            _ => return None,
        };
        (key.prefix_len <= max_len(addr)).then(|| Prefix::new(addr, key.prefix_len))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Prefix, PrefixError> {
        let text = text.trim();
        let bad = |why: &str| {
            PrefixError(format!(
                "'{text}' is not a valid key: {why}; expected {EXAMPLES}"
            ))
        };
        let (addr_text, len_text) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| bad(&format!("'{addr_text}' is not an IPv4 or IPv6 address")))?;
        let len = match len_text {
            None => max_len(addr),
            Some(l) => {
                let len: u8 = l
                    .parse()
                    .map_err(|_| bad(&format!("'{l}' is not a prefix length")))?;
                if len > max_len(addr) {
                    return Err(bad(&format!(
                        "the prefix length {len} is longer than {} bits",
                        max_len(addr)
                    )));
                }
                len
            }
        };
        Ok(Prefix::new(addr, len))
    }
}

fn max_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len as u32)
            };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_and_prefixes_round_trip() {
        assert_eq!(p("198.18.1.7").to_string(), "198.18.1.7/32");
        assert_eq!(p("198.18.1.7/24").to_string(), "198.18.1.0/24");
        assert_eq!(p("2001:2::5").to_string(), "2001:2::5/128");
        assert_eq!(p("2001:2::5/64").to_string(), "2001:2::/64");
        for s in ["198.18.1.7/32", "198.18.0.0/15", "2001:2::/64", "0.0.0.0/0"] {
            let key = p(s).to_bucket_key(7);
            assert_eq!(Prefix::from_bucket_key(&key).unwrap().to_string(), s);
        }
    }

    #[test]
    fn malformed_keys_say_what_a_valid_one_looks_like() {
        for bad in [
            "",
            "foo",
            "198.18.1",
            "198.18.1.7/33",
            "2001:2::/129",
            "198.18.1.0/x",
        ] {
            let err = bad.parse::<Prefix>().unwrap_err().to_string();
            assert!(err.contains("198.18.1.0/24"), "{err}");
        }
    }

    #[test]
    fn selection_by_overlap() {
        let key = p("198.18.1.0/24");
        assert!(p("198.18.1.7").overlaps(&key));
        assert!(p("198.18.0.0/16").overlaps(&key));
        assert!(!p("198.18.2.7").overlaps(&key));
        assert!(!p("2001:2::/48").overlaps(&key));
    }
}
