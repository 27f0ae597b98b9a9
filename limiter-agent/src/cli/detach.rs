use crate::exit::Failure;
use crate::object::map_names;
use crate::pins::{detach, DEFAULT_PIN_PATH};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// The interface to take the program off.
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// The agent's --pin-path.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Machine-readable JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DetachArgs) -> Result<(), Failure> {
    let report = detach(&args.iface, &args.pin_path, &map_names()?)?;
    if args.json {
        return super::print_json(&report);
    }
    println!("detached limiter from {}", args.iface);
    if report.state_removed {
        println!(
            "no interface is left attached: removed the pinned maps under {} (buckets and counters)",
            args.pin_path.display()
        );
        if !report.kept.is_empty() {
            println!(
                "kept what limiter did not make there: {}",
                report.kept.join(", ")
            );
        }
    } else {
        println!(
            "still attached to {}: the pinned maps under {} are kept",
            report.still_attached.join(", "),
            args.pin_path.display()
        );
    }
    Ok(())
}
