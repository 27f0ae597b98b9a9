//! The answer the XDP program gives a request over its key's limit: the request's own frame
//! turned into a complete `429 Too Many Requests` with FIN, back to the client (`XDP_TX`); and
//! the reset that releases the gateway's side of that connection afterwards.
//!
//! The agent renders each plan's response once ([`Answer`], in a map): everything but the
//! `Retry-After` seconds, which go into fixed-width slots the program fills per request — left
//! aligned digits, then spaces (whitespace a header value and a JSON body may end with). The
//! TCP checksum is linear, so the agent also sums the rendered payload, and the program adds
//! only what its digits change ([`slot_sum`]). The headers of either segment are built here
//! ([`reply_headers`], [`reset_headers`]) from what the program read off the request
//! ([`Segment`]).

/// Payload bytes of an answer at most.
pub const ANSWER_BYTES: usize = 448;
/// Digits of a `Retry-After` slot: up to 9 999 999 seconds (115 days).
pub const RETRY_DIGITS: usize = 7;
/// `Retry-After` slots in an answer: the header, the `RateLimit` header's `t`, the body.
pub const MAX_SLOTS: usize = 4;
/// Bytes of Ethernet and VLAN header kept from the request at most.
pub const MAX_L2: usize = 24;
/// Bytes of a built header block at most: Ethernet and VLAN tags, IPv6, TCP with timestamps.
pub const HEADERS_BYTES: usize = 128;
/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

/// One plan's rendered 429 (an array map of them, indexed by plan slot; 0 is `[http]`'s).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Payload bytes in `bytes`.
    pub len: u32,
    /// The payload's sum as the TCP checksum adds it (16-bit big-endian words, unfolded), with
    /// its slots holding spaces.
    pub sum: u32,
    /// Where each slot starts in the payload; `slot_count` of them are used.
    pub slots: [u16; MAX_SLOTS],
    pub slot_count: u32,
    pub _pad: u32,
    pub bytes: [u8; ANSWER_BYTES],
}

impl Answer {
    pub const EMPTY: Answer = Answer {
        len: 0,
        sum: 0,
        slots: [0; MAX_SLOTS],
        slot_count: 0,
        _pad: 0,
        bytes: [0; ANSWER_BYTES],
    };
}

