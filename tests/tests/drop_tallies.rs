//! Drops counted on the CPU that made them (`DropTally`): a key over its limit counts its drops
//! in a slot of its CPU's own instead of its bucket, so that a key flooded from several CPUs is
//! only read by them. What a key dropped stays exact: its bucket plus its tallies, and a slot
//! that changes hands first adds what it held to its old key's bucket.

use limiter_common::key::Prefix;
use limiter_common::maps::{drop_tally_slot, BucketKey, DEFAULT_RULE_ID, DROP_TALLY_IDLE_JIFFIES};
use limiter_tests::frame;
use limiter_tests::object::{XdpObject, XDP_DROP, XDP_PASS};
use limiter_tests::require_root;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn packet(source: [u8; 4]) -> Vec<u8> {
    let ip = frame::Ipv4::udp(source, [198, 18, 0, 1]).packet(&[0; 16]);
    frame::ethernet([2; 6], [4; 6], frame::ETH_P_IPV4, &ip)
}

fn key(source: [u8; 4]) -> BucketKey {
    Prefix::new(IpAddr::V4(Ipv4Addr::from(source)), 32).to_bucket_key(DEFAULT_RULE_ID)
}

/// Two sources whose keys share a tally slot.
fn two_sharing_a_slot() -> ([u8; 4], [u8; 4]) {
    let first = [198, 18, 0, 10];
    let slot = drop_tally_slot(&key(first));
    let second = (11..=255u8)
        .map(|host| [198, 18, 0, host])
        .find(|&source| drop_tally_slot(&key(source)) == slot)
        .expect("of 245 sources, one shares the slot of the first (64 slots)");
    (first, second)
}

/// Sends `n` packets of `source`, expecting `verdict` for each.
fn send(object: &XdpObject, source: [u8; 4], n: usize, verdict: u32) {
    for i in 0..n {
        assert_eq!(
            object.run(&packet(source)),
            verdict,
            "packet {i} of {source:?}"
        );
    }
}

#[test]
fn drops_tallied_per_cpu_are_the_keys_own_and_reach_its_bucket_when_the_slot_changes_hands() {
    require_root();
    // One CPU for every run: a tally is per CPU.
    limiter_tests::traffic::pin_to_cpu(0);
    let object = XdpObject::load(1, 1);
    let (a, b) = two_sharing_a_slot();
    let dropped = |source| {
        let key = key(source);
        (
            object.raw_bucket(&key).unwrap().dropped,
            object.bucket(&key).unwrap().dropped,
        )
    };

    // A: its burst, then 10 drops. The first finds the key not yet exhausted and is counted in
    // the bucket (it reports the exhaustion); the 9 after it in this CPU's slot.
    send(&object, a, 1, XDP_PASS);
    send(&object, a, 10, XDP_DROP);
    assert_eq!(dropped(a), (1, 10), "(in the bucket, with the tally)");
    let slot = object.tallies(&key(a))[0];
    assert_eq!((slot.key, slot.dropped), (key(a), 9));

    // B, same slot, while A's is busy: B counts in its own bucket.
    send(&object, b, 1, XDP_PASS);
    send(&object, b, 5, XDP_DROP);
    assert_eq!(dropped(b), (5, 5));
    assert_eq!(dropped(a), (1, 10));

    // A's slot idle long enough: B's next drop takes it over, and A's 9 go to A's bucket.
    let tick = limiter_common::sys::tick_ns();
    std::thread::sleep(Duration::from_nanos(tick * (DROP_TALLY_IDLE_JIFFIES + 4)));
    send(&object, b, 3, XDP_DROP);
    assert_eq!(dropped(a), (10, 10), "A's tally went to its bucket");
    assert_eq!(dropped(b), (5, 8), "B's drops since in the slot it took");
    let slot = object.tallies(&key(b))[0];
    assert_eq!((slot.key, slot.dropped), (key(b), 3));
}
