//! The coarse-clock fast path, in the kernel: a packet of a key far over its limit is dropped on
//! `bpf_ktime_get_coarse_ns` when that proves it over, without reading the precise clock; a pass
//! is only ever decided on the precise clock. These tests hold the fast path to that: it never
//! drops a packet the precise clock would have passed, it does take most drops of a slow key,
//! and a coarse clock later than the datapath assumes pauses it.

use limiter_common::bucket::{admit, Limit};
use limiter_common::key::Prefix;
use limiter_common::maps::{BucketKey, Counter, DEFAULT_RULE_ID};
use limiter_tests::frame;
use limiter_tests::object::{XdpObject, XDP_DROP, XDP_PASS};
use limiter_tests::require_root;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

const SOURCE: [u8; 4] = [198, 18, 0, 10];
const DESTINATION: [u8; 4] = [198, 18, 0, 1];

fn packet() -> Vec<u8> {
    let ip = frame::Ipv4::udp(SOURCE, DESTINATION).packet(&[0; 16]);
    frame::ethernet([2; 6], [4; 6], frame::ETH_P_IPV4, &ip)
}

fn key() -> BucketKey {
    Prefix::new(IpAddr::V4(Ipv4Addr::from(SOURCE)), 32).to_bucket_key(DEFAULT_RULE_ID)
}

/// CLOCK_MONOTONIC, the clock `bpf_ktime_get_ns` reads, ns.
fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A key at 10/s (an interval of 100 ms, longer than a tick) sent a packet every half
/// millisecond for 1.5 s. Around each run the test reads the key's TAT and the precise clock:
/// the program's own reading lies between `before` and `after`, so a packet it dropped must be
/// over the limit at `before` already, and one it passed within it at `after`. That holds as
/// long as the jiffies lag no more than a tick and a quarter; a tick that stalls longer (a
/// virtual CPU its host did not run) must be noticed by the program (`coarse_clock_late`), and
/// costs at most the drops until the next sampled one (one in 64) — the only wrong drops
/// allowed. The fast path is seen at work: most drops are counted as proven on the jiffies.
#[test]
fn a_drop_on_the_coarse_clock_never_holds_a_packet_the_precise_clock_passes() {
    require_root();
    let (rate, burst) = (10, 2);
    let limit = Limit::new(rate, burst);
    assert!(
        limiter_common::sys::tick_ns() > 0,
        "the kernel tells its tick"
    );
    let object = XdpObject::load(rate, burst);
    let packet = packet();
    let key = key();
    assert_eq!(object.run(&packet), XDP_PASS, "the key's first packet");
    let start = Instant::now();
    let (mut passed, mut dropped, mut wrong) = (1u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_millis(1500) {
        let tat = object.bucket(&key).expect("the key is tracked").tat_ns;
        let before = monotonic_ns();
        let verdict = object.run(&packet);
        let after = monotonic_ns();
        match verdict {
            XDP_PASS => {
                assert!(
                    admit(tat, after, &limit).is_some(),
                    "passed a packet over the limit (TAT {tat}, clock at most {after})"
                );
                passed += 1;
            }
            XDP_DROP => {
                if admit(tat, before, &limit).is_some() {
                    eprintln!("dropped a packet the precise clock passes (TAT {tat}, clock at least {before})");
                    wrong += 1;
                }
                dropped += 1;
            }
            other => panic!("verdict {other}"),
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let state = object.bucket(&key).unwrap();
    assert_eq!((state.passed, state.dropped), (passed, dropped));
    let late = object.counter(Counter::CoarseClockLate);
    assert!(
        wrong <= 64 * late,
        "{wrong} packets dropped that the precise clock passes; the jiffies were found late \
         {late} times"
    );
    let coarse = object.counter(Counter::CoarseDrops);
    assert!(
        coarse * 2 > dropped,
        "{coarse} of {dropped} drops on the coarse clock: the fast path is not taken"
    );
}

/// The program told a tick of 1 µs (the real one is milliseconds): the jiffies then seem to lag
/// the precise clock by far more than a tick. The fast path trusts them at first, and the first
/// drop that reads both clocks after it learnt its base — one in 64 of a key's drops does, at
/// the latest — finds them late, counts it and pauses the fast path. With the tick 0 the fast
/// path is off: every drop reads the precise clock.
#[test]
fn a_coarse_clock_later_than_assumed_pauses_the_fast_path() {
    require_root();
    let packet = packet();
    let object = XdpObject::load_with_tick(10, 2, 1_000);
    let verdicts: Vec<u32> = (0..300).map(|_| object.run(&packet)).collect();
    assert_eq!(&verdicts[..2], [XDP_PASS, XDP_PASS], "the burst");
    assert!(verdicts[2..].iter().all(|&v| v == XDP_DROP));
    let late = object.counter(Counter::CoarseClockLate);
    let coarse = object.counter(Counter::CoarseDrops);
    assert!(late >= 1, "the late jiffies went unnoticed");
    assert!(
        (1..64).contains(&coarse),
        "{coarse} drops on the coarse clock: expected some, then none once paused"
    );
    for _ in 0..100 {
        object.run(&packet);
    }
    assert_eq!(
        object.counter(Counter::CoarseDrops),
        coarse,
        "the fast path went on while paused"
    );

    let off = XdpObject::load_with_tick(10, 2, 0);
    for _ in 0..300 {
        off.run(&packet);
    }
    assert_eq!(off.bucket(&key()).unwrap().dropped, 298);
    assert_eq!(off.counter(Counter::CoarseDrops), 0);
}
