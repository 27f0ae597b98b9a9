//! The chart of the report, bench-flood.png: plotters' bitmap backend.

use super::model::{Arm, FloodResult, ALL_ARMS, SCENARIOS};
use super::summary::{summarize, ArmSummary};
use crate::bench::thousands;
use std::path::Path;

/// The chart, at the repository's root.
pub(super) const CHART: &str = "bench-flood.png";

/// The font the chart's text is drawn with (Debian's fonts-dejavu-core; read at run time, so no
/// system font library is needed).
const CHART_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn arm_color(arm: Arm) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match arm {
        Arm::BareDrop => RGBColor(120, 120, 120),
        Arm::ReadDrop => RGBColor(180, 180, 180),
        Arm::Limiter => RGBColor(31, 119, 180),
        Arm::LimiterNewKeys => RGBColor(44, 160, 44),
        Arm::Nftables => RGBColor(255, 127, 14),
        Arm::Iptables => RGBColor(214, 39, 40),
        Arm::NoFilter => RGBColor(148, 103, 189),
    }
}

/// Two panels, one group of bars per scenario: Mpps processed, and the receiver's capacity on one
/// CPU; medians, with min–max whiskers.
pub(super) fn draw_chart(result: &FloodResult, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    FONT.get_or_init(|| {
        let bytes = std::fs::read(CHART_FONT)
            .map_err(|e| format!("reading {CHART_FONT} (Debian package fonts-dejavu-core): {e}"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
            .map_err(|_| format!("{CHART_FONT} is not a usable font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)?;

    let summaries: Vec<Vec<ArmSummary>> = SCENARIOS
        .iter()
        .zip(&result.scenarios)
        .map(|(scenario, r)| summarize(scenario, r))
        .collect();
    let root = BitMapBackend::new(path, (1400, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(50);
    title.draw(&Text::new(
        "Flood throughput: one receiver CPU behind a veth, per arm (median, min–max)",
        (20, 15),
        ("sans-serif", 24).into_font(),
    ))?;
    let (left, right) = body.split_horizontally(700);
    type Metric = fn(&ArmSummary) -> (f64, f64, f64);
    let panels: [(&DrawingArea<_, _>, &str, Metric); 2] = [
        (&left, "Mpps processed", |a| a.mpps),
        (
            &right,
            "receiver capacity, Mpps on one CPU (1000 / ns per packet)",
            |a| (1000.0 / a.ns.0, 1000.0 / a.ns.2, 1000.0 / a.ns.1),
        ),
    ];
    for (area, caption, metric) in panels {
        let top = summaries
            .iter()
            .flatten()
            .map(|a| metric(a).2)
            .filter(|v| v.is_finite())
            .fold(1.0, f64::max)
            * 1.5;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..SCENARIOS.len() as f64, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(SCENARIOS.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < SCENARIOS.len() {
                    let s = &SCENARIOS[i];
                    format!(
                        "({}) {} sources, {} keys",
                        s.id,
                        thousands(s.sources),
                        thousands(s.capacity)
                    )
                } else {
                    String::new()
                }
            })
            .y_desc("Mpps")
            .label_style(("sans-serif", 14))
            .draw()?;
        for arm in ALL_ARMS {
            let mut bars = Vec::new();
            let mut whiskers = Vec::new();
            for (g, group) in summaries.iter().enumerate() {
                let Some(pos) = group.iter().position(|a| a.arm == arm) else {
                    continue;
                };
                let width = 0.8 / group.len() as f64;
                let x0 = g as f64 + 0.1 + pos as f64 * width;
                let (m, lo, hi) = metric(&group[pos]);
                bars.push(Rectangle::new(
                    [(x0 + 0.1 * width, 0.0), (x0 + 0.9 * width, m)],
                    arm_color(arm).filled(),
                ));
                let mid = x0 + 0.5 * width;
                whiskers.push(PathElement::new(vec![(mid, lo), (mid, hi)], BLACK));
            }
            if bars.is_empty() {
                continue;
            }
            chart
                .draw_series(bars)?
                .label(arm.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], arm_color(arm).filled())
                });
            chart.draw_series(whiskers)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
