//! `limiter allow|deny|limit CIDR [--ttl]` and `limiter overrides [rm CIDR]`: runtime overrides
//! for incident response, above the configured rules.

use super::{parse_cidr, print_json, table, ApiArgs};
use crate::api::{
    Action, OverrideInfo, OverrideQuery, OverrideRemoved, OverrideRequest, MAX_TTL, OVERRIDES_PATH,
};
use crate::exit::Failure;
use std::time::Duration;

/// What `allow` and `deny` take.
#[derive(Debug, clap::Args)]
pub struct OverrideArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// The sources it applies to: an address or a prefix (198.18.1.0/24, 2001:2::/48).
    pub cidr: String,
    /// Lapse by itself after this long (30s, 10m, 2h …); without it, until `overrides rm`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,
}

/// What `limit` takes.
#[derive(Debug, clap::Args)]
pub struct LimitArgs {
    #[command(flatten)]
    pub common: OverrideArgs,
    /// Packets per second, per key.
    #[arg(long, value_name = "R", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Bucket depth, packets.
    #[arg(long, value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    pub burst: u64,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct OverridesArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(subcommand)]
    pub command: Option<OverridesCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum OverridesCommand {
    /// Remove the override of exactly this CIDR.
    Rm {
        #[command(flatten)]
        api: ApiArgs,
        cidr: String,
    },
}

pub async fn add(
    args: OverrideArgs,
    action: Action,
    limit: Option<(u64, u64)>,
) -> Result<(), Failure> {
    let cidr = parse_cidr(&args.cidr)?;
    if args.ttl.is_some_and(|ttl| ttl > MAX_TTL) {
        return Err(Failure::Usage(format!(
            "--ttl takes at most {}; without it, an override stays until `limiter overrides rm`",
            humantime::format_duration(MAX_TTL)
        )));
    }
    let request = OverrideRequest {
        cidr: cidr.to_string(),
        action,
        rate: limit.map(|l| l.0),
        burst: limit.map(|l| l.1),
        ttl_ms: args.ttl.map(|t| t.as_millis() as u64),
    };
    let info: OverrideInfo = args.api.client().post(OVERRIDES_PATH, &request).await?;
    if args.api.json {
        return print_json(&info);
    }
    println!(
        "{} {}: {}, in force now",
        action,
        info.cidr,
        describe(&info)
    );
    Ok(())
}

pub async fn run(args: OverridesArgs) -> Result<(), Failure> {
    match args.command {
        Some(OverridesCommand::Rm { api, cidr }) => {
            let cidr = parse_cidr(&cidr)?;
            let query = OverrideQuery {
                cidr: cidr.to_string(),
            };
            let answer: OverrideRemoved = api.client().delete(OVERRIDES_PATH, &query).await?;
            if api.json {
                return print_json(&answer);
            }
            println!("removed the override of {cidr}");
            Ok(())
        }
        None => {
            let list: Vec<OverrideInfo> = args.api.client().get(OVERRIDES_PATH, &()).await?;
            if args.api.json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no override is in force");
                return Ok(());
            }
            let mut out = table::new_table(&["CIDR", "ACTION", "LIMIT", "EXPIRES"]);
            for o in &list {
                out.add_row(vec![
                    o.cidr.clone(),
                    o.action.to_string(),
                    match (o.rate, o.burst) {
                        (Some(rate), Some(burst)) => format!("{rate}/s, burst {burst}"),
                        _ => "-".to_owned(),
                    },
                    expires(o.expires_in_ms),
                ]);
            }
            println!("{out}");
            Ok(())
        }
    }
}

fn describe(info: &OverrideInfo) -> String {
    let what = match (info.action, info.rate, info.burst) {
        (Action::Limit, Some(rate), Some(burst)) => format!("limited to {rate}/s, burst {burst}"),
        (Action::Allow, ..) => "never limited".to_owned(),
        _ => "every packet dropped".to_owned(),
    };
    format!("{what}, {}", expires(info.expires_in_ms))
}

fn expires(ms: Option<u64>) -> String {
    match ms {
        None => "until removed".to_owned(),
        Some(ms) => format!("expires in {}", table::duration(ms)),
    }
}
