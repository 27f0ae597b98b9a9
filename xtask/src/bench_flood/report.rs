//! The `## Flood throughput` section of BENCHMARKS.md.

use super::chart::CHART;
use super::generator::{BATCH, BATCH_SAME_LOAD};
use super::model::{
    Arm, FloodResult, Plan, SameLoad, Scenario, ALL_ARMS, FLOOD_PORT, GENERATOR_CPU,
    NEW_KEYS_PER_SEC, RECEIVER_CPU, SCENARIOS, WELL_CLIENTS, WELL_SHIFT, WELL_WARMUP,
};
use super::pacer::{PACE_HEADROOM, PACE_STEP};
use super::summary::{summarize, ArmSummary};
use crate::bench::{self, thousands};
use std::fmt::Write as _;

pub(super) const SECTION: &str = "## Flood throughput";

pub(super) fn print_samples(result: &FloodResult) {
    for (scenario, scenario_result) in SCENARIOS.iter().zip(&result.scenarios) {
        for (arm, samples) in ALL_ARMS.iter().zip(&scenario_result.samples) {
            for s in samples {
                println!(
                    "({}) {:28} warm {:4.1} offered {:5.2} processed {:5.2} ring-full {:5.2} \
                     Mpps | NAPI busy {:3.0}% wait {:3.0}% {:6.0} ns/p | generator busy {:3.0}% \
                     wait {:3.0}% | passed {:7.0}/s dropped {:8.0}/s (limiter's count {:8.0}) | \
                     well-behaved {}/{} (run {}/{}, {:?} tracked) | keys {} in {:.1} s, new keys \
                     refused {}",
                    scenario.id,
                    arm.name(),
                    s.warmup_secs,
                    s.offered_pps / 1e6,
                    s.processed_pps / 1e6,
                    s.ring_full_pps / 1e6,
                    s.busy * 100.0,
                    s.napi_wait * 100.0,
                    s.ns_per_packet,
                    s.gen_busy * 100.0,
                    s.gen_wait * 100.0,
                    s.passed_pps,
                    s.dropped_pps,
                    s.limiter_dropped_pps,
                    s.well_received,
                    s.well_sent,
                    s.well_received_run,
                    s.well_sent_run,
                    s.clients_tracked,
                    s.keys_created,
                    s.keys_secs,
                    s.new_keys_refused
                );
            }
        }
    }
}

fn rate_text(pps: f64) -> String {
    if pps >= 1e6 {
        format!("{:.2} M", pps / 1e6)
    } else if pps >= 1e3 {
        format!("{:.0} k", pps / 1e3)
    } else {
        format!("{pps:.0}")
    }
}

