//! Finding the API key in an HTTP/1.x request, one byte at a time (a first step of API keys at
//! the NIC: only the experiment program `limiter-ebpf/src/bin/http_scan.rs` calls it yet).
//!
//! The scanner is a small state machine fed the request's first bytes in order, so that the
//! XDP program can drive it from a bounded loop (or `bpf_loop`) over a window copied from the
//! packet, and the agent and the tests can drive it over a slice. It keeps no pointer into the
//! request: it answers with where the key lies ([`Span`]), and the caller hashes those bytes.
//!
//! What it takes for a key, from the headers named in `[http] key_headers` (case-insensitive,
//! at most [`MAX_KEY_HEADERS`]): the field value with the whitespace around it trimmed; for
//! `Authorization`, only a `Bearer` token (the scheme case-insensitive, then at least one space).
//! The first header of the configured list that the request carries wins; of a header given
//! twice, its first line. A request whose key header ends beyond the scanned window is taken as
//! having no key there; bytes that do not start like a request line (a TLS ClientHello, binary
//! data) are [`Scan::NotHttp`].

/// Bytes of a request scanned at most.
pub const WINDOW: usize = 2048;
/// Key headers at most (`x-api-key`, `authorization` …). A power of two: indexes are masked.
pub const MAX_KEY_HEADERS: usize = 2;
/// Length of a key header's name at most. A power of two: indexes are masked.
pub const MAX_HEADER_NAME: usize = 32;
/// Length of a request method at most (`OPTIONS`, `PROPFIND` …).
const MAX_METHOD: u16 = 16;

/// The header whose value is a credential with a scheme: only a `Bearer` token is a key.
const AUTHORIZATION: &[u8] = b"authorization";
const BEARER: &[u8] = b"bearer";

/// The names of the headers that carry the key, lowercase, in order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHeaders {
    names: [[u8; MAX_HEADER_NAME]; MAX_KEY_HEADERS],
    lens: [u8; MAX_KEY_HEADERS],
    count: u8,
    /// A bit per header that is `Authorization` (its key is a Bearer token).
    bearer: u8,
}

impl KeyHeaders {
    /// Checks and stores header names (a token each: letters, digits, `-` …; any case).
    pub fn new(names: &[&[u8]]) -> Result<KeyHeaders, &'static str> {
        if names.is_empty() || names.len() > MAX_KEY_HEADERS {
            return Err("one or two key headers");
        }
        let mut headers = KeyHeaders {
            names: [[0; MAX_HEADER_NAME]; MAX_KEY_HEADERS],
            lens: [0; MAX_KEY_HEADERS],
            count: names.len() as u8,
            bearer: 0,
        };
        let slots = headers.names.iter_mut().zip(headers.lens.iter_mut());
        for (i, (name, (slot, len))) in names.iter().zip(slots).enumerate() {
            if name.is_empty() || name.len() > MAX_HEADER_NAME {
                return Err("a header name of 1 to 32 characters");
            }
            if !name.iter().all(|b| is_token(*b)) {
                return Err("a header name of letters, digits and -!#$%&'*+.^_`|~ only");
            }
            for (to, from) in slot.iter_mut().zip(name.iter()) {
                *to = from.to_ascii_lowercase();
            }
            *len = name.len() as u8;
            if name.eq_ignore_ascii_case(AUTHORIZATION) {
                headers.bearer |= 1 << i;
            }
        }
        Ok(headers)
    }

    /// Whether header `i`'s name has byte `lower` at `pos`. (No indexing that could panic:
    /// the XDP program runs this, and a panic path does not pass the verifier.)
    ///
    /// The indexes are masked to the arrays' (power of two) sizes after the comparisons that
    /// bound them: the verifier then knows the bounds of every read.
    #[inline(always)]
    fn name_has(&self, i: usize, pos: usize, lower: u8) -> bool {
        let i = i & (MAX_KEY_HEADERS - 1);
        pos < self.lens[i] as usize && self.names[i][pos & (MAX_HEADER_NAME - 1)] == lower
    }

    #[inline(always)]
    fn len(&self, i: usize) -> u16 {
        u16::from(self.lens[i & (MAX_KEY_HEADERS - 1)])
    }
}

