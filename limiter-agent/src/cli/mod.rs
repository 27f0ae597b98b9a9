//! The operator's commands; each talks to the agent through one [`ApiClient`].

pub mod detach;
pub mod fleet;
pub mod inspect;
pub mod keys;
pub mod list;
pub mod overrides;
pub mod quota;
pub mod reload;
pub mod reset;
mod status;
mod table;
pub mod top;
pub mod usage;

use crate::api::{ErrorCode, DEFAULT_API_SOCKET};
use crate::client::{ApiClient, ClientError};
use crate::exit::Failure;
use std::path::PathBuf;

pub use inspect::InspectArgs;
pub use list::ListArgs;
pub use reset::ResetArgs;

/// What every command that talks to the agent takes.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Unix socket of the agent's API.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_API_SOCKET, env = "LIMITER_API_SOCKET")]
    pub api_socket: PathBuf,
    /// Machine-readable JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ApiArgs {
    fn client(&self) -> ApiClient {
        ApiClient::new(&self.api_socket)
    }
}

pub async fn status(args: ApiArgs) -> Result<(), Failure> {
    status::run(args).await
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text =
        serde_json::to_string_pretty(value).map_err(|err| Failure::Other(err.to_string()))?;
    println!("{text}");
    Ok(())
}

impl From<ClientError> for Failure {
    /// The exit status follows the agent's error code.
    fn from(err: ClientError) -> Failure {
        match err {
            ClientError::NoAgent(_)
            | ClientError::PermissionDenied(_)
            | ClientError::Timeout(_) => Failure::Unreachable(err.to_string()),
            ClientError::Refused { code, message } => match code {
                ErrorCode::BadRequest | ErrorCode::AmbiguousKey => Failure::Usage(message),
                ErrorCode::NotTracked => Failure::NotTracked(message),
                ErrorCode::NoSuchOverride | ErrorCode::NoSuchKey => {
                    Failure::NothingToRemove(message)
                }
                ErrorCode::ReloadRefused
                | ErrorCode::Capacity
                | ErrorCode::Internal
                | ErrorCode::Unknown => Failure::Other(message),
            },
            other => Failure::Other(other.to_string()),
        }
    }
}

/// Validates a CIDR on the command line before anything is sent (overrides: source addresses
/// only).
fn parse_cidr(text: &str) -> Result<limiter_common::key::Prefix, Failure> {
    text.parse()
        .map_err(|err: limiter_common::key::PrefixError| Failure::Usage(err.to_string()))
}

/// Validates a KEY on the command line before anything is sent: an address or prefix, or
/// `key:NAME` / `key:FINGERPRINT` of an API key (which the agent resolves).
fn parse_key(text: &str) -> Result<String, Failure> {
    if let Some(rest) = text.strip_prefix("key:") {
        if rest.is_empty() {
            return Err(Failure::Usage(
                "key: needs a name or a fingerprint, such as key:acme".to_owned(),
            ));
        }
        return Ok(text.to_owned());
    }
    text.parse()
        .map(|p: limiter_common::key::Prefix| p.to_string())
        .map_err(|err: limiter_common::key::PrefixError| {
            Failure::Usage(format!(
                "{err}; or key:NAME / key:FINGERPRINT for an API key"
            ))
        })
}
