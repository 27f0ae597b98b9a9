//! The keyed hash of an API key token: SipHash-1-3 with a 128-bit secret, so that nobody who does
//! not hold the secret can aim a token at another key's bucket. The XDP program feeds it the
//! token a word at a time from its scanning buffer, the agent a slice (`limiter keys add`); the
//! `siphasher` crate (a dev-dependency) is the reference it is tested against. Only the hash is
//! ever kept, never the token.

/// SipHash-1-3 over a message given a byte at a time.
#[derive(Clone, Copy, Debug)]
pub struct KeyHasher {
    v: [u64; 4],
    /// The bytes of the current 8-byte word, little-endian.
    word: u64,
    /// Message length so far (mod 256 is what the padding keeps).
    len: u64,
}

impl KeyHasher {
    /// A hasher under the secret `(k0, k1)`.
    pub const fn new(k0: u64, k1: u64) -> KeyHasher {
        KeyHasher {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            word: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.v;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }

    /// One compression of an 8-byte word (one SipRound: the "1" of 1-3).
    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.v[0] ^= m;
    }

    /// Takes the next byte of the message.
    #[inline(always)]
    pub fn write_byte(&mut self, byte: u8) {
        let shift = (self.len % 8) * 8;
        self.word |= u64::from(byte) << shift;
        self.len += 1;
        if self.len.is_multiple_of(8) {
            let m = self.word;
            self.compress(m);
            self.word = 0;
        }
    }

    /// Takes 8 bytes at once (little-endian), at a word boundary of the message (no byte given
    /// one at a time is pending): the XDP program's way.
    #[inline(always)]
    pub fn write_word(&mut self, word: u64) {
        self.compress(word);
        self.len += 8;
    }

    /// Takes the message's last `n` (0 to 7) bytes, the low bytes of `tail`, and finishes.
    #[inline(always)]
    pub fn finish_tail(&self, tail: u64, n: u32) -> u64 {
        let mut state = *self;
        let n = n & 7;
        state.word = if n == 0 {
            0
        } else {
            tail & ((1 << (8 * n)) - 1)
        };
        state.len += u64::from(n);
        state.finish()
    }

    /// Takes bytes (the agent's side; the datapath takes them one at a time).
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_byte(*b);
        }
    }

    /// The hash (three finalisation rounds: the "3" of 1-3).
    pub fn finish(&self) -> u64 {
        let mut state = *self;
        let last = state.word | ((state.len & 0xff) << 56);
        state.compress(last);
        state.v[2] ^= 0xff;
        state.round();
        state.round();
        state.round();
        state.v[0] ^ state.v[1] ^ state.v[2] ^ state.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;
    use proptest::prelude::*;

    proptest! {
        /// The same hash as the siphasher crate's SipHash-1-3, for any secret and message.
        #[test]
        fn is_siphash_1_3(k0 in any::<u64>(), k1 in any::<u64>(), message in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut reference = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
            reference.write(&message);
            let mut ours = KeyHasher::new(k0, k1);
            ours.write(&message);
            prop_assert_eq!(ours.finish(), reference.finish());
            // A word at a time, then the tail.
            let mut words = KeyHasher::new(k0, k1);
            let chunks = message.chunks_exact(8);
            let tail = chunks.remainder();
            for chunk in chunks {
                words.write_word(u64::from_le_bytes(chunk.try_into().unwrap()));
            }
            let mut last = [0xaa; 8];
            last[..tail.len()].copy_from_slice(tail);
            prop_assert_eq!(words.finish_tail(u64::from_le_bytes(last), tail.len() as u32), ours.finish());
        }
    }
}