pub(super) fn report(
    plan: &Plan,
    machine: &bench::Machine,
    result: &FloodResult,
    chart_note: Option<&str>,
) -> String {
    let mut out = String::new();
    let command = bench::command(plan.quick);
    let _ = writeln!(out, "{SECTION}\n");
    let _ = writeln!(
        out,
        "`{command}` — {}, {:.0} s for this part. Machine: {} CPUs, {}; kernel {}; {}; {}; load \
         average {} before, {} after (other work was running on the machine).\n",
        machine.date,
        result.secs,
        machine.nproc,
        machine.cpu,
        machine.kernel,
        result.iptables_version,
        result.nft_version,
        machine.load_before,
        machine.load_after,
    );
    if plan.quick {
        let _ = writeln!(
            out,
            "**Quick run**: {} rounds of {:.1} s windows; run `cargo xtask bench` for the full \
             numbers.\n",
            plan.rounds,
            plan.window.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "![flood throughput]({CHART})\n\n\
         **Test bed.** Two network namespaces joined by a veth pair; 64-byte UDP frames to the \
         receiver, from 198.19.0.0/16 (the flood) and 198.18.0.10–25 (the well-behaved clients \
         of (c)). The sender is the project's generator (`limiter-ebpf/src/bin/xdp_gen.rs`): an \
         XDP program run with `BPF_PROG_TEST_RUN` live frames on CPU {GENERATOR_CPU}, writing \
         each frame's source (and IPv4 checksum) and returning `XDP_TX`, so frames reach the \
         receiver as XDP frames, as from a NIC. The receiving veth's NAPI poll runs in a thread \
         of its own (threaded NAPI) pinned to CPU {RECEIVER_CPU}: all the receiver's work — XDP \
         program, skb, netfilter, IPv4, UDP — happens in that thread, and its CPU time \
         (`/proc/PID/schedstat`) divided by the packets it processed (the veth's rx packets, as \
         `ip -s link` counts them) is the **receiver's cost per packet**; 1000 / that is its \
         **capacity** in Mpps on one CPU. This measure is not disturbed when other work takes \
         the CPUs for a while; Mpps processed is, and is given too. In (a) and (b) the generator \
         is paced to ~1.1 × the receiver's measured capacity (or runs flat out, ≈ 10 Mpps, when \
         that is more; in (c) every arm is offered the same rate, below), so the receiver always has frames waiting while the veth's 256-frame ring \
         overflows little: on a veth, overflowing frames go back to the generator's page pool \
         from CPU {GENERATOR_CPU} while the receiver returns its frames there from CPU \
         {RECEIVER_CPU}, and the lock contention that follows (up to 75% of the receiver's \
         time in a profile of an unpaced run) is an artifact of the test bed — a NIC drops \
         what its ring cannot hold at no cost to the host.\n"
    );
    let _ = writeln!(
        out,
        "**Arms.** bare `XDP_DROP` (the ceiling: it never reads the packet); in (a) also an \
         `XDP_DROP` that reads the IPv4 source first — the least any filter by source must do; \
         limiter (the XDP program as the agent loads it, `[limits]` as below, no agent \
         process); nftables (a `netdev` table, `ingress` hook on the receiving veth, \
         `update @sources {{ ip saddr limit rate over R/second burst B packets }} drop` on a \
         dynamic set with a timeout of 10 s); iptables `hashlimit` (`-t raw -A PREROUTING -m \
         hashlimit --hashlimit-mode srcip --hashlimit-above R/sec --hashlimit-burst B \
         -j DROP`, expiry 10 s); no filter; in (c) also limiter with `[agent] new_keys_per_sec \
         = {NEW_KEYS_PER_SEC}` (\"{}\"): the first packet of a source it does not track takes \
         one key creation from an allowance of {NEW_KEYS_PER_SEC} a second (and \
         {NEW_KEYS_PER_SEC} at once) shared by all sources, or is dropped and no key is created \
         (the allowance is a map of its own, `NEW_KEYS`, fresh in every run like the buckets). \
         The non-XDP arms have a bare `XDP_PASS` on the \
         receiver. Every limiter gets the same rate, burst and table size (limiter's \
         `max_keys`, the set's `size`, `--hashlimit-htable-max`). Passed packets go up to UDP \
         (port {FLOOD_PORT}, nothing listening: dropped by UDP, no reply — the sources have no \
         route back); \"passed\" counts them in the namespace's UDP counters, \"dropped\" is \
         what the receiver processed less that. {} rounds; in each every arm runs once, in an \
         order rotated every round, each with fresh state: {:.1} s warm-up (stretched up to \
         {:.0} s until a limiter passes no more than its sources' sustained rate, its bursts \
         spent; for the limiter with new keys bounded, until it has created as many keys as its \
         table holds), then a {:.1} s window. Values are medians over the rounds with min–max; \
         ratios are taken per round, then the median.\n",
        Arm::LimiterNewKeys.name(),
        plan.rounds,
        plan.warmup.as_secs_f64(),
        plan.max_warmup.as_secs_f64(),
        plan.window.as_secs_f64()
    );
    if let Some(note) = chart_note {
        let _ = writeln!(out, "{note}\n");
    }
    for (scenario, scenario_result) in SCENARIOS.iter().zip(&result.scenarios) {
        let summaries = summarize(scenario, scenario_result);
        let _ = writeln!(out, "### ({}) {}\n", scenario.id, scenario.title);
        let _ = writeln!(
            out,
            "{} flood sources ({}), rate {}/s and burst {} per source, tables of {} keys.{}\n",
            thousands(scenario.sources),
            if scenario.random {
                "a pseudo-random one per frame"
            } else {
                "in turn"
            },
            scenario.rate,
            scenario.burst,
            thousands(scenario.capacity),
            match scenario.id {
                "b" => " The generator offers each source ~10–100 packets/s here, so the limit \
                         is 1/s for the flood to be far over it."
                    .to_owned(),
                "c" => well_text(scenario, scenario_result.same_load.as_ref()),
                _ => String::new(),
            }
        );
        let well = scenario.well;
        let _ = writeln!(
            out,
            "| arm | Mpps processed | min–max | × bare | × nftables | receiver ns/packet | \
             min–max | capacity, Mpps/CPU | × bare | × nftables | receiver busy | ring full | \
             passed/s | dropped |{}",
            if well {
                " well-behaved kept | min–max |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | \
             ---: | ---: |{}",
            if well { " ---: | ---: |" } else { "" }
        );
        for a in &summaries {
            let well = match a.well {
                Some((kept, min, max)) => format!(
                    " {:.1}% | {:.1}–{:.1}% |",
                    100.0 * kept,
                    100.0 * min,
                    100.0 * max
                ),
                None if well => " — | — |".to_owned(),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2}–{:.2} | {} | {} | {:.0} | {:.0}–{:.0} | {:.1} | \
                 {} | {} | {:.0}% | {:.0}% | {} | {:.0}% |{well}",
                a.arm.name(),
                a.mpps.0,
                a.mpps.1,
                a.mpps.2,
                times(a.mpps_vs_bare),
                times(a.mpps_vs_nft),
                a.ns.0,
                a.ns.1,
                a.ns.2,
                1000.0 / a.ns.0,
                times(a.cap_vs_bare),
                times(a.cap_vs_nft),
                100.0 * a.busy,
                100.0 * a.ring_loss,
                rate_text(a.passed),
                100.0 * a.dropped_share,
            );
        }
        let _ = writeln!(out);
        let bare = summaries.iter().find(|a| a.arm == Arm::BareDrop);
        let digits = if scenario_result.same_load.is_some() {
            2
        } else {
            1
        };
        let offered: Vec<String> = summaries
            .iter()
            .map(|a| {
                format!(
                    "{} {:.digits$} ({:.1} s)",
                    a.arm.name(),
                    a.offered,
                    a.warmup
                )
            })
            .collect();
        if scenario.well {
            let get = |arm: Arm| summaries.iter().find(|a| a.arm == arm);
            if let (Some(limiter), Some(bounded), Some(nft), Some(ipt)) = (
                get(Arm::Limiter),
                get(Arm::LimiterNewKeys),
                get(Arm::Nftables),
                get(Arm::Iptables),
            ) {
                let tracked = |a: &ArmSummary| {
                    let (m, lo, hi) = a.tracked.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
                    let rounds = if lo == hi {
                        "in every round".to_owned()
                    } else {
                        format!("median over the rounds; {lo:.0}–{hi:.0}")
                    };
                    format!(
                        "at the end of the window {m:.0} of the {WELL_CLIENTS} clients had a key \
                         ({rounds})"
                    )
                };
                let _ = writeln!(
                    out,
                    "What happens: the flood has {}× more sources than the tables hold. \
                     limiter's LRU map evicts a key for every new one, so nearly every flood \
                     packet finds no bucket, gets a new, full one and passes: it dropped {:.0}% \
                     of what it processed and spent {:.0} ns per packet (an insert that evicts, \
                     then the stack) — more than no filter at all. The clients' keys go with \
                     the rest: {}. Their packets pass on new buckets, when they get past the \
                     ring. With \
                     `new_keys_per_sec = {NEW_KEYS_PER_SEC}` the limiter creates at most \
                     {NEW_KEYS_PER_SEC} keys a second for all sources together: the clients, \
                     tracked before the flood, find their buckets; a flood packet from a source \
                     without a key takes a creation when one is left and is otherwise refused \
                     — a lookup that misses and a read of the allowance, then `XDP_DROP`: no \
                     insert, no eviction. It dropped {:.0}% of what it processed at {:.0} ns per \
                     packet. Its table still fills, with the flood sources that won a creation \
                     and then pass, under their limit ({} packets/s passed; its warm-up ran \
                     until the table was full, {:.1} s), and from then on every key created \
                     evicts one ({:.0} created in {:.1} s, the table holds {}); {}. A client \
                     whose key is evicted is refused \
                     like the flood until one of its packets finds a creation left. nftables' \
                     full set refuses the `update`, the rule does not match and the packet is \
                     accepted ({:.0}% dropped). hashlimit drops packets of sources it has no \
                     room for ({:.0}% dropped): the established clients keep their entries. \
                     Well-behaved packets are lost at the ring where the receiver cannot keep \
                     up with the load (and a little where it can: a batch that finds the ring \
                     still full) and, for hashlimit, when a client's entry is gone.\n",
                    scenario.sources / scenario.capacity,
                    100.0 * limiter.dropped_share,
                    limiter.ns.0,
                    tracked(limiter),
                    100.0 * bounded.dropped_share,
                    bounded.ns.0,
                    rate_text(bounded.passed),
                    bounded.warmup,
                    bounded.keys,
                    bounded.keys_secs,
                    thousands(scenario.capacity),
                    tracked(bounded),
                    100.0 * nft.dropped_share,
                    100.0 * ipt.dropped_share,
                );
            }
        }
        let note = match (&scenario_result.same_load, bare) {
            (Some(load), _) => {
                format!("Every arm was paced to {:.2} Mpps.", load.offered_pps / 1e6)
            }
            (None, Some(b)) => format!(
                "The bare `XDP_DROP` receiver was busy {:.0}% of its CPU: the generator, not the \
                 receiver, sets its Mpps, so its capacity column is the ceiling to compare with.",
                100.0 * b.busy
            ),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "Offered by the generator, Mpps (and warm-up), medians: {}. {note}\n",
            offered.join(", "),
        );
    }
    if let Some(queues) = &result.queues {
        out.push_str(&super::queues::report(queues));
        out.push('\n');
    }
    // Profiles.
    let _ = writeln!(
        out,
        "### Where the receiver's CPU goes\n\n\
         `perf record -e cpu-clock -C {RECEIVER_CPU}` for {:.1} s in scenario (a), one run per \
         arm (symbols with 1.5% or more; ns = share × that run's ns/packet).\n",
        plan.profile.as_secs_f64()
    );
    for profile in &result.profiles {
        let top: Vec<String> = profile
            .symbols
            .iter()
            .map(|(share, symbol)| {
                let symbol = if symbol.starts_with("bpf_prog_") {
                    format!("{symbol} (the XDP program)")
                } else {
                    symbol.clone()
                };
                format!(
                    "`{symbol}` {share:.1}% ({:.0} ns)",
                    share / 100.0 * profile.ns_per_packet
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "- **{}** ({:.0} ns/packet): {}.",
            profile.arm.name(),
            profile.ns_per_packet,
            top.join(", ")
        );
    }
    if let Some((prog, total)) = result.limiter_prog_ns {
        let _ = writeln!(
            out,
            "\nThe limiter program's own time per run on the receiver (the kernel's run-time \
             statistics, `BPF_ENABLE_STATS`, on for one extra run of (a): they add two clock \
             reads per run, ~40 ns here): {prog:.0} ns of the {total:.0} ns the receiver spent \
             per packet in that run. Under `BPF_PROG_TEST_RUN` (the per-packet section above) \
             the same program costs ~45 ns over a bare `XDP_DROP` on a hot key: on the \
             receiver its first read of the packet misses the cache (the generator wrote the \
             frame on the other CPU — a NIC's DMA leaves it in memory or the LLC), which the \
             `XDP_DROP` reading the source shows alone."
        );
    }
    let _ = writeln!(out);
    for note in &result.notes {
        let _ = writeln!(out, "{note}");
    }
    if result.checks.is_empty() {
        let _ = writeln!(
            out,
            "\nChecks: what arrived is what was sent — in (a) the limiter made exactly one key \
             per source, in (b) one for nearly every source (random sources: a few may not come \
             up in a short run), its own drop count matches what did not reach UDP within 2%, \
             no insert failed (in (a) and (b)), and IPv4 refused no packet for a bad header or \
             checksum; in (c) the limiter with new keys bounded refused new keys and created no \
             more than its allowance ({NEW_KEYS_PER_SEC} + {NEW_KEYS_PER_SEC}/s), and the \
             generator held the rate it was paced to within 5% for every arm."
        );
    } else {
        let _ = writeln!(out, "\n**Checks failed**:");
        for check in &result.checks {
            let _ = writeln!(out, "- {check}");
        }
    }
    out
}

/// What (c) adds to its scenario's line: the well-behaved clients, and the load every arm got.
fn well_text(scenario: &Scenario, load: Option<&SameLoad>) -> String {
    let per_client = WELL_CLIENTS << WELL_SHIFT;
    let mut text = format!(
        " {WELL_CLIENTS} well-behaved clients (198.18.0.10–25) each send one frame in {} and sent \
         {WELL_WARMUP} packets each before the flood started: they are established clients.",
        thousands(per_client)
    );
    if let Some(load) = load {
        let client_pps = load.offered_pps / f64::from(per_client);
        let _ = write!(
            text,
            " **Every arm is offered the same load**: {:.2} Mpps, {PACE_HEADROOM} × the capacity \
             of the receiver without a filter (a bare `XDP_PASS` and the stack: {:.0} ns/packet, \
             {:.0}–{:.0}, in {} runs under this traffic before the rounds) — a flood that just \
             saturates an unprotected host; each client sends ~{client_pps:.0} packets/s of it, \
             {:.0}% of its limit. A receiver faster than that keeps up and loses little at the \
             veth's ring; a slower one loses there what it cannot take, as a host does at its \
             NIC (on the veth, frames lost at the ring also load the receiver — the page pool's \
             lock, above — so an arm that cannot keep up may show more ns/packet here than when \
             paced to its capacity, as in (a) and (b)). An arm that keeps up is not busy all the \
             time and wakes its thread for fewer frames at a time: its ns/packet here is above \
             its cost at full load (see (a) and (b) for capacities). The generator hands frames \
             to the veth in batches of {BATCH_SAME_LOAD} here ({BATCH} elsewhere: a batch \
             reaches the 256-frame ring at once), and is held at the rate on average: every {} \
             ms it is paced faster by the frames it owes when other work took its CPU, slower \
             when it is ahead.",
            load.offered_pps / 1e6,
            load.ns_per_packet.0,
            load.ns_per_packet.1,
            load.ns_per_packet.2,
            load.runs,
            100.0 * client_pps / scenario.rate as f64,
            PACE_STEP.as_millis(),
        );
    }
    text.push_str(
        " \"kept\" is the share of the clients' packets sent during the window that UDP \
         delivered to their socket on the receiver; it includes what the veth ring lost.",
    );
    text
}

/// A ratio as `×0.42`; `—` where the scenario has no arm to compare with.
pub(super) fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("×{ratio:.2}")
    } else {
        "—".to_owned()
    }
}
