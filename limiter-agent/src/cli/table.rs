//! Aligned plain-text tables and the human forms of numbers.

use comfy_table::{presets, Table};

pub fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(header.to_vec());
    table
}

pub fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// "now" or "120 ms" / "3.2 s".
pub fn retry_after(ms: u64) -> String {
    match ms {
        0 => "now".to_owned(),
        1..=9_999 => format!("{ms} ms"),
        _ => format!("{:.1} s", ms as f64 / 1000.0),
    }
}
