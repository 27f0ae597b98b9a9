//! A synthetic usage history, for the benchmark (`cargo xtask bench --only usage`): days of
//! minutes written through the agent's own recording path — the minute's busiest keys, the
//! hour sums, pruning — as if `keys` keys had sent traffic, `per_minute` of them each minute in
//! turn, so that every key has rows every few minutes and every hour holds all of them.

use super::{Counts, History, Recorder};
use anyhow::{ensure, Context};
use limiter_common::key::Prefix;
use limiter_common::maps::BucketKey;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Args)]
pub struct FillArgs {
    /// The state directory to write `usage.redb` in (refused when one is there).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Keys in all: half API keys, half sources of 198.18.0.0/16.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u32,
    /// Keys with traffic in each minute (and so kept: `[usage] keys` at least this).
    #[arg(long, default_value_t = 1000)]
    pub per_minute: u32,
    /// Days of minutes, ending now.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
}

/// Writes the history; prints what it wrote and how long the writes took.
pub fn fill(args: &FillArgs) -> anyhow::Result<()> {
    let path = args.state_dir.join(super::store::FILE);
    ensure!(
        !path.exists(),
        "{} exists: a synthetic history goes only where there is none",
        path.display()
    );
    ensure!(
        (1..=args.keys).contains(&args.per_minute) && args.keys <= 65_536 * 2,
        "--per-minute must be between 1 and --keys, and --keys at most 131072"
    );
    let history = History::open(&args.state_dir)?;
    let mut recorder = Recorder {
        sampler: Default::default(),
        minute: None,
        failing_since: None,
        reopened_at: None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock")?
        .as_secs()
        / 60;
    let minutes = u64::from(args.days) * 24 * 60;
    let keys: Vec<BucketKey> = (0..args.keys).map(bucket).collect();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for (i, minute) in (now - minutes + 1..=now).enumerate() {
        let at = UNIX_EPOCH + Duration::from_secs(minute * 60 + 30);
        let first = (i as u64 * u64::from(args.per_minute)) % u64::from(args.keys);
        let deltas: Vec<(BucketKey, Counts)> = (0..u64::from(args.per_minute))
            .map(|j| {
                let k = ((first + j) % u64::from(args.keys)) as usize;
                let counts = Counts {
                    passed: 1 + (k as u64 * 7 + minute) % 500,
                    dropped: (k as u64 + minute) % 50,
                };
                (keys[k], counts)
            })
            .collect();
        let write = Instant::now();
        history.record_deltas(&mut recorder, &deltas, args.per_minute as usize, at);
        slowest = slowest.max(write.elapsed());
        if recorder.failing_since.is_some() {
            anyhow::bail!("writing minute {minute} failed (see above)");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path)?.len();
    let (minute_rows, hour_rows, names) = history.store.sizes()?;
    // One line for the benchmark to read.
    println!(
        "minutes={minutes} keys={} per_minute={} secs={secs:.3} mean_write_ms={:.3} \
         slowest_write_ms={:.3} bytes={size} minute_rows={minute_rows} hour_rows={hour_rows} \
         names={names}",
        args.keys,
        args.per_minute,
        secs * 1000.0 / minutes as f64,
        slowest.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Key `k`: even ones API keys (a hash of `k`), odd ones sources 198.18.x.y.
fn bucket(k: u32) -> BucketKey {
    if k.is_multiple_of(2) {
        let mut hash = u64::from(k).wrapping_add(0x9e37_79b9_7f4a_7c15);
        hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        limiter_common::charge::api_key(hash ^ (hash >> 31))
    } else {
        let host = k / 2;
        let addr = Ipv4Addr::new(198, 18, (host >> 8) as u8, host as u8);
        Prefix::new(IpAddr::V4(addr), 32).to_bucket_key(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::UsageKey;
    use super::*;

    #[test]
    fn synthetic_keys_are_distinct_and_named_as_the_agent_names_them() {
        let names: std::collections::HashSet<String> = (0..1000)
            .map(|k| UsageKey::of(&bucket(k)).unwrap().to_string())
            .collect();
        assert_eq!(names.len(), 1000);
        assert!(names.contains("198.18.0.0/32") && names.contains("198.18.1.243/32"));
    }
}
