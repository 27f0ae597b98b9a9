//! Finding the API key in an HTTP/1.x request: the request scanner the XDP program runs over the
//! first bytes of a TCP segment, and the `429` it answers with.
//!
//! The scanner ([`Scanner`]) works on a window of the segment's payload copied into a buffer
//! ([`BUFFER`] bytes, of which at most [`WINDOW`] are the request's), a round at a time, so
//! that the XDP program can drive it from `bpf_loop` and the agent and the tests from a plain
//! loop. A round reads a few 8-byte words and looks for the next line feed with byte masks
//! ([`words`]); at each line start it compares the line with the key headers' names, a word at
//! a time. It keeps no pointer into the request: it answers with where the key lies ([`Span`]),
//! and the caller hashes those bytes ([`crate::keyhash`]).
//!
//! What it takes for a key, from the headers named in `[http] key_headers` (case-insensitive,
//! at most [`MAX_KEY_HEADERS`]): the field value with the whitespace around it trimmed; for
//! `Authorization`, only a `Bearer` token (the scheme case-insensitive, then a space). The first
//! header of the configured list that the request carries wins; of a header given twice, its
//! first line. A request whose key line ends beyond the window or the segment is taken as having
//! no key; bytes that do not start like an HTTP/1.x request line (`METHOD SP … SP HTTP/1.x`:
//! a TLS ClientHello, h2c frames, a body segment) are [`Scan::NotHttp`].

mod answer;
mod scanner;
pub mod words;

pub use answer::*;
pub use scanner::{scan, Scanner};

/// Bytes of a request scanned at most.
pub const WINDOW: usize = 2048;
/// Bytes after the window that a word read may touch (they are never taken for the request's).
pub const SLACK: usize = 64;
/// The scanning buffer: the window and its slack.
pub const BUFFER: usize = WINDOW + SLACK;
/// Key headers at most (`x-api-key`, `authorization` …). A power of two: indexes are masked.
pub const MAX_KEY_HEADERS: usize = 2;
/// Length of a key header's name at most.
pub const MAX_HEADER_NAME: usize = 32;
/// Words of a header name and its colon (33 bytes at most).
const NAME_WORDS: usize = MAX_HEADER_NAME.div_ceil(8) + 1;

/// The header whose value is a credential with a scheme: only a `Bearer` token is a key.
const AUTHORIZATION: &[u8] = b"authorization";

/// The names of the headers that carry the key, in order of precedence, as word patterns
/// ([`words::matches`]): each name, lowercase, and its colon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHeaders {
    want: [[u64; NAME_WORDS]; MAX_KEY_HEADERS],
    fold: [[u64; NAME_WORDS]; MAX_KEY_HEADERS],
    care: [[u64; NAME_WORDS]; MAX_KEY_HEADERS],
    /// Bytes of each name with its colon.
    lens: [u32; MAX_KEY_HEADERS],
    count: u32,
    /// A bit per header that is `Authorization` (its key is a Bearer token).
    bearer: u32,
}

impl KeyHeaders {
    /// No header: a configuration without `[http]`.
    pub const NONE: KeyHeaders = KeyHeaders {
        want: [[0; NAME_WORDS]; MAX_KEY_HEADERS],
        fold: [[0; NAME_WORDS]; MAX_KEY_HEADERS],
        care: [[0; NAME_WORDS]; MAX_KEY_HEADERS],
        lens: [0; MAX_KEY_HEADERS],
        count: 0,
        bearer: 0,
    };

    /// Checks and stores header names (a token each: letters, digits, `-` …; any case).
    pub fn new(names: &[&[u8]]) -> Result<KeyHeaders, &'static str> {
        if names.is_empty() || names.len() > MAX_KEY_HEADERS {
            return Err("one or two key headers");
        }
        let mut headers = KeyHeaders::NONE;
        headers.count = names.len() as u32;
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_HEADER_NAME {
                return Err("a header name of 1 to 32 characters");
            }
            if !name.iter().all(|b| is_token(*b)) {
                return Err("a header name of letters, digits and -!#$%&'*+.^_`|~ only");
            }
            if names[..i].iter().any(|n| n.eq_ignore_ascii_case(name)) {
                return Err("each header name once");
            }
            let mut text = [0u8; NAME_WORDS * 8];
            text[..name.len()].copy_from_slice(name);
            text[name.len()] = b':';
            let len = name.len() + 1;
            for (j, chunk) in text.chunks(8).enumerate() {
                let used = len.saturating_sub(j * 8).min(8);
                let (want, fold, care) = words::pattern(&chunk[..used]);
                headers.want[i][j] = want;
                headers.fold[i][j] = fold;
                headers.care[i][j] = care;
            }
            headers.lens[i] = len as u32;
            if name.eq_ignore_ascii_case(AUTHORIZATION) {
                headers.bearer |= 1 << i;
            }
        }
        Ok(headers)
    }

    /// How many headers are configured (0: none, API keys are off).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether the line at `at` (with `len` bytes of request in `bytes`) starts with header
    /// `i`'s name and colon.
    #[inline(always)]
    fn starts_line(&self, i: usize, bytes: &[u8; BUFFER], at: u32, len: u32) -> bool {
        let i = i & (MAX_KEY_HEADERS - 1);
        let name_len = self.lens[i];
        if at + name_len > len {
            return false;
        }
        for j in 0..NAME_WORDS {
            if (j as u32) * 8 >= name_len {
                break;
            }
            let word = words::load(bytes, at, j * 8);
            if !words::matches(word, self.want[i][j], self.fold[i][j], self.care[i][j]) {
                return false;
            }
        }
        true
    }

    #[inline(always)]
    fn name_len(&self, i: usize) -> u32 {
        self.lens[i & (MAX_KEY_HEADERS - 1)]
    }

    #[inline(always)]
    fn is_bearer(&self, i: usize) -> bool {
        self.bearer & (1 << i) != 0
    }
}

/// Where the key lies in the request: `len` bytes from `start` (`len` 0: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

/// What a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    Key(Span),
    NoKey,
    NotHttp,
}

/// A token character of a header name (RFC 9110 §5.6.2).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether a segment's payload starts like a TLS handshake record (a ClientHello on a port
/// configured for cleartext HTTP): content type 22, version 3.x.
#[inline(always)]
pub fn is_tls_handshake(first: u8, second: u8) -> bool {
    first == 0x16 && second == 0x03
}