/// Where the key lies in the request: `len` bytes from `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u16,
    pub len: u16,
}

/// What a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    Key(Span),
    NoKey,
    NotHttp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// The method: uppercase letters up to a space.
    Method,
    /// The rest of the request line.
    RequestLine,
    /// The start of a header line (or of the blank line that ends them).
    LineStart,
    /// A CR at a line start: the end of the headers when LF follows.
    BlankLine,
    /// A header's name; `candidates` has a bit per key header still matching.
    Name,
    /// Whitespace after the colon of key header `header`.
    BeforeValue,
    /// Matching `Bearer` in an Authorization value.
    Scheme,
    /// The spaces after the scheme.
    AfterScheme,
    /// The value: bytes up to the line's end, trailing whitespace trimmed.
    Value,
    /// The rest of a line that is not read.
    SkipLine,
    /// The headers have ended, or the request is not HTTP: nothing more is read.
    Done,
}

/// The state machine; feed it bytes with [`Scanner::step`], then ask [`Scanner::finish`].
#[derive(Clone, Copy, Debug)]
pub struct Scanner {
    headers: KeyHeaders,
    state: State,
    /// Bytes seen in the current field (method, name, scheme).
    pos: u16,
    candidates: u8,
    /// The key header of the line being read.
    header: u8,
    /// The value being read: where it starts, and where its last non-whitespace byte ends.
    start: u16,
    end: u16,
    /// The value of each key header's first line (none: no line, or an empty or unusable one).
    found: [Option<Span>; MAX_KEY_HEADERS],
    /// A bit per key header whose first line was read.
    seen: u8,
    http: bool,
}

impl Scanner {
    pub fn new(headers: &KeyHeaders) -> Scanner {
        Scanner {
            headers: *headers,
            state: State::Method,
            pos: 0,
            candidates: 0,
            header: 0,
            start: 0,
            end: 0,
            found: [None; MAX_KEY_HEADERS],
            seen: 0,
            http: true,
        }
    }

    /// Whether more bytes can change the answer.
    pub fn wants_more(&self) -> bool {
        self.state != State::Done
    }

    /// Takes the 8 bytes at `index` (`word`, little-endian: its first byte is the request's byte
    /// at `index`), of which the first `valid` are the request's. A line the scanner only skips
    /// (the request line, a header it does not read) is crossed a word at a time when the word
    /// holds no line feed: most of a request is such lines, so the XDP program needs an eighth
    /// of the rounds.
    #[inline(always)]
    pub fn step_word(&mut self, index: u16, word: u64, valid: u32) {
        let skipping = matches!(self.state, State::RequestLine | State::SkipLine);
        if skipping && valid == 8 && !has_byte(word, b'\n') {
            return;
        }
        for i in 0..8u32 {
            if i < valid && self.wants_more() {
                self.step(index.wrapping_add(i as u16), (word >> (8 * i)) as u8);
            }
        }
    }

    /// Takes the byte at `index` of the request.
    #[inline(always)]
    pub fn step(&mut self, index: u16, byte: u8) {
        match self.state {
            State::Method => match byte {
                b'A'..=b'Z' if self.pos < MAX_METHOD => self.pos += 1,
                b' ' if self.pos > 0 => self.state = State::RequestLine,
                _ => {
                    self.http = false;
                    self.state = State::Done;
                }
            },
            State::RequestLine => {
                if byte == b'\n' {
                    self.state = State::LineStart;
                }
            }
            State::LineStart => match byte {
                b'\r' => self.state = State::BlankLine,
                b'\n' => self.state = State::Done,
                _ => {
                    self.state = State::Name;
                    self.pos = 0;
                    self.candidates = (1u8 << self.headers.count) - 1;
                    self.name_byte(byte);
                }
            },
            State::BlankLine => {
                self.state = if byte == b'\n' {
                    State::Done
                } else {
                    State::SkipLine
                };
            }
            State::Name => self.name_byte(byte),
            State::BeforeValue => match byte {
                b' ' | b'\t' => {}
                b'\r' | b'\n' => self.line_end(byte),
                _ => {
                    if self.headers.bearer & (1 << self.header) != 0 {
                        self.state = State::Scheme;
                        self.pos = 0;
                        self.scheme_byte(byte);
                    } else {
                        self.value_start(index);
                    }
                }
            },
            State::Scheme => self.scheme_byte(byte),
            State::AfterScheme => match byte {
                b' ' => {}
                b'\r' | b'\n' => self.line_end(byte),
                _ => self.value_start(index),
            },
            State::Value => match byte {
                b'\r' | b'\n' => {
                    let len = self.end - self.start;
                    if len > 0 {
                        self.found[self.header as usize & (MAX_KEY_HEADERS - 1)] = Some(Span {
                            start: self.start,
                            len,
                        });
                    }
                    self.line_end(byte);
                }
                b' ' | b'\t' => {}
                _ => self.end = index + 1,
            },
            State::SkipLine => {
                if byte == b'\n' {
                    self.state = State::LineStart;
                }
            }
            State::Done => {}
        }
    }

