//! Samples summarised per arm over the rounds, for the report, the chart and the aims.

use super::model::{spread, Arm, Sample, Scenario, ScenarioResult};
use crate::bench::median;

/// One arm of one scenario, summarised over the rounds.
pub(super) struct ArmSummary {
    pub(super) arm: Arm,
    /// Processed Mpps: median, min, max.
    pub(super) mpps: (f64, f64, f64),
    /// Receiver ns per packet: median, min, max.
    pub(super) ns: (f64, f64, f64),
    /// Per-round ratios (median) of the processed rate and of the capacity (1/ns) to bare
    /// XDP_DROP's and to nftables'.
    pub(super) mpps_vs_bare: f64,
    pub(super) mpps_vs_nft: f64,
    pub(super) cap_vs_bare: f64,
    pub(super) cap_vs_nft: f64,
    pub(super) busy: f64,
    pub(super) offered: f64,
    pub(super) ring_loss: f64,
    pub(super) passed: f64,
    pub(super) dropped_share: f64,
    /// Well-behaved packets kept: over all rounds, and per round min–max.
    pub(super) well: Option<(f64, f64, f64)>,
    pub(super) warmup: f64,
    /// The limiter in (c): well-behaved clients with a key at the end of the window, median
    /// and min–max over the rounds.
    pub(super) tracked: Option<(f64, f64, f64)>,
    /// The limiter: keys created over the whole run, and that run's seconds (medians).
    pub(super) keys: f64,
    pub(super) keys_secs: f64,
}

pub(super) fn summarize(scenario: &Scenario, result: &ScenarioResult) -> Vec<ArmSummary> {
    let samples = |arm: Arm| &result.samples[arm.index()];
    // NaN where the scenario has no arm `of`.
    let ratio = |arm: Arm, of: Arm, f: &dyn Fn(&Sample) -> f64| {
        if samples(of).is_empty() {
            return f64::NAN;
        }
        let mut r: Vec<f64> = samples(arm)
            .iter()
            .zip(samples(of))
            .map(|(a, b)| f(a) / f(b))
            .collect();
        median(&mut r)
    };
    let mpps = |s: &Sample| s.processed_pps;
    let cap = |s: &Sample| 1.0 / s.ns_per_packet;
    scenario
        .arms
        .iter()
        .map(|&arm| {
            let ss = samples(arm);
            let well = scenario.well.then(|| {
                let sent: u64 = ss.iter().map(|s| s.well_sent).sum();
                let received: u64 = ss.iter().map(|s| s.well_received).sum();
                let (_, min, max) = spread(
                    ss.iter()
                        .map(|s| s.well_received as f64 / s.well_sent.max(1) as f64),
                );
                (received as f64 / sent.max(1) as f64, min, max)
            });
            ArmSummary {
                arm,
                mpps: spread(ss.iter().map(|s| s.processed_pps / 1e6)),
                ns: spread(ss.iter().map(|s| s.ns_per_packet)),
                mpps_vs_bare: ratio(arm, Arm::BareDrop, &mpps),
                mpps_vs_nft: ratio(arm, Arm::Nftables, &mpps),
                cap_vs_bare: ratio(arm, Arm::BareDrop, &cap),
                cap_vs_nft: ratio(arm, Arm::Nftables, &cap),
                busy: spread(ss.iter().map(|s| s.busy)).0,
                offered: spread(ss.iter().map(|s| s.offered_pps / 1e6)).0,
                ring_loss: spread(
                    ss.iter()
                        .map(|s| s.ring_full_pps / (s.ring_full_pps + s.processed_pps).max(1.0)),
                )
                .0,
                passed: spread(ss.iter().map(|s| s.passed_pps)).0,
                dropped_share: spread(ss.iter().map(|s| s.dropped_pps / s.processed_pps.max(1.0)))
                    .0,
                well,
                warmup: spread(ss.iter().map(|s| s.warmup_secs)).0,
                tracked: ss
                    .iter()
                    .all(|s| s.clients_tracked.is_some())
                    .then(|| spread(ss.iter().filter_map(|s| s.clients_tracked.map(f64::from)))),
                keys: spread(ss.iter().map(|s| s.keys_created as f64)).0,
                keys_secs: spread(ss.iter().map(|s| s.keys_secs)).0,
            }
        })
        .collect()
}
