use super::{parse_key, print_json, ApiArgs};
use crate::api::{ResetRequest, ResetResponse, RESET_PATH};
use crate::exit::Failure;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["keys", "exhausted", "all"])))]
pub struct ResetArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Addresses or prefixes (every tracked key they overlap gets a full bucket), or API keys:
    /// key:NAME, key:FINGERPRINT.
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
    /// Every key that is exhausted right now.
    #[arg(long)]
    pub exhausted: bool,
    /// Every tracked key.
    #[arg(long)]
    pub all: bool,
    /// Give API keys their whole quota back for this window, instead of a full bucket (keys
    /// without a quota are left alone).
    #[arg(long)]
    pub quota: bool,
}

pub async fn run(args: ResetArgs) -> Result<(), Failure> {
    let keys = args
        .keys
        .iter()
        .map(|k| parse_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let request = ResetRequest {
        keys,
        exhausted: args.exhausted,
        all: args.all,
        quota: args.quota,
    };
    let answer: ResetResponse = args.api.client().post(RESET_PATH, &request).await?;
    if args.api.json {
        return print_json(&answer);
    }
    let noun = if answer.reset == 1 { "key" } else { "keys" };
    if args.quota {
        println!(
            "gave {} {noun} the whole quota back for this window",
            answer.reset
        );
    } else {
        println!("reset {} {noun} to a full bucket", answer.reset);
    }
    for key in &answer.not_tracked {
        eprintln!("note: {key} is not tracked; nothing to reset");
    }
    Ok(())
}
