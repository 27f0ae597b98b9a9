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

/// "850 ms", "12 s", "4 min 10 s", "2 h 5 min".
pub fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{secs} s"),
        60_000..=3_599_999 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}
