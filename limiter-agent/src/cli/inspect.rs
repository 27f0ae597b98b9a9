use super::{parse_key, print_json, table, ApiArgs};
use crate::api::{InspectQuery, KeyInfo, QuotaInfo, INSPECT_PATH};
use crate::exit::Failure;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// An address (198.18.1.7, 2001:2::5) or a prefix (198.18.1.0/24) selecting one tracked key,
    /// or an API key: key:NAME (registered), key:FINGERPRINT (or its first hex digits).
    pub key: String,
}

pub async fn run(args: InspectArgs) -> Result<(), Failure> {
    let query = InspectQuery {
        key: parse_key(&args.key)?,
    };
    let info: KeyInfo = args.api.client().get(INSPECT_PATH, &query).await?;
    if args.api.json {
        return print_json(&info);
    }
    let mut rows = vec![("key", info.key.clone())];
    let dropped = match &info.api_key {
        Some(api) => {
            rows.push((
                "name",
                api.name
                    .clone()
                    .unwrap_or_else(|| "(not registered)".into()),
            ));
            rows.push(("fingerprint", api.fingerprint.clone()));
            rows.push((
                "plan",
                api.plan.clone().unwrap_or_else(|| "[http] default".into()),
            ));
            (
                "rejected",
                format!("{} (answered 429 Too Many Requests)", info.dropped),
            )
        }
        None => {
            rows.push(("rule", info.rule.clone()));
            ("dropped", info.dropped.to_string())
        }
    };
    rows.extend([
        ("rate", format!("{}/s", info.rate)),
        ("burst", info.burst.to_string()),
        ("remaining", info.remaining.to_string()),
        ("exhausted", table::yes_no(info.exhausted).to_owned()),
        ("retry after", table::retry_after(info.retry_after_ms)),
        ("passed", info.passed.to_string()),
        dropped,
        (
            "would drop",
            format!(
                "{} (over the limit, let through by dry run)",
                info.would_drop
            ),
        ),
    ]);
    if let Some(quota) = &info.quota {
        rows.extend(quota_rows(quota));
    }
    print_rows(&rows);
    Ok(())
}

/// A key's quota as `inspect` and `quota` show it.
pub fn quota_rows(quota: &QuotaInfo) -> Vec<(&'static str, String)> {
    let limit = match quota.added {
        0 => format!("{} a {} (UTC)", quota.limit, quota.period),
        added => format!(
            "{} a {} (UTC), {added} of it added this window",
            quota.limit, quota.period
        ),
    };
    vec![
        ("quota", limit),
        (
            "used",
            format!("{} ({} remaining)", quota.used, quota.remaining),
        ),
        ("resets at", quota.resets_at.clone()),
        (
            "exhausts at",
            quota
                .exhausts_at
                .clone()
                .unwrap_or_else(|| "not this window (at its recent rate)".to_owned()),
        ),
    ]
}

/// Prints `rows` as `inspect` does: a name column, then the value.
pub fn print_rows(rows: &[(&str, String)]) {
    for (name, value) in rows {
        println!("{name:<13}{value}");
    }
}
