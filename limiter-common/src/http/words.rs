//! Eight bytes at a time: loads from the scanning buffer and exact byte masks (SWAR). A mask has
//! the high bit (0x80) of each byte that answers yes, and nothing else — no false positives
//! above a match, unlike the shorter classic test — so the first and the last match can both be
//! read off it.

use super::{BUFFER, WINDOW};

pub const ONES: u64 = 0x0101_0101_0101_0101;
pub const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// The 8 bytes at `at + plus` of `bytes` (`plus` ≤ [`super::SLACK`] − 8), little-endian: the
/// first byte is the low one. `at` is taken modulo [`WINDOW`], so the read stays inside the
/// buffer whatever the caller computed (the verifier sees that bound); callers keep `at` below
/// the window themselves.
#[inline(always)]
pub fn load(bytes: &[u8; BUFFER], at: u32, plus: usize) -> u64 {
    let at = (at as usize & (WINDOW - 1)) + plus;
    #[cfg(target_arch = "bpf")]
    {
        let word: u64;
        // SAFETY: `at + 8 ≤ WINDOW − 1 + SLACK ≤ BUFFER`: the 8 bytes are inside `bytes`. One
        // `ldxdw`, which the verifier accepts at any alignment on a map value where the
        // architecture has efficient unaligned access (`read_unaligned` would be eight byte
        // loads on BPF).
        unsafe {
            core::arch::asm!(
                "{word} = *(u64 *)({p} + 0)",
                word = lateout(reg) word,
                p = in(reg) bytes.as_ptr().add(at),
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        word
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    }
}

/// 0x80 in each zero byte of `x`.
#[inline(always)]
pub fn zero_bytes(x: u64) -> u64 {
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// 0x80 in each byte of `word` equal to `byte`.
#[inline(always)]
pub fn eq(word: u64, byte: u8) -> u64 {
    zero_bytes(word ^ ONES.wrapping_mul(u64::from(byte)))
}

/// 0x80 in each of the first `n` bytes (all eight from `n` ≥ 8).
#[inline(always)]
pub fn first_bytes(n: u32) -> u64 {
    if n >= 8 {
        HIGHS
    } else {
        HIGHS & ((1u64 << (8 * n)) - 1)
    }
}

/// The index (0–7) of the first byte marked in `mask` (not zero).
#[inline(always)]
pub fn first(mask: u64) -> u32 {
    mask.trailing_zeros() / 8
}

/// The index (0–7) of the last byte marked in `mask` (not zero).
#[inline(always)]
pub fn last(mask: u64) -> u32 {
    (63 - mask.leading_zeros()) / 8
}

/// Whether `word` starts with the pattern `want`: the bytes `care` keeps, with the bits `fold`
/// sets (0x20 on letters: ASCII case) forced on first.
#[inline(always)]
pub fn matches(word: u64, want: u64, fold: u64, care: u64) -> bool {
    (word | fold) & care == want
}

/// A pattern of up to 8 bytes for [`matches`]: `(want, fold, care)`, letters of any case.
pub const fn pattern(text: &[u8]) -> (u64, u64, u64) {
    let mut want = 0;
    let mut fold = 0;
    let mut care = 0;
    let mut i = 0;
    while i < text.len() && i < 8 {
        let b = text[i].to_ascii_lowercase();
        want |= (b as u64) << (8 * i);
        if b.is_ascii_lowercase() {
            fold |= 0x20 << (8 * i);
        }
        care |= 0xff << (8 * i);
        i += 1;
    }
    (want, fold, care)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn masks_are_exact(bytes in any::<[u8; 8]>(), needle in any::<u8>()) {
            let word = u64::from_le_bytes(bytes);
            let mask = eq(word, needle);
            for (i, b) in bytes.iter().enumerate() {
                prop_assert_eq!(mask >> (8 * i) & 0xff, if *b == needle { 0x80 } else { 0 });
            }
            if mask != 0 {
                prop_assert_eq!(first(mask) as usize, bytes.iter().position(|b| *b == needle).unwrap());
                prop_assert_eq!(last(mask) as usize, bytes.iter().rposition(|b| *b == needle).unwrap());
            }
        }

        #[test]
        fn patterns_ignore_the_case_of_letters_only(bytes in any::<[u8; 8]>()) {
            let (want, fold, care) = pattern(b"x-api-k:");
            let expected = bytes.iter().zip(b"x-api-k:").all(|(b, p)| {
                if p.is_ascii_lowercase() { b.to_ascii_lowercase() == *p } else { b == p }
            });
            prop_assert_eq!(matches(u64::from_le_bytes(bytes), want, fold, care), expected);
        }
    }

    #[test]
    fn first_bytes_counts() {
        assert_eq!(first_bytes(0), 0);
        assert_eq!(first_bytes(1), 0x80);
        assert_eq!(first_bytes(8), HIGHS);
        assert_eq!(first_bytes(100), HIGHS);
    }
}
