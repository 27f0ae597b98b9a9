//! The request scanner: a round at a time over the buffer (see the module above).

use super::words::{self, first, first_bytes, last, load, HIGHS};
use super::{KeyHeaders, Scan, Span, BUFFER, MAX_KEY_HEADERS, WINDOW};

/// Length of a request method at most (`OPTIONS`, `PROPFIND` …).
const MAX_METHOD: u32 = 16;
/// Words a round reads at most while it looks for a line feed.
const WORDS_PER_ROUND: u32 = 8;

/// `Bearer` and its space, as a word pattern.
const BEARER: (u64, u64, u64) = words::pattern(b"bearer ");
const BEARER_LEN: u32 = 7;
/// `HTTP/1.` as a word pattern (the version's last digit is checked on its own).
const HTTP1: (u64, u64, u64) = words::pattern(b"HTTP/1.");

/// Where the scanner is.
mod mode {
    /// The method: uppercase letters up to a space.
    pub const METHOD: u32 = 0;
    /// Looking for the request line's end (then its version is checked).
    pub const REQUEST_LINE: u32 = 1;
    /// Looking for the end of a header line not read.
    pub const LINE: u32 = 2;
    /// Whitespace (and for Authorization the `Bearer` scheme) before a key header's value.
    pub const VALUE_START: u32 = 3;
    /// A key header's value, up to the line's end.
    pub const VALUE: u32 = 4;
    /// Nothing more to read: the headers ended, or were cut, or this is not HTTP.
    pub const DONE: u32 = 5;
}

/// `Scanner::flags`: the bytes are not an HTTP/1.x request.
const NOT_HTTP: u32 = 1;
/// `Scanner::flags`: the Bearer scheme of the current value was read.
const SCHEME_READ: u32 = 2;

/// The scanner's state (in the XDP program it lives in per-CPU scratch beside the buffer). Feed
/// it rounds with [`Scanner::round`] until it says it is done, then ask [`Scanner::finish`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Scanner {
    /// Where the next round reads.
    cursor: u32,
    /// Bytes of request in the buffer (at most [`WINDOW`]).
    len: u32,
    mode: u32,
    flags: u32,
    /// The key header whose value is being read, where it starts, and where its last
    /// non-whitespace byte ends.
    header: u32,
    start: u32,
    end: u32,
    /// A bit per key header whose first line was read.
    seen: u32,
    /// The value of each key header's first line (`len` 0: none, or an empty or unusable one).
    found: [Span; MAX_KEY_HEADERS],
}

impl Scanner {
    /// A scanner for `len` bytes of request at the buffer's start (more than [`WINDOW`] are
    /// taken as [`WINDOW`]).
    pub fn new(len: u32) -> Scanner {
        Scanner {
            cursor: 0,
            len: if len as usize > WINDOW {
                WINDOW as u32
            } else {
                len
            },
            mode: mode::METHOD,
            flags: 0,
            header: 0,
            start: 0,
            end: 0,
            seen: 0,
            found: [Span::default(); MAX_KEY_HEADERS],
        }
    }

    /// One round; whether more rounds are wanted. Every round but the last moves the cursor
    /// forward, so [`WINDOW`] + 1 rounds always end the scan.
    #[inline(always)]
    pub fn round(&mut self, headers: &KeyHeaders, bytes: &[u8; BUFFER]) -> bool {
        match self.mode {
            mode::METHOD => self.method(bytes),
            mode::REQUEST_LINE | mode::LINE => self.seek_line_end(headers, bytes),
            mode::VALUE_START => self.value_start(headers, bytes),
            mode::VALUE => self.value(bytes),
            _ => self.mode = mode::DONE,
        }
        self.mode != mode::DONE
    }

    /// The answer, from the rounds so far.
    pub fn finish(&self) -> Scan {
        if self.flags & NOT_HTTP != 0 {
            return Scan::NotHttp;
        }
        for span in self.found {
            if span.len != 0 {
                return Scan::Key(span);
            }
        }
        Scan::NoKey
    }

    fn done(&mut self) {
        self.mode = mode::DONE;
    }

    fn not_http(&mut self) {
        self.flags |= NOT_HTTP;
        self.mode = mode::DONE;
    }

    /// The method: 1 to 16 uppercase letters, then a space.
    #[inline(always)]
    fn method(&mut self, bytes: &[u8; BUFFER]) {
        for i in 0..=MAX_METHOD {
            if i >= self.len {
                // Too short to tell: nothing to charge.
                return self.done();
            }
            let byte = bytes[i as usize];
            if byte == b' ' && i > 0 {
                self.cursor = i + 1;
                self.mode = mode::REQUEST_LINE;
                return;
            }
            if !byte.is_ascii_uppercase() {
                break;
            }
        }
        self.not_http()
    }

