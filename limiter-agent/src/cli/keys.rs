//! `limiter keys`: the API keys — tracked ones with their buckets, registering and forgetting
//! them. A token is read from standard input (never from the command line, where `ps` shows
//! it), sent to the agent over its socket, and hashed there; nothing prints it.

use super::{print_json, table, ApiArgs};
use crate::api::{
    AddApiKey, ApiKeyAdded, ApiKeyQuery, KeyInfo, KeyKind, ListQuery, API_KEYS_PATH, KEYS_PATH,
};
use crate::exit::Failure;
use std::io::{IsTerminal, Read};

/// Bytes of standard input read at most for a token.
const MAX_TOKEN_INPUT: u64 = 16 * 1024;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
A key that was never registered still has its own bucket, at the [http] default (rate, burst);
registering names it and can put it on a plan. Keys are shown by name, or by fingerprint (16 hex
digits derived from the token's keyed hash) when not registered; `limiter inspect key:NAME` and
`limiter reset key:NAME` (or key:FINGERPRINT) act on one.

Out of reach: TLS and h2c on the [http] ports pass untouched (counted as tls_handshakes, logged
once): point the ports at the cleartext leg behind the TLS terminator. A request whose key header
is not in the TCP segment that starts it (beyond its first 2 KiB, or in a later segment) is
treated as keyless, limited by its source alone.

Examples:
  printf '%s' \"$TOKEN\" | limiter keys add acme --plan pro
  limiter keys --exhausted
  limiter keys rm acme")]
pub struct KeysArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only keys whose next request would be answered with 429.
    #[arg(long)]
    pub exhausted: bool,
    #[command(subcommand)]
    pub command: Option<KeysCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Register a key under NAME; its token is read from standard input (one line; a trailing
    /// newline is taken off), never from the command line.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// 1 to 64 letters, digits, '-', '_', '.' or '@'.
        name: String,
        /// A `[[plans]]` name of the configuration (default: the `[http]` limit).
        #[arg(long, value_name = "PLAN")]
        plan: Option<String>,
        /// Refused: a token on the command line shows in `ps` and shell history.
        #[arg(hide = true, value_name = "TOKEN", num_args = 0..)]
        token_on_command_line: Vec<String>,
    },
    /// Forget a registered key: its requests fall back to the `[http]` default.
    Rm {
        #[command(flatten)]
        api: ApiArgs,
        name: String,
    },
}

pub async fn run(args: KeysArgs) -> Result<(), Failure> {
    match &args.command {
        None => list(&args).await,
        Some(KeysCommand::Add {
            api,
            name,
            plan,
            token_on_command_line,
        }) => {
            if !token_on_command_line.is_empty() {
                // Not echoed back: it is a secret.
                return Err(Failure::Usage(
                    "a token is read from standard input, never from the command line (`ps` \
                     and shell history would show it): printf '%s' \"$TOKEN\" | limiter keys add \
                     NAME"
                        .to_owned(),
                ));
            }
            let token = read_token(name)?;
            let request = AddApiKey {
                name: name.clone(),
                plan: plan.clone(),
                token,
            };
            let added: ApiKeyAdded = api.client().post(API_KEYS_PATH, &request).await?;
            if api.json {
                return print_json(&added);
            }
            println!(
                "registered key:{} (fingerprint {}) on {}",
                added.name,
                added.fingerprint,
                plan_name(added.plan.as_deref())
            );
            Ok(())
        }
        Some(KeysCommand::Rm { api, name }) => {
            let query = ApiKeyQuery { name: name.clone() };
            let removed: ApiKeyAdded = api.client().delete(API_KEYS_PATH, &query).await?;
            if api.json {
                return print_json(&removed);
            }
            println!(
                "forgot key:{}: its requests now get the [http] default (as key:{})",
                removed.name, removed.fingerprint
            );
            Ok(())
        }
    }
}

fn plan_name(plan: Option<&str>) -> String {
    match plan {
        Some(plan) => format!("plan {plan}"),
        None => "the [http] default".to_owned(),
    }
}

/// The token from standard input: asked for without echo on a terminal; else the input, one
/// trailing newline taken off.
fn read_token(name: &str) -> Result<String, Failure> {
    let token = if std::io::stdin().is_terminal() {
        rpassword::prompt_password(format!("token for {name} (not shown): "))
            .map_err(|e| Failure::Other(format!("reading the token: {e}")))?
    } else {
        let mut input = String::new();
        std::io::stdin()
            .take(MAX_TOKEN_INPUT)
            .read_to_string(&mut input)
            .map_err(|e| Failure::Usage(format!("reading the token from standard input: {e}")))?;
        let line = input
            .strip_suffix('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or(&input);
        line.to_owned()
    };
    if token.is_empty() {
        return Err(Failure::Usage(
            "no token on standard input: printf '%s' \"$TOKEN\" | limiter keys add NAME".to_owned(),
        ));
    }
    Ok(token)
}

async fn list(args: &KeysArgs) -> Result<(), Failure> {
    let query = ListQuery {
        exhausted: args.exhausted,
        top: None,
        sort: None,
        prefix: None,
        kind: Some(KeyKind::ApiKey),
    };
    let keys: Vec<KeyInfo> = args.api.client().get(KEYS_PATH, &query).await?;
    if args.api.json {
        return print_json(&keys);
    }
    if keys.is_empty() {
        println!(
            "{}",
            if args.exhausted {
                "no API key is exhausted"
            } else {
                "no API key is tracked (no request with a key yet, or no [http] in the config)"
            }
        );
        return Ok(());
    }
    let mut out = table::new_table(&[
        "KEY",
        "PLAN",
        "RATE",
        "BURST",
        "REMAINING",
        "EXHAUSTED",
        "RETRY",
        "PASSED",
        "REJECTED",
    ]);
    for k in &keys {
        let plan = k
            .api_key
            .as_ref()
            .and_then(|a| a.plan.clone())
            .unwrap_or_else(|| "[http]".to_owned());
        out.add_row(vec![
            k.key.clone(),
            plan,
            format!("{}/s", k.rate),
            k.burst.to_string(),
            k.remaining.to_string(),
            table::yes_no(k.exhausted).to_owned(),
            table::retry_after(k.retry_after_ms),
            table::count(k.passed),
            table::count(k.dropped),
        ]);
    }
    println!("{out}");
    Ok(())
}
