//! `limiter quota KEY [--add N]`: an API key's quota this window, and a top-up of it.

use super::inspect::{print_rows, quota_rows};
use super::{parse_key, print_json, ApiArgs};
use crate::api::{InspectQuery, QuotaResponse, QuotaTopUpRequest, QUOTA_PATH};
use crate::exit::Failure;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  limiter quota key:acme             show its quota this window\n  \
limiter quota key:acme --add 5000  5000 more requests until the window ends"
)]
pub struct QuotaArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// An API key: key:NAME (registered), key:FINGERPRINT (or its first hex digits).
    pub key: String,
    /// Add N requests to the key's quota for this window (logged with who asked); the next
    /// window starts from the plan's quota again.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub add: Option<i64>,
}

pub async fn run(args: QuotaArgs) -> Result<(), Failure> {
    let key = parse_key(&args.key)?;
    if !key.starts_with("key:") {
        return Err(Failure::Usage(format!(
            "{key} is an address: only API keys (key:NAME, key:FINGERPRINT) have quotas"
        )));
    }
    let client = args.api.client();
    let (key, quota) = match args.add {
        Some(add) if add < 1 => {
            return Err(Failure::Usage(format!(
                "--add {add}: a top-up is a positive number of requests"
            )))
        }
        Some(add) => {
            let request = QuotaTopUpRequest {
                key,
                add: add as u64,
            };
            let answer: QuotaResponse = client.post(QUOTA_PATH, &request).await?;
            if args.api.json {
                return print_json(&answer);
            }
            println!(
                "added {add} requests to {}'s quota for this window",
                answer.key
            );
            (answer.key, answer.quota)
        }
        None => {
            let answer: QuotaResponse = client.get(QUOTA_PATH, &InspectQuery { key }).await?;
            if args.api.json {
                return print_json(&answer);
            }
            (answer.key, answer.quota)
        }
    };
    let mut rows = vec![("key", key)];
    rows.extend(quota_rows(&quota));
    print_rows(&rows);
    Ok(())
}
