//! Exit statuses of the `limiter` command, so scripts can tell failures apart.

use std::process::ExitCode;

/// Documented in `limiter --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0  success
  1  the operation failed (the message says why)
  2  bad usage: unknown flag, malformed KEY or CIDR, a KEY that selects several keys for inspect
  3  no agent reachable on the API socket (not running, permission denied, or no answer in 10 s)
  4  the KEY is not tracked
  5  there is nothing of that name to remove (overrides rm CIDR, keys rm NAME)";

/// Why a command failed, by exit status.
#[derive(Debug)]
pub enum Failure {
    Other(String),
    Usage(String),
    Unreachable(String),
    NotTracked(String),
    /// Nothing of that name to remove: an override (`overrides rm`), a key (`keys rm`).
    NothingToRemove(String),
}

impl Failure {
    pub fn report(self) -> ExitCode {
        let (code, message) = match self {
            Failure::Other(m) => (1, m),
            Failure::Usage(m) => (2, m),
            Failure::Unreachable(m) => (3, m),
            Failure::NotTracked(m) => (4, m),
            Failure::NothingToRemove(m) => (5, m),
        };
        eprintln!("error: {message}");
        ExitCode::from(code)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Failure {
        Failure::Other(format!("{err:#}"))
    }
}