    /// A byte of a header's name: which key headers it still matches, and at the colon whether
    /// one matched whole.
    #[inline(always)]
    fn name_byte(&mut self, byte: u8) {
        match byte {
            b':' => {
                self.state = State::SkipLine;
                for i in 0..self.headers.count as usize {
                    if self.candidates & (1 << i) != 0 && self.headers.len(i) == self.pos {
                        // Only a header's first line is read (as a gateway reads it).
                        if self.seen & (1 << i) == 0 {
                            self.seen |= 1 << i;
                            self.header = i as u8;
                            self.state = State::BeforeValue;
                        }
                        break;
                    }
                }
            }
            b'\r' | b'\n' => self.line_end(byte),
            _ => {
                let lower = byte.to_ascii_lowercase();
                for i in 0..self.headers.count as usize {
                    let pos = self.pos as usize;
                    if !self.headers.name_has(i, pos, lower) {
                        self.candidates &= !(1 << i);
                    }
                }
                if !is_token(byte) {
                    self.candidates = 0;
                }
                self.pos = self.pos.saturating_add(1);
            }
        }
    }

    /// A byte of the `Bearer` scheme, or of the spaces after it.
    #[inline(always)]
    fn scheme_byte(&mut self, byte: u8) {
        let pos = self.pos as usize;
        if pos == BEARER.len() {
            match byte {
                b' ' => self.state = State::AfterScheme,
                b'\r' | b'\n' => self.line_end(byte),
                _ => self.state = State::SkipLine,
            }
        } else if BEARER.get(pos) == Some(&byte.to_ascii_lowercase()) {
            self.pos += 1;
        } else if byte == b'\r' || byte == b'\n' {
            self.line_end(byte);
        } else {
            self.state = State::SkipLine;
        }
    }

    #[inline(always)]
    fn value_start(&mut self, index: u16) {
        self.state = State::Value;
        self.start = index;
        self.end = index + 1;
    }

    /// CR or LF at the end of a line: the next line starts after the LF.
    #[inline(always)]
    fn line_end(&mut self, byte: u8) {
        self.state = if byte == b'\n' {
            State::LineStart
        } else {
            State::SkipLine
        };
    }

    /// The answer, from the bytes seen.
    pub fn finish(&self) -> Scan {
        if !self.http {
            return Scan::NotHttp;
        }
        match self
            .found
            .iter()
            .take(self.headers.count as usize)
            .flatten()
            .next()
        {
            Some(span) => Scan::Key(*span),
            None => Scan::NoKey,
        }
    }
}

/// Scans the first [`WINDOW`] bytes of `request`.
pub fn scan(request: &[u8], headers: &KeyHeaders) -> Scan {
    let mut scanner = Scanner::new(headers);
    for (i, byte) in request.iter().take(WINDOW).enumerate() {
        if !scanner.wants_more() {
            break;
        }
        scanner.step(i as u16, *byte);
    }
    scanner.finish()
}

