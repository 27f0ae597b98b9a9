//! `limiter fleet`: the hosts of the fleet this agent shares its limits with, as its Redis says.

use super::{print_json, table::yes_no, ApiArgs};
use crate::api::{FleetInfo, FLEET_PATH};
use crate::exit::Failure;

pub async fn run(args: ApiArgs) -> Result<(), Failure> {
    let info: FleetInfo = args.client().get(FLEET_PATH, &()).await?;
    if args.json {
        return print_json(&info);
    }
    println!("{:<11}{}", "redis", info.redis);
    println!("{:<11}{}", "this host", info.host);
    println!("{:<11}{}", "connected", yes_no(info.connected));
    if let Some(why) = &info.refused {
        println!("{:<11}{why}", "refused");
    }
    if let Some(lag) = info.lag_ms {
        println!("{:<11}{lag} ms (the last sync's round trip)", "lag");
    }
    println!(
        "\n{:<24}{:>16}{:>8}{:>14}",
        "HOST", "LAST SYNC", "KEYS", "REQUESTS"
    );
    for host in &info.hosts {
        println!(
            "{:<24}{:>13} ms{:>8}{:>14}",
            host.host, host.last_sync_ms_ago, host.keys, host.requests
        );
    }
    Ok(())
}
