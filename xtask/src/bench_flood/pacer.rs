//! How fast the generator sends: just above what the receiver takes, or one fixed rate.

use super::generator::{GenConfig, GenState};
use super::receiver::{NapiThread, Schedstat, StackFiles};
use aya::maps::{Array, MapData, PerCpuArray};
use std::time::{Duration, Instant};

/// Keeps the generator just above what the receiver can take, so that the receiver always has
/// frames waiting (the generator is not what limits it) and the veth ring overflows little.
/// Every `PACE_STEP` it estimates the receiver's capacity — packets processed per second of its
/// NAPI thread's CPU time, smoothed — and paces the generator to `PACE_HEADROOM` × that. Above
/// `PACE_CEILING` the generator runs unpaced, flat out. Or, `fixed`, it keeps the generator at
/// a given rate whatever the receiver ([`Load::SameForAll`]).
///
/// [`Load::SameForAll`]: super::model::Load::SameForAll
pub(super) struct Pacer<'a> {
    map: &'a mut Array<MapData, GenConfig>,
    config: GenConfig,
    stack: &'a StackFiles,
    napi: &'a NapiThread,
    /// Frames per batch of the generator.
    batch: u32,
    fixed: Option<FixedRate<'a>>,
    /// Packets per CPU-second of the receiver, smoothed.
    capacity: Option<f64>,
    /// rx packets and NAPI run time at the last step.
    last: Option<(u64, u64)>,
}

pub(super) const PACE_STEP: Duration = Duration::from_millis(20);
pub(super) const PACE_HEADROOM: f64 = 1.1;
/// The rate the generator starts at, until the receiver's capacity is known.
pub(super) const PACE_START: f64 = 1_000_000.0;
/// Above this rate the generator is not paced at all (paced, it reads the clock for every
/// frame, and tops out at ~7 Mpps here).
const PACE_CEILING: f64 = 6_000_000.0;

impl<'a> Pacer<'a> {
    /// Paces the generator whose configuration is `config` (written to `map` as it changes),
    /// batches of `batch` frames, to the receiver measured through `stack` and `napi` — or to
    /// `fixed`.
    pub(super) fn new(
        map: &'a mut Array<MapData, GenConfig>,
        config: GenConfig,
        stack: &'a StackFiles,
        napi: &'a NapiThread,
        batch: u32,
        fixed: Option<FixedRate<'a>>,
    ) -> Pacer<'a> {
        Pacer {
            map,
            config,
            stack,
            napi,
            batch,
            fixed,
            capacity: None,
            last: None,
        }
    }

    pub(super) fn run_for(&mut self, duration: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + duration;
        loop {
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            std::thread::sleep(PACE_STEP.min(end - now));
            self.step()?;
        }
    }

    fn step(&mut self) -> anyhow::Result<()> {
        if let Some(fixed) = &mut self.fixed {
            let interval = fixed.step()?;
            return self.set_interval(interval);
        }
        let rx = self.stack.rx_packets()?;
        let run_ns = Schedstat::read(self.napi.pid)?.run_ns;
        if let Some((rx_before, run_before)) = self.last {
            let processed = rx.saturating_sub(rx_before) as f64;
            let run = run_ns.saturating_sub(run_before) as f64 / 1e9;
            // Steps where the receiver hardly ran say little.
            if run > 0.002 && processed > 1000.0 {
                let now = processed / run;
                self.capacity = Some(self.capacity.map_or(now, |c| 0.5 * c + 0.5 * now));
            }
            let rate = self.capacity.map_or(f64::INFINITY, |c| c * PACE_HEADROOM);
            let interval = if rate >= PACE_CEILING {
                0
            } else {
                (1e9 / rate) as u64
            };
            self.set_interval(interval)?;
        }
        self.last = Some((rx, run_ns));
        Ok(())
    }

    fn set_interval(&mut self, interval: u64) -> anyhow::Result<()> {
        if interval != self.config.pace_interval_ns {
            self.config.pace_interval_ns = interval;
            // A pause of the generator thread is caught up by one batch at most.
            self.config.pace_slack_ns = interval * u64::from(self.batch);
            self.map.set(0, self.config, 0)?;
        }
        Ok(())
    }
}

/// The generator's interval between frames for `rate` frames per second (0: unpaced).
pub(super) fn fixed_interval(rate: f64) -> u64 {
    if rate >= PACE_CEILING {
        0
    } else {
        (1e9 / rate).round() as u64
    }
}

/// Keeps the generator at `rate` on average. The generator itself keeps one frame per interval
/// while it runs, but loses the time it does not (other work took its CPU; the pacing's slack
/// catches up one batch): every `PACE_STEP` this counts the frames it sent against those due,
/// and paces it faster by what it owes, spread over `CATCH_UP` (or slower when it is ahead).
pub(super) struct FixedRate<'a> {
    rate: f64,
    frames: &'a PerCpuArray<MapData, GenState>,
    /// When the last step was, and the generator's frames then.
    last: Option<(Instant, u64)>,
    /// Frames due and not sent (negative: sent ahead), within ± `CATCH_UP` of the rate.
    owed: f64,
}

/// How quickly [`FixedRate`] makes up for frames the generator owes.
const CATCH_UP: Duration = Duration::from_millis(100);

impl<'a> FixedRate<'a> {
    /// `rate` frames per second, counted in the generator's `frames`.
    pub(super) fn new(rate: f64, frames: &'a PerCpuArray<MapData, GenState>) -> FixedRate<'a> {
        FixedRate {
            rate,
            frames,
            last: None,
            owed: 0.0,
        }
    }

    /// The interval for the generator until the next step.
    fn step(&mut self) -> anyhow::Result<u64> {
        if self.rate >= PACE_CEILING {
            return Ok(0);
        }
        let now = Instant::now();
        let frames: u64 = self.frames.get(&0, 0)?.iter().map(|s| s.frames).sum();
        if let Some((at, before)) = self.last {
            let due = self.rate * (now - at).as_secs_f64();
            let bound = self.rate * CATCH_UP.as_secs_f64();
            self.owed =
                (self.owed + due - frames.saturating_sub(before) as f64).clamp(-bound, bound);
        }
        self.last = Some((now, frames));
        // Paced still at the catch-up's fastest (the generator's paced maximum is above it).
        let rate =
            (self.rate + self.owed / CATCH_UP.as_secs_f64()).clamp(self.rate / 2.0, PACE_CEILING);
        Ok((1e9 / rate).round() as u64)
    }
}
