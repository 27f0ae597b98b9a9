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

/// A count for a table or a narrow column: exact below 10 000, else "12.3k", "4.56M", "7.10G".
pub fn count(n: u64) -> String {
    if n < 10_000 {
        n.to_string()
    } else {
        scaled(n as f64)
    }
}

/// A rate per second: 0, 0.5, 37, 1234, 12.3k …
pub fn rate(rate: f64) -> String {
    if rate < 0.05 {
        "0".to_owned()
    } else if rate < 9.95 {
        format!("{rate:.1}")
    } else if rate < 9_999.5 {
        format!("{rate:.0}")
    } else {
        scaled(rate)
    }
}

/// Three significant digits and a unit: 12.3k, 4.56M, 789G, 1.20T.
fn scaled(value: f64) -> String {
    let (value, unit) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
        .into_iter()
        .find(|(scale, _)| value >= *scale)
        .map(|(scale, unit)| (value / scale, unit))
        .unwrap_or((value, ""));
    if value < 9.995 {
        format!("{value:.2}{unit}")
    } else if value < 99.95 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times_read_well() {
        assert_eq!(count(9_999), "9999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(4_560_000), "4.56M");
        assert_eq!(count(7_100_000_000), "7.10G");
        assert_eq!(retry_after(0), "now");
        assert_eq!(retry_after(120), "120 ms");
        assert_eq!(duration(250_000), "4 min 10 s");
    }
}
