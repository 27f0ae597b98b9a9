use super::{print_json, table::yes_no, ApiArgs};
use crate::api::{Status, STATUS_PATH};
use crate::exit::Failure;
use limiter_common::maps::Counter;

pub async fn run(args: ApiArgs) -> Result<(), Failure> {
    let status: Status = args.client().get(STATUS_PATH, &()).await?;
    if args.json {
        return print_json(&status);
    }
    let interfaces: Vec<String> = status
        .interfaces
        .iter()
        .map(|i| match i.attached {
            true => format!("{} ({})", i.name, i.mode),
            false => format!("{} (DETACHED: not limited; restart the agent)", i.name),
        })
        .collect();
    let c = &status.config;
    let rows = [
        ("interfaces", interfaces.join(", ")),
        ("config", c.source.clone()),
        ("default limit", format!("{}/s, burst {}", c.rate, c.burst)),
        (
            "keys by",
            format!("/{} (IPv4), /{} (IPv6)", c.ipv4_prefix, c.ipv6_prefix),
        ),
        (
            "tracked keys",
            format!("{} of at most {}", status.tracked_keys, c.max_keys),
        ),
        (
            "new keys",
            match (c.new_keys_per_sec, c.new_keys_burst) {
                (Some(rate), burst) => format!(
                    "at most {rate}/s{}{} — during a flood of new sources a genuinely new client \
                     may lose its first packets",
                    burst
                        .filter(|b| *b != rate)
                        .map(|b| format!(", {b} at once"))
                        .unwrap_or_default(),
                    if c.new_keys_bound == "default" {
                        " (default: max_keys / 100)"
                    } else {
                        ""
                    }
                ),
                (None, _) => "no bound (new_keys_per_sec = \"off\")".to_owned(),
            },
        ),
        ("exhausted keys", status.exhausted_keys.to_string()),
        ("evicted keys", status.evicted_keys.to_string()),
        ("rules", status.rules.to_string()),
        ("dry run", yes_no(status.dry_run).to_owned()),
        ("pins", c.pin_path.clone()),
    ];
    for (name, value) in rows {
        println!("{name:<17}{value}");
    }
    if let Some(fleet) = &status.fleet {
        let said = match (fleet.connected, fleet.lag_ms) {
            (true, Some(lag)) => format!("in sync (last sync {lag} ms; `limiter fleet`)"),
            (true, None) => "connected, not synced yet".to_owned(),
            (false, _) => "NOT in sync: Redis unreachable or refused (`limiter fleet`); \
                           enforcing this host's leases"
                .to_owned(),
        };
        println!("{:<17}{said}", "fleet");
    }
    // Every datapath counter, in the order of the table that declares them.
    for (counter, value) in status.counters.iter() {
        let value = match (counter, counter.note()) {
            (Counter::Passed | Counter::Dropped, _) => exact_and_short(value),
            (_, "") => value.to_string(),
            (_, note) => format!("{value} ({note})"),
        };
        println!("{:<17}{value}", counter.label());
    }
    Ok(())
}
/// "1234567 (1.23M)": exact for scripts that scrape, short for the eye.
fn exact_and_short(n: u64) -> String {
    let short = super::table::count(n);
    if short == n.to_string() {
        short
    } else {
        format!("{n} ({short})")
    }
}