/// `seconds` (at least 1, at most 9 999 999) as a slot: left-aligned digits, then spaces.
#[inline(always)]
pub fn retry_digits(seconds: u64) -> [u8; RETRY_DIGITS] {
    let seconds = seconds.clamp(1, 9_999_999);
    let mut digits = [b' '; RETRY_DIGITS];
    let mut count = 0;
    let mut rest = seconds;
    while rest > 0 && count < RETRY_DIGITS {
        count += 1;
        rest /= 10;
    }
    let mut rest = seconds;
    let mut i = RETRY_DIGITS;
    while i > 0 {
        i -= 1;
        if i < count {
            digits[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
    }
    digits
}

/// What a slot's digits add to the payload's sum, the slot at payload offset `at` (the payload
/// starts at an even offset of the TCP segment: its header is 20 or 32 bytes).
#[inline(always)]
pub fn slot_sum(at: u32, digits: &[u8; RETRY_DIGITS]) -> u32 {
    let mut sum = 0;
    for (i, digit) in digits.iter().enumerate() {
        let delta = u32::from(*digit - b' ');
        sum += if (at + i as u32).is_multiple_of(2) {
            delta << 8
        } else {
            delta
        };
    }
    sum
}

/// A checksum after a 32-bit field it covers changed from `old` to `new` (RFC 1624:
/// HC' = ~(~HC + ~m + m'), a 16-bit half at a time).
#[inline(always)]
pub fn checksum_replaced(check: u16, old: u32, new: u32) -> u16 {
    let mut sum = u64::from(!check);
    sum += u64::from(!(old >> 16) & 0xffff) + u64::from(!old & 0xffff);
    sum += u64::from(new >> 16) + u64::from(new & 0xffff);
    checksum(sum)
}

/// A checksum after `diff` (a ones'-complement sum of the change, as `bpf_csum_diff` gives it:
/// native-order words) was added to what it covers.
#[inline(always)]
pub fn checksum_added(check: u16, diff: u32) -> u16 {
    // `bpf_csum_diff` sums the words as loaded (little-endian on the machines we run on); the
    // checksum field is big-endian: fold, then swap the folded sum into the field's order.
    let folded = !checksum(u64::from(diff));
    let folded = folded.swap_bytes();
    checksum(u64::from(!check) + u64::from(folded))
}

/// Folds a ones'-complement sum to 16 bits and complements it: the checksum to store.
#[inline(always)]
pub fn checksum(sum: u64) -> u16 {
    let mut sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The sum of `bytes` as 16-bit big-endian words (a last odd byte is the high half of a word).
pub fn sum_bytes(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|pair| u64::from(pair[0]) << 8 | u64::from(pair.get(1).copied().unwrap_or(0)))
        .sum()
}

/// What the answer and the reset need from the request segment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The Ethernet header and VLAN tags as received (`l2_len` bytes: 14, 18 or 22).
    pub l2: [u8; MAX_L2],
    pub l2_len: u32,
    /// 1 for IPv6, 0 for IPv4.
    pub ipv6: u32,
    /// Source and destination addresses as in the packet (IPv4: the first four bytes).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports, sequence and acknowledgement numbers, in host order.
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes of the segment.
    pub payload_len: u32,
    /// 1 when the segment carried a TCP timestamps option (the reply echoes it).
    pub has_ts: u32,
    pub ts_val: u32,
    pub ts_ecr: u32,
}

impl Segment {
    pub const EMPTY: Segment = Segment {
        l2: [0; MAX_L2],
        l2_len: 0,
        ipv6: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        seq: 0,
        ack: 0,
        payload_len: 0,
        has_ts: 0,
        ts_val: 0,
        ts_ecr: 0,
    };
}

#[inline(always)]
fn put16(out: &mut [u8; HEADERS_BYTES], at: usize, value: u16) {
    let at = at & (HEADERS_BYTES - 1);
    let [a, b] = value.to_be_bytes();
    out[at & (HEADERS_BYTES - 1)] = a;
    out[(at + 1) & (HEADERS_BYTES - 1)] = b;
}

#[inline(always)]
fn put32(out: &mut [u8; HEADERS_BYTES], at: usize, value: u32) {
    put16(out, at, (value >> 16) as u16);
    put16(out, at + 2, value as u16);
}

#[inline(always)]
fn put_addr(out: &mut [u8; HEADERS_BYTES], at: usize, addr: &[u8; 16], len: usize) {
    for (i, byte) in addr.iter().enumerate() {
        if i < len {
            out[(at + i) & (HEADERS_BYTES - 1)] = *byte;
        }
    }
}

/// The sum of `len` bytes of `out` from `at` (`len` even, at most `2 × WORDS`), as 16-bit
/// big-endian words.
#[inline(always)]
fn sum_out<const WORDS: usize>(out: &[u8; HEADERS_BYTES], at: usize, len: usize) -> u64 {
    let mut sum = 0u64;
    for i in 0..WORDS {
        if 2 * i < len {
            let p = at + 2 * i;
            sum += u64::from(out[p & (HEADERS_BYTES - 1)]) << 8
                | u64::from(out[(p + 1) & (HEADERS_BYTES - 1)]);
        }
    }
    sum
}

/// The IP and TCP headers of a segment of `payload_len` bytes whose payload sums to
/// `payload_sum`, from `src`:`sport` to `dst`:`dport`, written into `out` after the `l2_len`
/// bytes already there; returns the headers' total length.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn ip_tcp(
    out: &mut [u8; HEADERS_BYTES],
    seg: &Segment,
    (src, dst): (&[u8; 16], &[u8; 16]),
    (sport, dport): (u16, u16),
    (seq, ack, flags): (u32, u32, u8),
    timestamps: Option<(u32, u32)>,
    payload_len: u32,
    payload_sum: u64,
) -> u32 {
    let l3 = (seg.l2_len as usize).min(MAX_L2);
    let tcp_len = if timestamps.is_some() { 32 } else { 20 };
    let (ip_len, addr_len) = if seg.ipv6 != 0 { (40, 16) } else { (20, 4) };
    let l4 = l3 + ip_len;
    let segment_len = tcp_len as u32 + payload_len;
    if seg.ipv6 != 0 {
        put32(out, l3, 0x6000_0000);
        put16(out, l3 + 4, segment_len as u16);
        out[(l3 + 6) & (HEADERS_BYTES - 1)] = 6;
        out[(l3 + 7) & (HEADERS_BYTES - 1)] = 64;
        put_addr(out, l3 + 8, src, 16);
        put_addr(out, l3 + 24, dst, 16);
    } else {
        put16(out, l3, 0x4500);
        put16(out, l3 + 2, (20 + segment_len) as u16);
        put32(out, l3 + 4, 0x0000_4000); // id 0, don't fragment
        put16(out, l3 + 8, 0x4006); // TTL 64, TCP
        put16(out, l3 + 10, 0);
        put_addr(out, l3 + 12, src, 4);
        put_addr(out, l3 + 16, dst, 4);
        let sum = checksum(sum_out::<10>(out, l3, 20));
        put16(out, l3 + 10, sum);
    }
    put16(out, l4, sport);
    put16(out, l4 + 2, dport);
    put32(out, l4 + 4, seq);
    put32(out, l4 + 8, ack);
    put16(
        out,
        l4 + 12,
        ((tcp_len as u16 / 4) << 12) | u16::from(flags),
    );
    put16(out, l4 + 14, 1024); // window
    put32(out, l4 + 16, 0); // checksum, urgent pointer
    if let Some((val, ecr)) = timestamps {
        put32(out, l4 + 20, 0x0101_080a); // NOP, NOP, timestamps (kind 8, length 10)
        put32(out, l4 + 24, val);
        put32(out, l4 + 28, ecr);
    }
    // The pseudo-header: both addresses, the protocol, the segment's length.
    let pseudo =
        sum_out::<16>(out, l3 + ip_len - 2 * addr_len, 2 * addr_len) + 6 + u64::from(segment_len);
    let sum = pseudo + sum_out::<16>(out, l4, tcp_len) + payload_sum;
    put16(out, l4 + 16, checksum(sum));
    (l4 + tcp_len) as u32
}

