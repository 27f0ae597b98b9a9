use super::{table, ApiArgs};
use crate::api::{KeyInfo, KeyKind, ListQuery, SortBy, KEYS_PATH};
use crate::exit::Failure;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Only keys whose next packet would be dropped.
    #[arg(long)]
    pub exhausted: bool,
    /// Only the first N keys (after sorting).
    #[arg(long, value_name = "N")]
    pub top: Option<usize>,
    /// Order by: most dropped, or most passed (default: by key).
    #[arg(long, value_enum)]
    pub sort: Option<SortBy>,
    /// Only keys of this kind: source addresses, or API keys (see also `limiter keys`).
    #[arg(long, value_enum)]
    pub kind: Option<KeyKind>,
}

pub async fn run(args: ListArgs) -> Result<(), Failure> {
    let query = ListQuery {
        exhausted: args.exhausted,
        top: args.top,
        sort: args.sort,
        prefix: None,
        kind: args.kind,
    };
    if args.api.json {
        // Straight through: a million keys never sit in this process.
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        return Ok(args
            .api
            .client()
            .get_streamed(KEYS_PATH, &query, &mut out)
            .await?);
    }
    let keys: Vec<KeyInfo> = args.api.client().get(KEYS_PATH, &query).await?;
    if keys.is_empty() {
        println!(
            "{}",
            if args.exhausted {
                "no key is exhausted"
            } else {
                "no key is tracked"
            }
        );
        return Ok(());
    }
    // The dry-run column only when dry run let something through.
    let dry_run = keys.iter().any(|k| k.would_drop > 0);
    let mut header = vec![
        "KEY",
        "RULE",
        "RATE",
        "BURST",
        "REMAINING",
        "EXHAUSTED",
        "RETRY",
        "PASSED",
        "DROPPED",
    ];
    if dry_run {
        header.push("WOULD DROP");
    }
    let mut out = table::new_table(&header);
    for k in &keys {
        let mut row = vec![
            k.key.clone(),
            k.rule.clone(),
            format!("{}/s", k.rate),
            k.burst.to_string(),
            k.remaining.to_string(),
            table::yes_no(k.exhausted).to_owned(),
            table::retry_after(k.retry_after_ms),
            table::count(k.passed),
            table::count(k.dropped),
        ];
        if dry_run {
            row.push(table::count(k.would_drop));
        }
        out.add_row(row);
    }
    println!("{out}");
    Ok(())
}
