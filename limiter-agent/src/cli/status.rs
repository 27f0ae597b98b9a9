use super::{print_json, table::yes_no, ApiArgs};
use crate::api::{Status, STATUS_PATH};
use crate::exit::Failure;

pub async fn run(args: ApiArgs) -> Result<(), Failure> {
    let status: Status = args.client().get(STATUS_PATH, &()).await?;
    if args.json {
        return print_json(&status);
    }
    let interfaces: Vec<String> = status
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
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
            match c.new_keys_per_sec {
                Some(rate) => format!("at most {rate}/s"),
                None => "no bound".to_owned(),
            },
        ),
        ("exhausted keys", status.exhausted_keys.to_string()),
        ("rules", status.rules.to_string()),
        ("passed", exact_and_short(status.passed)),
        ("dropped", exact_and_short(status.dropped)),
        ("dry run", yes_no(status.dry_run).to_owned()),
        (
            "would drop",
            format!("{} (let through by dry run)", status.would_drop),
        ),
        ("allowed by rule", status.allowed_by_rule.to_string()),
        ("denied by rule", status.denied_by_rule.to_string()),
        (
            "not limited",
            format!(
                "{} (ARP, IPv6 neighbour discovery …; always passed)",
                status.not_limited
            ),
        ),
        (
            "unparsed",
            format!("{} (truncated or malformed; passed)", status.unparsed),
        ),
        ("evicted keys", status.evicted_keys.to_string()),
        ("insert failures", status.insert_failed.to_string()),
        (
            "contention",
            format!(
                "{} dropped after losing every retry to other CPUs",
                status.contention_drops
            ),
        ),
        (
            "new keys refused",
            format!(
                "{} (first packets over new_keys_per_sec; no key created)",
                status.new_keys_refused
            ),
        ),
        ("pins", c.pin_path.clone()),
    ];
    for (name, value) in rows {
        println!("{name:<17}{value}");
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