/// The headers of the answer to `seg`: the request's Ethernet header with its addresses
/// swapped, then IP and TCP from the gateway back to the client, acknowledging the request and
/// carrying the answer's `payload_len` bytes (summing to `payload_sum`) with FIN. Returns the
/// headers' length; the payload follows them.
/// With `keep_alive` the answer does not close the connection (no FIN), and echoes the
/// request's TSecr as its own TSval (the gateway's next segments carry at least that).
#[inline(always)]
pub fn reply_headers(
    seg: &Segment,
    payload_len: u32,
    payload_sum: u64,
    keep_alive: bool,
    out: &mut [u8; HEADERS_BYTES],
) -> u32 {
    // Destination and source MAC swapped; tags and ethertype kept.
    out[..6].copy_from_slice(&seg.l2[6..12]);
    out[6..12].copy_from_slice(&seg.l2[..6]);
    out[12..MAX_L2].copy_from_slice(&seg.l2[12..]);
    let (ts_val, flags) = if keep_alive {
        (seg.ts_ecr, TCP_PSH | TCP_ACK)
    } else {
        (seg.ts_ecr.wrapping_add(1), TCP_FIN | TCP_PSH | TCP_ACK)
    };
    let timestamps = (seg.has_ts != 0).then_some((ts_val, seg.ts_val));
    ip_tcp(
        out,
        seg,
        (&seg.dst, &seg.src),
        (seg.dport, seg.sport),
        (seg.ack, seg.seq.wrapping_add(seg.payload_len), flags),
        timestamps,
        payload_len,
        payload_sum,
    )
}

/// The headers of a reset from the client to the gateway at sequence `seq` (the gateway's next
/// expected byte: the rejected request's first), without payload: it releases the gateway's
/// side of a connection whose request the program answered.
#[inline(always)]
pub fn reset_headers(seg: &Segment, seq: u32, out: &mut [u8; HEADERS_BYTES]) -> u32 {
    out[..MAX_L2].copy_from_slice(&seg.l2);
    ip_tcp(
        out,
        seg,
        (&seg.src, &seg.dst),
        (seg.sport, seg.dport),
        (seq, 0, TCP_RST),
        None,
        0,
        0,
    )
}

#[cfg(feature = "user")]
mod render {
    use super::*;

    /// The policy name of the `[http]` default in the `RateLimit` headers.
    pub const DEFAULT_POLICY: &str = "default";

    impl Answer {
        /// The 429 of a plan: `policy` its name (at most 32 bytes of `[A-Za-z0-9_.-]`), at
        /// `rate` requests per second with `burst` at once. The `RateLimit-Policy` header
        /// (draft-ietf-httpapi-ratelimit-headers) states it as `q` requests per window of `w`
        /// seconds: `w` the time a full burst takes to come back, `q` the rate over it.
        /// `keep_alive`: `Connection: keep-alive` instead of `close` (`[http] keep_alive`).
        pub fn render(policy: &str, rate: u64, burst: u64, keep_alive: bool) -> Answer {
            let rate = rate.max(1);
            let window = burst.div_ceil(rate).max(1);
            let quota = rate.saturating_mul(window);
            Answer::render_policy(policy, "too many requests", quota, window, keep_alive)
        }

