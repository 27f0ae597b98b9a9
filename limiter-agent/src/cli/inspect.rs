use super::{parse_key, print_json, table, ApiArgs};
use crate::api::{InspectQuery, KeyInfo, INSPECT_PATH};
use crate::exit::Failure;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// An address (198.18.1.7, 2001:2::5) or a prefix (198.18.1.0/24) selecting one tracked key.
    pub key: String,
}

pub async fn run(args: InspectArgs) -> Result<(), Failure> {
    let key = parse_key(&args.key)?;
    let query = InspectQuery {
        key: key.to_string(),
    };
    let info: KeyInfo = args.api.client().get(INSPECT_PATH, &query).await?;
    if args.api.json {
        return print_json(&info);
    }
    let rows = [
        ("key", info.key.clone()),
        ("rule", info.rule.clone()),
        ("rate", format!("{}/s", info.rate)),
        ("burst", info.burst.to_string()),
        ("remaining", info.remaining.to_string()),
        ("exhausted", table::yes_no(info.exhausted).to_owned()),
        ("retry after", table::retry_after(info.retry_after_ms)),
        ("passed", info.passed.to_string()),
        ("dropped", info.dropped.to_string()),
        (
            "would drop",
            format!(
                "{} (over the limit, let through by dry run)",
                info.would_drop
            ),
        ),
    ];
    for (name, value) in rows {
        println!("{name:<13}{value}");
    }
    Ok(())
}
