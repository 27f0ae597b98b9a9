use super::{print_json, ApiArgs};
use crate::api::{ReloadResponse, RELOAD_PATH};
use crate::exit::Failure;

pub async fn run(args: ApiArgs) -> Result<(), Failure> {
    let answer: ReloadResponse = args.client().post(RELOAD_PATH, &()).await?;
    if args.json {
        return print_json(&answer);
    }
    let noun = if answer.rules == 1 { "rule" } else { "rules" };
    println!(
        "reloaded {} ({} {noun}); buckets of keys whose rule is unchanged were kept",
        answer.config, answer.rules
    );
    Ok(())
}