    /// Looks for the line feed that ends the current line, a few words on; past line starts
    /// that need nothing more (a header not read), it goes on within the same round.
    #[inline(always)]
    fn seek_line_end(&mut self, headers: &KeyHeaders, bytes: &[u8; BUFFER]) {
        let mut at = self.cursor;
        for _ in 0..WORDS_PER_ROUND {
            if at >= self.len {
                // The line goes on past what we have: the headers are cut here.
                return self.done();
            }
            let word = load(bytes, at, 0);
            let feeds = words::eq(word, b'\n') & first_bytes(self.len - at);
            if feeds == 0 {
                at += 8;
                continue;
            }
            self.line_end(headers, bytes, at + first(feeds));
            if self.mode != mode::LINE {
                return;
            }
            at = self.cursor;
        }
        self.cursor = at;
    }

    /// The line feed at `feed` ends a line: checks the request line's version, then looks at
    /// the next line.
    #[inline(always)]
    fn line_end(&mut self, headers: &KeyHeaders, bytes: &[u8; BUFFER], feed: u32) {
        if self.mode == mode::REQUEST_LINE && !is_http1(bytes, feed) {
            return self.not_http();
        }
        let line = feed + 1;
        if line >= self.len {
            return self.done();
        }
        let word = load(bytes, line, 0);
        let (c0, c1) = (word as u8, (word >> 8) as u8);
        // The blank line: the headers end.
        if c0 == b'\n' || (c0 == b'\r' && c1 == b'\n' && line + 1 < self.len) {
            return self.done();
        }
        for i in 0..MAX_KEY_HEADERS {
            if (i as u32) < headers.count
                && self.seen & (1 << i) == 0
                && headers.starts_line(i, bytes, line, self.len)
            {
                // Only a header's first line is read (as a gateway reads it).
                self.seen |= 1 << i;
                self.header = i as u32;
                self.cursor = line + headers.name_len(i);
                self.flags &= !SCHEME_READ;
                self.mode = mode::VALUE_START;
                return;
            }
        }
        self.cursor = line;
        self.mode = mode::LINE;
    }

    /// Whitespace before a value, and the `Bearer` scheme of an Authorization value.
    #[inline(always)]
    fn value_start(&mut self, headers: &KeyHeaders, bytes: &[u8; BUFFER]) {
        let at = self.cursor;
        if at >= self.len {
            return self.done();
        }
        let word = load(bytes, at, 0);
        let valid = first_bytes(self.len - at);
        let text = !(words::eq(word, b' ') | words::eq(word, b'\t')) & valid & HIGHS;
        if text == 0 {
            self.cursor = at + 8;
            return;
        }
        let index = first(text);
        let pos = at + index;
        let byte = (word >> (8 * index)) as u8;
        if byte == b'\r' || byte == b'\n' {
            // An empty value.
            self.cursor = pos;
            self.mode = mode::LINE;
            return;
        }
        if headers.is_bearer(self.header as usize & (MAX_KEY_HEADERS - 1))
            && self.flags & SCHEME_READ == 0
        {
            let (want, fold, care) = BEARER;
            if pos + BEARER_LEN <= self.len && words::matches(load(bytes, pos, 0), want, fold, care)
            {
                self.cursor = pos + BEARER_LEN;
                self.flags |= SCHEME_READ;
            } else {
                // Another scheme (Basic …): no key in this header.
                self.cursor = pos;
                self.mode = mode::LINE;
            }
            return;
        }
        self.start = pos;
        self.end = pos + 1;
        self.cursor = pos;
        self.mode = mode::VALUE;
    }

    /// A value's bytes up to the end of its line, trailing whitespace left out.
    #[inline(always)]
    fn value(&mut self, bytes: &[u8; BUFFER]) {
        let at = self.cursor;
        if at >= self.len {
            // The value goes on past what we have: no key from it.
            return self.done();
        }
        let word = load(bytes, at, 0);
        let valid = first_bytes(self.len - at);
        let ends = (words::eq(word, b'\r') | words::eq(word, b'\n')) & valid;
        let before = if ends != 0 {
            first_bytes(first(ends))
        } else {
            valid
        };
        let text = !(words::eq(word, b' ') | words::eq(word, b'\t')) & before & HIGHS;
        if text != 0 {
            self.end = at + last(text) + 1;
        }
        if ends == 0 {
            self.cursor = at + 8;
            return;
        }
        let header = self.header as usize & (MAX_KEY_HEADERS - 1);
        self.found[header] = Span {
            start: self.start,
            len: self.end - self.start,
        };
        if header == 0 {
            // The first header of the list wins: nothing later can change the answer.
            return self.done();
        }
        self.cursor = at + first(ends);
        self.mode = mode::LINE;
    }
}

/// Whether the request line that ends with the line feed at `feed` ends with ` HTTP/1.x`
/// (and a carriage return before the feed, or not).
#[inline(always)]
fn is_http1(bytes: &[u8; BUFFER], feed: u32) -> bool {
    let mut end = feed;
    if end >= 1 && load(bytes, end - 1, 0) as u8 == b'\r' {
        end -= 1;
    }
    // `M / HTTP/1.1`: a method, a space, a target, a space, the version.
    if end < 12 {
        return false;
    }
    let (want, fold, care) = HTTP1;
    let version = load(bytes, end - 8, 0);
    let digit = (version >> 56) as u8;
    let space = load(bytes, end - 9, 0) as u8;
    // The version is case-sensitive: the pattern's letters without folding, uppercase.
    words::matches(version, want & !fold, 0, care) && digit.is_ascii_digit() && space == b' '
}