        /// The 429 of a key over its quota of `quota` requests a window of `window_secs`:
        /// the policy is named `POLICY-quota`, and `Retry-After` is the window's end.
        pub fn render_quota(
            policy: &str,
            quota: u64,
            window_secs: u64,
            keep_alive: bool,
        ) -> Answer {
            Answer::render_policy(
                &format!("{policy}-quota"),
                "quota exceeded",
                quota,
                window_secs,
                keep_alive,
            )
        }

        fn render_policy(
            policy: &str,
            error: &str,
            quota: u64,
            window: u64,
            keep_alive: bool,
        ) -> Answer {
            const SLOT: &str = "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}";
            let body = format!("{{\"error\":\"{error}\",\"retry_after_s\":{SLOT}}}\n");
            let text = format!(
                "HTTP/1.1 429 Too Many Requests\r\n\
                 Retry-After: {SLOT}\r\n\
                 RateLimit-Policy: \"{policy}\";q={quota};w={window}\r\n\
                 RateLimit: \"{policy}\";r=0;t={SLOT}\r\n\
                 Content-Type: application/json\r\n\
                 Content-Length: {}\r\n\
                 Connection: {}\r\n\
                 \r\n\
                 {body}",
                body.len(),
                if keep_alive { "keep-alive" } else { "close" }
            );
            let mut answer = Answer::EMPTY;
            let bytes = text.as_bytes();
            assert!(
                bytes.len() <= ANSWER_BYTES,
                "a 429 longer than {ANSWER_BYTES} bytes"
            );
            answer.bytes[..bytes.len()].copy_from_slice(bytes);
            answer.len = bytes.len() as u32;
            let mut at = 0;
            while let Some(found) = text[at..].find(SLOT) {
                let start = at + found;
                answer.slots[answer.slot_count as usize] = start as u16;
                answer.slot_count += 1;
                answer.bytes[start..start + RETRY_DIGITS].fill(b' ');
                at = start + RETRY_DIGITS;
            }
            answer.sum = sum_bytes(&answer.bytes[..bytes.len()]) as u32;
            answer
        }

