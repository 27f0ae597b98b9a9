//! `limiter usage [KEY] [--since D] [--by P]`: passed and rejected per period, from the agent's
//! usage history — a bar per period for a person (80 columns), the series for a script.

use super::{parse_key, print_json, table, ApiArgs};
use crate::api::{UsageBy, UsageKind, UsageQuery, UsageSeries, USAGE_KEPT, USAGE_PATH};
use crate::exit::Failure;
use std::time::Duration;

/// Columns of the bars: the at, passed and rejected columns take 33, the rest fits in 80.
const BAR_WIDTH: usize = 44;
const PASSED_BAR: char = '█';
const REJECTED_BAR: char = '░';

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// An address or prefix (every recorded key inside it), or key:NAME / key:FINGERPRINT.
    /// Without it: the totals over all keys and the busiest keys.
    pub key: Option<String>,
    /// How far back: 90m, 24h, 7d … (at most 7d, as far as the history goes).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_since)]
    pub since: Duration,
    /// Sum per minute, hour or day (default: minute up to 3h, hour up to 3d, else day).
    #[arg(long, value_enum)]
    pub by: Option<UsageBy>,
    /// How many keys at most besides the totals (the busiest first).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

fn parse_since(text: &str) -> Result<Duration, String> {
    let since = humantime::parse_duration(text)
        .map_err(|err| format!("{err}: a duration such as 90m, 24h or 7d"))?;
    if since.is_zero() || since > USAGE_KEPT {
        return Err(format!(
            "must be more than 0 and at most {} (the history goes back that far)",
            short_duration(USAGE_KEPT)
        ));
    }
    Ok(since)
}

pub async fn run(args: UsageArgs) -> Result<(), Failure> {
    if args.top == 0 {
        return Err(Failure::Usage("--top must be at least 1".to_owned()));
    }
    let query = UsageQuery {
        since_s: args.since.as_secs(),
        by: args.by,
        key: args.key.as_deref().map(parse_key).transpose()?,
        top: Some(args.top),
    };
    let series: Vec<UsageSeries> = args.api.client().get(USAGE_PATH, &query).await?;
    if args.api.json {
        return print_json(&series);
    }
    let since = short_duration(args.since);
    let Some(first) = series.first() else {
        println!("nothing is recorded in the last {since}");
        return Ok(());
    };
    if first.kind == UsageKind::Total {
        print_chart(first, &format!("all keys, the last {since}"));
        let keys = &series[1..];
        println!();
        if keys.is_empty() {
            println!("no key is recorded in the last {since}");
        } else {
            print_busiest(keys, &since);
        }
    } else {
        for (i, one) in series.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print_chart(one, &format!("{}, the last {since}", one.key));
        }
    }
    Ok(())
}

/// One series: a line per period with its counts and a bar (passed, then rejected), scaled to
/// the busiest period.
fn print_chart(series: &UsageSeries, title: &str) {
    println!(
        "{title}, by {}: {} passed, {} rejected",
        series.by,
        table::count(series.passed),
        table::count(series.dropped)
    );
    println!(
        "{:<11}  {:>9}  {:>9}  {PASSED_BAR} passed {REJECTED_BAR} rejected",
        "UTC", "PASSED", "REJECTED"
    );
    let busiest = series
        .points
        .iter()
        .map(|p| p.passed.saturating_add(p.dropped))
        .max()
        .unwrap_or(0);
    for point in &series.points {
        println!(
            "{:<11}  {:>9}  {:>9}  {}",
            period_label(&point.at, series.by),
            table::count(point.passed),
            table::count(point.dropped),
            bar(point.passed, point.dropped, busiest)
        );
    }
}