/// Whether one of `word`'s bytes is `byte` (the classic SWAR test: a zero byte in the XOR).
#[inline(always)]
fn has_byte(word: u64, byte: u8) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Scans the first [`WINDOW`] bytes of `request` a word at a time, as the XDP program does.
pub fn scan_words(request: &[u8], headers: &KeyHeaders) -> Scan {
    let mut scanner = Scanner::new(headers);
    let window = &request[..request.len().min(WINDOW)];
    for (i, chunk) in window.chunks(8).enumerate() {
        if !scanner.wants_more() {
            break;
        }
        let mut bytes = [0u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        scanner.step_word(
            (i * 8) as u16,
            u64::from_le_bytes(bytes),
            chunk.len() as u32,
        );
    }
    scanner.finish()
}

/// A token character of a header name (RFC 9110 §5.6.2).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers() -> KeyHeaders {
        KeyHeaders::new(&[b"X-API-Key", b"Authorization"]).unwrap()
    }

    fn key(request: &[u8]) -> Option<&[u8]> {
        match scan(request, &headers()) {
            Scan::Key(span) => {
                Some(&request[span.start as usize..(span.start + span.len) as usize])
            }
            _ => None,
        }
    }

    #[test]
    fn the_table() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-API-Key: k1\r\n\r\n",
                Some(b"k1"),
            ),
            (b"GET / HTTP/1.1\r\nx-api-KEY:k2  \r\n\r\n", Some(b"k2")),
            (
                b"GET / HTTP/1.1\r\nAuthorization: Bearer   t0k \r\n\r\n",
                Some(b"t0k"),
            ),
            (
                b"GET / HTTP/1.1\r\nauthorization: bEARER t\r\n\r\n",
                Some(b"t"),
            ),
            (
                b"GET / HTTP/1.1\r\nAuthorization: Basic dXNlcg==\r\n\r\n",
                None,
            ),
            (b"GET / HTTP/1.1\r\nAuthorization: Bearer\r\n\r\n", None),
            // The configured order wins, not the request's.
            (
                b"GET / HTTP/1.1\r\nAuthorization: Bearer b\r\nX-API-Key: a\r\n\r\n",
                Some(b"a"),
            ),
            // Of a header given twice, its first line.
            (
                b"GET / HTTP/1.1\r\nX-API-Key: one\r\nX-API-Key: two\r\n\r\n",
                Some(b"one"),
            ),
            (
                b"GET / HTTP/1.1\r\nAuthorization: Basic x\r\nAuthorization: Bearer y\r\n\r\n",
                None,
            ),
            (b"GET / HTTP/1.1\r\nX-API-Key:\r\n\r\n", None),
            (
                b"GET / HTTP/1.1\r\nX-API-Keys: no\r\nX-API-Ke: no\r\n\r\n",
                None,
            ),
            (b"GET / HTTP/1.1\r\nX-API-Key : no\r\n\r\n", None),
            (b"GET / HTTP/1.1\nX-API-Key: lf\n\n", Some(b"lf")),
            (b"POST /v1 HTTP/1.1\r\nX-API-Key: a b\r\n\r\n", Some(b"a b")),
            // After the headers: the body is not read.
            (b"GET / HTTP/1.1\r\n\r\nX-API-Key: body\r\n", None),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None),
        ];
        for (request, expected) in cases {
            assert_eq!(
                key(request),
                *expected,
                "{:?}",
                core::str::from_utf8(request)
            );
        }
        assert_eq!(scan(b"\x16\x03\x01", &headers()), Scan::NotHttp);
        assert_eq!(scan(b"get / HTTP/1.1\r\n", &headers()), Scan::NotHttp);
    }

    #[test]
    fn the_window_bounds_what_is_read() {
        let pad = |n: usize| {
            let mut r = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
            r.resize(n, b'p');
            r.extend_from_slice(b"\r\n");
            r
        };
        // A key line that ends on the window's last byte counts.
        let mut at_end = pad(WINDOW - b"X-API-Key: k\r\n".len() - 2);
        at_end.extend_from_slice(b"X-API-Key: k\r\n");
        assert_eq!(at_end.len(), WINDOW);
        assert_eq!(key(&at_end), Some(&b"k"[..]));
        // Two bytes further, the line's end is beyond the window: no key.
        let mut past = pad(WINDOW - b"X-API-Key: k\r\n".len());
        past.extend_from_slice(b"X-API-Key: k\r\n");
        assert_eq!(key(&past), None);
        // A 4 KiB key does not fit.
        let mut long = b"GET / HTTP/1.1\r\nX-API-Key: ".to_vec();
        long.resize(4096, b'k');
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(key(&long), None);
    }

    #[test]
    fn header_names_are_checked() {
        assert!(KeyHeaders::new(&[b"x api key"]).is_err());
        assert!(KeyHeaders::new(&[b""]).is_err());
        assert!(KeyHeaders::new(&[b"a", b"b", b"c"]).is_err());
        assert!(KeyHeaders::new(&[&[b'a'; 33]]).is_err());
    }

    /// The key an HTTP parser finds: the first configured header present, its first line,
    /// trimmed; for Authorization, a Bearer token.
    fn oracle(request: &[u8]) -> Option<Option<Vec<u8>>> {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut fields);
        match parsed.parse(request) {
            Ok(httparse::Status::Complete(len)) if len <= WINDOW => {}
            _ => return None,
        }
        for name in ["x-api-key", "authorization"] {
            // A header's first line.
            let Some(field) = parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            let value = field.value.trim_ascii();
            let value = if name == "authorization" {
                match value.split_first_chunk::<7>() {
                    Some((scheme, rest))
                        if scheme[..6].eq_ignore_ascii_case(b"bearer") && scheme[6] == b' ' =>
                    {
                        rest.trim_ascii()
                    }
                    _ => continue,
                }
            } else {
                value
            };
            if !value.is_empty() {
                return Some(Some(value.to_vec()));
            }
        }
        Some(None)
    }

    fn name_case(name: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<bool>(), name.len()).prop_map(move |upper| {
            name.chars()
                .zip(upper)
                .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
                .collect()
        })
    }

    fn field() -> impl Strategy<Value = String> {
        let token = "[A-Za-z0-9._~+/=-]{0,40}";
        prop_oneof![
            (name_case("x-api-key"), " {0,3}", token, " {0,2}")
                .prop_map(|(n, s, v, t)| format!("{n}:{s}{v}{t}")),
            (
                name_case("authorization"),
                " {0,2}",
                "(?i:bearer|basic)",
                " {1,3}",
                token
            )
                .prop_map(|(n, s, scheme, sp, v)| format!("{n}:{s}{scheme}{sp}{v}")),
            ("[A-Za-z-]{1,20}", "[ -~]{0,60}").prop_map(|(n, v)| format!("{n}: {v}")),
        ]
    }

    proptest! {
        /// Never another key than an HTTP parser finds, on requests it parses.
        #[test]
        fn agrees_with_an_http_parser(
            method in "(GET|POST|PUT|DELETE|OPTIONS)",
            fields in proptest::collection::vec(field(), 0..8),
            lf_only in any::<bool>(),
        ) {
            let eol = if lf_only { "\n" } else { "\r\n" };
            let mut request = format!("{method} /v1/x HTTP/1.1{eol}Host: gw{eol}");
            for f in &fields {
                request.push_str(f);
                request.push_str(eol);
            }
            request.push_str(eol);
            let request = request.into_bytes();
            if let Some(expected) = oracle(&request) {
                prop_assert_eq!(key(&request).map(<[u8]>::to_vec), expected);
            }
        }

        /// A word at a time, the same answer as a byte at a time.
        #[test]
        fn words_agree_with_bytes(
            fields in proptest::collection::vec(field(), 0..8),
            junk in proptest::collection::vec(any::<u8>(), 0..40),
            cut in 0usize..600,
        ) {
            let mut request = b"GET /v1/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
            for f in &fields {
                request.extend_from_slice(f.as_bytes());
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(&junk);
            request.extend_from_slice(b"\r\n\r\n");
            request.truncate(cut.max(1).min(request.len()));
            prop_assert_eq!(scan_words(&request, &headers()), scan(&request, &headers()));
        }

        /// Mangled bytes never make it panic, and a key it reports lies inside the request.
        #[test]
        fn any_bytes_are_safe(bytes in proptest::collection::vec(any::<u8>(), 0..300), cut in 0usize..300) {
            let mut request = b"GET / HTTP/1.1\r\nX-API-Key: abc\r\n".to_vec();
            request.truncate(cut.min(request.len()));
            request.extend_from_slice(&bytes);
            if let Scan::Key(span) = scan(&request, &headers()) {
                prop_assert!(span.len > 0 && (span.start + span.len) as usize <= request.len());
            }
        }
    }
}