        /// The payload with `seconds` in its slots, as the program writes it.
        pub fn payload(&self, seconds: u64) -> Vec<u8> {
            let mut bytes = self.bytes[..self.len as usize].to_vec();
            let digits = retry_digits(seconds);
            for slot in &self.slots[..self.slot_count as usize] {
                let at = *slot as usize;
                bytes[at..at + RETRY_DIGITS].copy_from_slice(&digits);
            }
            bytes
        }
    }
}
#[cfg(feature = "user")]
pub use render::DEFAULT_POLICY;

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    #[test]
    fn digits_are_left_aligned_and_bounded() {
        assert_eq!(&retry_digits(0), b"1      ");
        assert_eq!(&retry_digits(42), b"42     ");
        assert_eq!(&retry_digits(1_234_567), b"1234567");
        assert_eq!(&retry_digits(u64::MAX), b"9999999");
    }

    #[test]
    fn the_slots_sum_as_the_bytes_do() {
        let answer = Answer::render("pro", 100, 200, false);
        for seconds in [1, 9, 10, 86_399, 2_678_400] {
            let payload = answer.payload(seconds);
            let digits = retry_digits(seconds);
            let sum = u64::from(answer.sum)
                + answer.slots[..answer.slot_count as usize]
                    .iter()
                    .map(|at| u64::from(slot_sum(u32::from(*at), &digits)))
                    .sum::<u64>();
            assert_eq!(checksum(sum), checksum(sum_bytes(&payload)), "{seconds}");
        }
    }

    #[test]
    fn the_answer_is_a_complete_http_response() {
        let answer = Answer::render("default", 10, 20, false);
        let payload = answer.payload(3);
        let (head, field) = parsed(&payload);
        assert_eq!(field("retry-after"), "3");
        assert_eq!(field("connection"), "close");
        assert_eq!(field("ratelimit-policy"), "\"default\";q=20;w=2");
        assert_eq!(field("ratelimit"), "\"default\";r=0;t=3");
        let body = &payload[head..];
        assert_eq!(field("content-length"), body.len().to_string());
        let text = std::str::from_utf8(body).unwrap();
        assert!(text.contains("\"retry_after_s\":3"), "{text}");
        assert!(slot_fits(&answer));
    }

    #[test]
    fn the_quota_answer_names_the_quota_and_fits_a_months_seconds() {
        let answer = Answer::render_quota("metered", 4_294_967_295, 2_592_000, true);
        let payload = answer.payload(2_678_400);
        let (head, field) = parsed(&payload);
        assert_eq!(field("retry-after"), "2678400");
        assert_eq!(field("connection"), "keep-alive");
        assert_eq!(
            field("ratelimit-policy"),
            "\"metered-quota\";q=4294967295;w=2592000"
        );
        assert_eq!(field("ratelimit"), "\"metered-quota\";r=0;t=2678400");
        let text = std::str::from_utf8(&payload[head..]).unwrap();
        assert!(text.contains("\"error\":\"quota exceeded\""), "{text}");
        assert!(slot_fits(&answer));
        // The longest plan name a configuration takes (32) still fits.
        let longest = Answer::render_quota(&"p".repeat(32), 4_294_967_295, 2_592_000, true);
        assert!(slot_fits(&longest));
    }

    /// A 429 parsed as HTTP (asserted complete): the length of its head, and its header
    /// fields by name, trimmed.
    fn parsed(payload: &[u8]) -> (usize, impl Fn(&str) -> String) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = response.parse(payload).unwrap() else {
            panic!("incomplete");
        };
        assert_eq!(response.code, Some(429));
        let fields: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                let value = std::str::from_utf8(h.value).unwrap().trim().to_string();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        let field = move |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no {name} header"))
        };
        (head, field)
    }

    fn slot_fits(answer: &Answer) -> bool {
        answer.slot_count == 3 && (answer.len as usize) < ANSWER_BYTES
    }

    #[test]
    fn a_replaced_field_keeps_the_checksum_right() {
        let bytes = [
            0x12u8, 0x34, 0xab, 0xcd, 0x00, 0x00, 0xde, 0xad, 0xbe, 0xef, 7, 9,
        ];
        let check = checksum(sum_bytes(&bytes));
        for new in [0u32, 1, 0xffff_ffff, 0xdead_beef, 0x8000_0000] {
            let old = u32::from_be_bytes(bytes[6..10].try_into().unwrap());
            let mut changed = bytes;
            changed[6..10].copy_from_slice(&new.to_be_bytes());
            let expected = checksum(sum_bytes(&changed));
            let got = checksum_replaced(check, old, new);
            // 0x0000 and 0xffff are the same ones'-complement value.
            assert!(
                got == expected || (got ^ expected) == 0xffff,
                "{new:x}: {got:x} {expected:x}"
            );
        }
    }

    #[test]
    fn headers_checksum_to_zero() {
        let mut seg = Segment::EMPTY;
        seg.l2[..14].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00]);
        seg.l2_len = 14;
        seg.src[..4].copy_from_slice(&[198, 18, 0, 10]);
        seg.dst[..4].copy_from_slice(&[198, 18, 0, 1]);
        (seg.sport, seg.dport, seg.seq, seg.ack, seg.payload_len) = (40000, 80, 7, 9, 30);
        (seg.has_ts, seg.ts_val, seg.ts_ecr) = (1, 100, 200);
        let payload = b"HTTP/1.1 429 x\r\n\r\n";
        let mut out = [0u8; HEADERS_BYTES];
        let len = reply_headers(
            &seg,
            payload.len() as u32,
            sum_bytes(payload),
            false,
            &mut out,
        ) as usize;
        assert_eq!(len, 14 + 20 + 32);
        assert_eq!(&out[0..6], &seg.l2[6..12]);
        assert_eq!(checksum(sum_bytes(&out[14..34])), 0, "IPv4 header");
        let mut segment = out[34..len].to_vec();
        segment.extend_from_slice(payload);
        let pseudo = sum_bytes(&out[26..34]) + 6 + segment.len() as u64;
        assert_eq!(checksum(pseudo + sum_bytes(&segment)), 0, "TCP");
        assert_eq!(u32::from_be_bytes(out[38..42].try_into().unwrap()), 9);
        assert_eq!(u32::from_be_bytes(out[42..46].try_into().unwrap()), 37);
        // The timestamps echoed.
        assert_eq!(u32::from_be_bytes(out[58..62].try_into().unwrap()), 201);
        assert_eq!(u32::from_be_bytes(out[62..66].try_into().unwrap()), 100);

        seg.ipv6 = 1;
        seg.src = [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10];
        seg.dst = [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let len = reset_headers(&seg, 7, &mut out) as usize;
        assert_eq!(len, 14 + 40 + 20);
        let pseudo = sum_bytes(&out[22..54]) + 6 + 20;
        assert_eq!(
            checksum(pseudo + sum_bytes(&out[54..74])),
            0,
            "TCP over IPv6"
        );
        assert_eq!(out[54 + 13], TCP_RST);
    }
}