/// The busiest keys of the window, with their share of the busiest one as a bar.
fn print_busiest(keys: &[UsageSeries], since: &str) {
    println!("busiest keys, the last {since}:");
    let busiest = keys
        .iter()
        .map(|k| k.passed.saturating_add(k.dropped))
        .max()
        .unwrap_or(0);
    let width = keys.iter().map(|k| k.key.len()).max().unwrap_or(3).max(3);
    println!("{:<width$}  {:>9}  {:>9}", "KEY", "PASSED", "REJECTED");
    for key in keys {
        println!(
            "{:<width$}  {:>9}  {:>9}  {}",
            key.key,
            table::count(key.passed),
            table::count(key.dropped),
            bar(key.passed, key.dropped, busiest)
        );
    }
}

/// `d` as `--since` takes it: `90m`, `24h`, `7d` (`1h30m` where it takes two units).
fn short_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let mut text = String::new();
    let mut rest = secs;
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= len {
            text.push_str(&format!("{}{unit}", rest / len));
            rest %= len;
        }
    }
    if text.is_empty() {
        text.push_str("0s");
    }
    text
}

/// `at` (RFC 3339, UTC) as short as the period allows: `11-28 16:05`, `2026-11-28`.
fn period_label(at: &str, by: UsageBy) -> String {
    match by {
        UsageBy::Day => at.get(..10).unwrap_or(at).to_owned(),
        UsageBy::Minute | UsageBy::Hour => at.get(5..16).unwrap_or(at).replace('T', " "),
    }
}

/// A bar of `passed` then `rejected`, [`BAR_WIDTH`] for `busiest`; anything above zero gets
/// at least one column.
fn bar(passed: u64, rejected: u64, busiest: u64) -> String {
    if busiest == 0 {
        return String::new();
    }
    let columns = |n: u64| {
        let c = (n as f64 * BAR_WIDTH as f64 / busiest as f64).round() as usize;
        if n > 0 {
            c.max(1)
        } else {
            0
        }
    };
    let passed_columns = columns(passed);
    let rejected_columns = columns(rejected).min(BAR_WIDTH.saturating_sub(passed_columns).max(1));
    let mut bar = String::with_capacity((passed_columns + rejected_columns) * 3);
    bar.extend(std::iter::repeat_n(PASSED_BAR, passed_columns));
    bar.extend(std::iter::repeat_n(REJECTED_BAR, rejected_columns));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fit_their_width_and_show_what_is_not_zero() {
        assert_eq!(bar(0, 0, 0), "");
        assert_eq!(bar(100, 0, 100).chars().count(), BAR_WIDTH);
        let half = bar(25, 25, 100);
        assert_eq!(
            half.chars().filter(|c| *c == PASSED_BAR).count(),
            BAR_WIDTH / 4
        );
        assert_eq!(
            half.chars().filter(|c| *c == REJECTED_BAR).count(),
            BAR_WIDTH / 4
        );
        // One rejected among a million still shows.
        let tiny = bar(999_999, 1, 1_000_000);
        assert!(tiny.ends_with(REJECTED_BAR));
        assert!(tiny.chars().count() <= BAR_WIDTH + 1);
        assert_eq!(bar(0, 0, 10), "");
    }

    #[test]
    fn a_line_fits_in_80_columns() {
        let line = format!(
            "{:<11}  {:>9}  {:>9}  {}",
            period_label("2026-11-28T16:05:00.000Z", UsageBy::Minute),
            table::count(123_456_789),
            table::count(9_999),
            bar(1, 0, 1)
        );
        assert!(line.starts_with("11-28 16:05"), "{line}");
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
        assert_eq!(
            period_label("2026-11-28T00:00:00.000Z", UsageBy::Day),
            "2026-11-28"
        );
    }

    #[test]
    fn since_takes_durations_up_to_seven_days() {
        assert_eq!(parse_since("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_since("7d"), Ok(USAGE_KEPT));
        assert!(parse_since("8d").unwrap_err().contains("at most 7d"));
        assert_eq!(short_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(short_duration(USAGE_KEPT), "7d");
        assert!(parse_since("0s").is_err());
        assert!(parse_since("yesterday")
            .unwrap_err()
            .contains("90m, 24h or 7d"));
    }
}
