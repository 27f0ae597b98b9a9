//! `## Where limiter stands`: the results against the aims, from the parts that ran.

use super::model::{Arm, FloodResult, A100, NEW_KEYS_PER_SEC, SCENARIOS};
use super::pacer::PACE_HEADROOM;
use super::summary::{summarize, ArmSummary};
use crate::bench;
use std::fmt::Write as _;

pub(super) const AIMS_SECTION: &str = "## Where limiter stands";

fn verdict(met: bool) -> &'static str {
    if met {
        "**met**"
    } else {
        "**not met**"
    }
}

/// Where limiter stands against the aims of the issue, from the parts that ran.
pub(super) fn aims(
    quick: bool,
    flood: Option<&FloodResult>,
    scale: Option<&crate::bench_scale::ScaleResult>,
    keys: Option<&crate::bench_keys::KeysResult>,
    secs: f64,
) -> String {
    let mut out = String::new();
    let command = bench::command(quick);
    let _ = writeln!(out, "{AIMS_SECTION}\n");
    let _ = writeln!(
        out,
        "From the run of `{command}` ({secs:.0} s in all) whose sections are below. The claim: \
         limiter throttles floods at nearly the cost of a bare `XDP_DROP`, several times \
         cheaper than the tools a Linux admin already has.\n"
    );
    let _ = writeln!(out, "| aim | measured | |");
    let _ = writeln!(out, "| --- | --- | --- |");
    if let Some(flood) = flood {
        let a = summarize(&SCENARIOS[0], &flood.scenarios[0]);
        let get = |arm: Arm| a.iter().find(|s| s.arm == arm);
        if let (Some(limiter), Some(ipt), Some(read), Some(bare)) = (
            get(Arm::Limiter),
            get(Arm::Iptables),
            get(Arm::ReadDrop),
            get(Arm::BareDrop),
        ) {
            let limiter_vs_ipt = ipt.ns.0 / limiter.ns.0;
            let _ = writeln!(
                out,
                "| (a) limiter ≥ 0.8× bare `XDP_DROP` | ×{:.2} by receiver capacity ({:.0} vs \
                 {:.0} ns/packet), ×{:.2} by Mpps processed; ×{:.2} of an `XDP_DROP` that only \
                 reads the source | {} |",
                limiter.cap_vs_bare,
                limiter.ns.0,
                bare.ns.0,
                limiter.mpps_vs_bare,
                read.ns.0 / limiter.ns.0,
                verdict(limiter.cap_vs_bare >= 0.8)
            );
            let _ = writeln!(
                out,
                "| (a) limiter ≥ 3× nftables and iptables | ×{:.2} nftables, ×{limiter_vs_ipt:.2} \
                 iptables by capacity; ×{:.2} nftables by Mpps | {} |",
                limiter.cap_vs_nft,
                limiter.mpps_vs_nft,
                verdict(limiter.cap_vs_nft >= 3.0 && limiter_vs_ipt >= 3.0)
            );
        }
        let a100 = summarize(&SCENARIOS[A100], &flood.scenarios[A100]);
        let get = |arm: Arm| a100.iter().find(|s| s.arm == arm);
        if let (Some(limiter), Some(read)) = (get(Arm::Limiter), get(Arm::ReadDrop)) {
            let ratio = read.ns.0 / limiter.ns.0;
            let _ = writeln!(
                out,
                "| (a) at 100/s: limiter ≥ ×0.85 the `XDP_DROP` reading the source | ×{ratio:.2} \
                 by receiver capacity ({:.0} vs {:.0} ns/packet); at 1000/s, where a tick is \
                 longer than the refill interval and every drop reads the precise clock, ×{:.2} \
                 | {} |",
                limiter.ns.0,
                read.ns.0,
                a.iter()
                    .find(|s| s.arm == Arm::ReadDrop)
                    .zip(a.iter().find(|s| s.arm == Arm::Limiter))
                    .map_or(f64::NAN, |(read, limiter)| read.ns.0 / limiter.ns.0),
                verdict(ratio >= 0.85)
            );
        }
        if let Some(queues) = &flood.queues {
            let (ratio, contention, one_queue) = super::queues::aim(queues);
            let _ = writeln!(
                out,
                "| (d) one key over two queues: limiter ≥ ×0.8 the two-queue floor, no \
                 contention drop | ×{ratio:.2} by receiver capacity (×{one_queue:.2} on one \
                 queue); {contention} contention drops, every pass count within burst + rate·t \
                 | {} |",
                verdict(ratio >= 0.8 && contention == 0)
            );
        }
        let c = summarize(&SCENARIOS[2], &flood.scenarios[2]);
        let get = |arm: Arm| c.iter().find(|s| s.arm == arm);
        if let (Some(limiter), Some(bounded)) = (get(Arm::Limiter), get(Arm::LimiterNewKeys)) {
            let kept = |a: &ArmSummary| a.well.unwrap_or((0.0, 0.0, 0.0));
            let (bounded_kept, bounded_min, bounded_max) = kept(bounded);
            let (limiter_kept, limiter_min, limiter_max) = kept(limiter);
            let others: Vec<String> = c
                .iter()
                .filter(|s| !s.arm.is_limiter() && s.arm != Arm::BareDrop)
                .filter_map(|s| {
                    s.well
                        .map(|(k, _, _)| format!("{} {:.0}%", s.arm.name(), 100.0 * k))
                })
                .collect();
            let offered = flood.scenarios[2].same_load.map_or(String::new(), |load| {
                format!(" {:.2} Mpps,", load.offered_pps / 1e6)
            });
            let _ = writeln!(
                out,
                "| (c) well-behaved clients keep ≥ 99% | with `new_keys_per_sec = \
                 {NEW_KEYS_PER_SEC}`: {:.1}% ({:.1}–{:.1}%); the ring lost {:.1}% of all frames, \
                 it dropped {:.0}% of what it processed. Without (the default): {:.1}% \
                 ({:.1}–{:.1}%); it cannot keep up ({:.0} ns/packet: {:.0}% of all frames lost \
                 at the ring) and passes the flood (it dropped {:.0}%). {}. Every arm offered \
                 the same load,{offered} {PACE_HEADROOM} × what a receiver without a filter \
                 takes | {} with `new_keys_per_sec`; {} without |",
                100.0 * bounded_kept,
                100.0 * bounded_min,
                100.0 * bounded_max,
                100.0 * bounded.ring_loss,
                100.0 * bounded.dropped_share,
                100.0 * limiter_kept,
                100.0 * limiter_min,
                100.0 * limiter_max,
                limiter.ns.0,
                100.0 * limiter.ring_loss,
                100.0 * limiter.dropped_share,
                others.join(", "),
                verdict(bounded_kept >= 0.99),
                verdict(limiter_kept >= 0.99),
            );
        }
    }
    if let Some(scale) = scale {
        if let (Some(list), Some(dump)) = (
            scale.timing("`limiter list --json`"),
            scale.timing("`bpftool map dump"),
        ) {
            let _ = writeln!(
                out,
                "| listing {} keys faster than bpftool dumps them | `limiter list --json` {:.2} \
                 s, `bpftool map dump` {:.2} s | {} |",
                crate::bench::count_label(scale.keys),
                list.median(),
                dump.median(),
                verdict(list.median() < dump.median())
            );
        }
        let per_key = scale.bytes_per_key();
        let _ = writeln!(
            out,
            "| per-key state ≤ 64 bytes | key + value {} bytes; the kernel charges {per_key:.0} \
             bytes per key of the map | {} |",
            scale.key_size + scale.value_size,
            if scale.key_size + scale.value_size <= 64 && per_key <= 64.0 {
                "**met**"
            } else if scale.key_size + scale.value_size <= 64 {
                "**met** for the state itself, **not met** for what the kernel spends"
            } else {
                "**not met**"
            }
        );
    }
    if let Some(keys) = keys {
        if let Some(ratio) = keys.cpu_vs_nginx {
            let keep_alive = keys.keep_alive_cpu_vs_nginx;
            let _ = writeln!(
                out,
                "| API keys: ≥ 5× less host CPU per rejection than nginx `limit_req` | ×{ratio:.2} \
                 of nginx's CPU per rejection by default (the 429 closes the connection: each \
                 rejection is a new TCP connection){} | {} |",
                keep_alive.map_or(String::new(), |k| format!(
                    "; ×{k:.2} with `[http] keep_alive` (the connection stays)"
                )),
                match keep_alive {
                    Some(k) if k <= 0.2 && ratio > 0.2 => "**met** with `keep_alive`; **not met** by default",
                    _ => verdict(ratio <= 0.2),
                }
            );
        }
        let polite: Vec<String> = keys
            .polite
            .iter()
            .map(|(arm, success, p99)| format!("{arm}: {:.1}%, p99 ×{p99:.2}", success * 100.0))
            .collect();
        let ours = keys
            .polite
            .iter()
            .find(|(arm, ..)| arm.starts_with("limiter"))
            .is_some_and(|(_, success, p99)| *success >= 0.99 && *p99 <= 1.5);
        let _ = writeln!(
            out,
            "| API keys: well-behaved keys ≥ 99% success, p99 ≤ 1.5× baseline under a keyed \
             flood | {} | {} |",
            polite.join("; "),
            verdict(ours)
        );
    }
    out
}
