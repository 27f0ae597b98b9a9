//! What a KEY of the command line and the API names: a source address or prefix, or an API
//! key by `key:NAME` or `key:FINGERPRINT`.

use super::api_keys::{check_key_name, is_fingerprint};
use super::datapath::ApiView;
use super::error::AgentError;
use crate::api::ErrorCode;
use limiter_common::key::Prefix;

/// An address or prefix.
pub fn parse_key(text: &str) -> Result<Prefix, AgentError> {
    text.parse()
        .map_err(|err: limiter_common::key::PrefixError| AgentError::bad_request(err.to_string()))
}

/// What a KEY on the command line names.
#[derive(Clone, Debug)]
pub enum Selector {
    /// A source address or prefix.
    Source(Prefix),
    /// `key:NAME` of a registered key: its token hash.
    ApiKey(String, u64),
    /// `key:FINGERPRINT` (or its start): lowercase hex digits.
    Fingerprint(String),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Source(prefix) => write!(f, "{prefix}"),
            Selector::ApiKey(name, _) => write!(f, "key:{name}"),
            Selector::Fingerprint(start) => write!(f, "key:{start}"),
        }
    }
}

/// A KEY: a source address or prefix, or `key:NAME` / `key:FINGERPRINT` for an API key.
pub fn parse_selector(text: &str, api: &ApiView) -> Result<Selector, AgentError> {
    let Some(rest) = text.strip_prefix("key:") else {
        return parse_key(text).map(Selector::Source);
    };
    if let Some(hash) = api.hash_of(rest) {
        return Ok(Selector::ApiKey(rest.to_owned(), hash));
    }
    if is_fingerprint(rest) {
        return Ok(Selector::Fingerprint(rest.to_ascii_lowercase()));
    }
    match check_key_name(rest) {
        Ok(()) => Err(AgentError::new(
            ErrorCode::NotTracked,
            format!("no key is registered as '{rest}' (see `limiter keys`)"),
        )),
        Err(_) => Err(AgentError::bad_request(format!(
            "{text:?} is not a KEY: key:NAME of a registered key, key:FINGERPRINT (4 to 16 hex \
             digits), or an address or prefix such as 198.18.1.7 or 2001:2::/64"
        ))),
    }
}