/// Scans the first [`WINDOW`] bytes of `request` (the agent's and the tests' way; the XDP
/// program drives [`Scanner::round`] from `bpf_loop`).
pub fn scan(request: &[u8], headers: &KeyHeaders) -> Scan {
    let mut bytes = [0u8; BUFFER];
    let len = request.len().min(WINDOW);
    bytes[..len].copy_from_slice(&request[..len]);
    let mut scanner = Scanner::new(len as u32);
    for _ in 0..=WINDOW {
        if !scanner.round(headers, &bytes) {
            break;
        }
    }
    scanner.finish()
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
            (b"GET / HTTP/1.1\r\nAuthorization: Bearer \r\n\r\n", None),
            // The configured order wins, not the request's.
            (
                b"GET / HTTP/1.1\r\nAuthorization: Bearer b\r\nX-API-Key: a\r\n\r\n",
                Some(b"a"),
            ),
            (
                b"GET / HTTP/1.1\r\nAuthorization: Bearer b\r\nHost: x\r\n\r\n",
                Some(b"b"),
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
            (b"GET / HTTP/1.1\r\nX-API-Key:   \t \r\n\r\n", None),
            (
                b"GET / HTTP/1.1\r\nX-API-Keys: no\r\nX-API-Ke: no\r\n\r\n",
                None,
            ),
            (b"GET / HTTP/1.1\r\nX-API-Key : no\r\n\r\n", None),
            (b"GET / HTTP/1.1\nX-API-Key: lf\n\n", Some(b"lf")),
            (b"POST /v1 HTTP/1.1\r\nX-API-Key: a b\r\n\r\n", Some(b"a b")),
            (
                b"GET / HTTP/1.0\r\nX-API-Key: aaaaaaaabbbbbbbbccccccccdd\t \r\n",
                Some(b"aaaaaaaabbbbbbbbccccccccdd"),
            ),
            // After the headers: the body is not read.
            (b"GET / HTTP/1.1\r\n\r\nX-API-Key: body\r\n", None),
            // Cut in the key's line: no key.
            (b"GET / HTTP/1.1\r\nX-API-Key: cut", None),
            // Pipelined: the first request's key.
            (
                b"GET /a HTTP/1.1\r\nX-API-Key: first\r\n\r\nGET /b HTTP/1.1\r\nX-API-Key: second\r\n\r\n",
                Some(b"first"),
            ),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", None),
        ];
        for (request, expected) in cases {
            assert_eq!(
                key(request),
                *expected,
                "{:?}",
                String::from_utf8_lossy(request)
            );
        }
        for not_http in [
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            b"get / HTTP/1.1\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET /\r\n\r\n",
            b"HELLO WORLD this is a body\r\nX-API-Key: k\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert_eq!(scan(not_http, &headers()), Scan::NotHttp, "{not_http:?}");
        }
        assert_eq!(scan(b"", &headers()), Scan::NoKey);
        assert_eq!(scan(b"GET / HTT", &headers()), Scan::NoKey);
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
        // Its value ending on the last byte, without the line's end: cut.
        assert_eq!(key(&at_end[..WINDOW - 2]), None);
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
        assert!(KeyHeaders::new(&[b"X-Key", b"x-key"]).is_err());
        let long = [b'a'; 32];
        let headers = KeyHeaders::new(&[&long]).unwrap();
        let mut request = b"GET / HTTP/1.1\r\n".to_vec();
        request.extend_from_slice(&long);
        request.extend_from_slice(b": k32\r\n\r\n");
        assert_eq!(
            scan(&request, &headers),
            Scan::Key(Span { start: 50, len: 3 })
        );
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
            (name_case("x-api-key"), "[ \t]{0,3}", token, "[ \t]{0,2}")
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
            target in "/[a-z0-9/]{0,30}",
            fields in proptest::collection::vec(field(), 0..8),
            lf_only in any::<bool>(),
        ) {
            let eol = if lf_only { "\n" } else { "\r\n" };
            let mut request = format!("{method} {target} HTTP/1.1{eol}Host: gw{eol}");
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

        /// Cut anywhere, a request gives a key only from a whole line: the key's bytes are
        /// followed, after whitespace, by the line's end within the cut.
        #[test]
        fn a_cut_request_gives_only_whole_values(
            fields in proptest::collection::vec(field(), 0..8),
            cut in 0usize..600,
        ) {
            let mut request = b"GET /v1/x HTTP/1.1\r\nHost: gw\r\n".to_vec();
            for f in &fields {
                request.extend_from_slice(f.as_bytes());
                request.extend_from_slice(b"\r\n");
            }
            request.extend_from_slice(b"\r\n");
            let cut = &request[..cut.min(request.len())];
            if let Scan::Key(span) = scan(cut, &headers()) {
                let after = &cut[(span.start + span.len) as usize..];
                let rest = after.iter().find(|b| **b != b' ' && **b != b'\t');
                prop_assert!(matches!(rest, Some(b'\r' | b'\n')), "{:?}", String::from_utf8_lossy(cut));
            }
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
