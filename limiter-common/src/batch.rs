//! Reading the whole bucket map in batches (`BPF_MAP_LOOKUP_BATCH`): thousands of entries per
//! system call instead of two per entry (`get_next_key` + `lookup`, as aya's iterator and
//! `bpftool map dump` do), which is what keeps `list`, `status` and metrics fast with a million
//! tracked keys. aya 0.14 has no batch API, so the calls are made here, for the agent and the
//! benchmarks alike.

use crate::maps::{BucketKey, BucketState};
use crate::sys::bpf;
use std::io;
use std::os::fd::RawFd;

/// `BPF_MAP_LOOKUP_BATCH` from linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call.
const CHUNK: usize = 8192;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `visit` for every entry of the hash map `map_fd` (keys `BucketKey`, values
/// `BucketState`). Entries added or evicted during the walk may or may not be seen, as with any
/// walk of a live map.
pub fn for_each_bucket(
    map_fd: RawFd,
    visit: impl FnMut(&BucketKey, &BucketState),
) -> io::Result<()> {
    let empty_key = BucketKey {
        family: 0,
        prefix_len: 0,
        _pad: 0,
        rule_id: 0,
        addr: [0; 16],
    };
    for_each_entry(map_fd, empty_key, BucketState::default(), visit)
}

/// Calls `visit` for every entry of the hash map `map_fd` of `u64` keys and `u64` values (the
/// API keys' quota counts), as [`for_each_bucket`] does.
pub fn for_each_u64_entry(map_fd: RawFd, visit: impl FnMut(&u64, &u64)) -> io::Result<()> {
    for_each_entry(map_fd, 0u64, 0u64, visit)
}

/// Calls `visit` for every entry of the hash map `map_fd`, whose keys are `K` and values `V`
/// (plain data of the map's key and value sizes; `empty_*` fill the buffers).
fn for_each_entry<K: Copy, V: Copy>(
    map_fd: RawFd,
    empty_key: K,
    empty_value: V,
    mut visit: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut keys = vec![empty_key; CHUNK];
    let mut values = vec![empty_value; CHUNK];
    // For hash maps the batch token is a bucket index (u32); no token starts from the beginning.
    let mut token_in: u32 = 0;
    let mut token_out: u32 = 0;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u32 as u64
            },
            out_batch: &mut token_out as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the kernel writes at most `count` keys and values into buffers of that many
        // elements of the map's key and value sizes (K and V: checked by the caller's typed map), and one
        // u32 token into `token_out`.
        let error = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        for i in 0..attr.count as usize {
            visit(&keys[i], &values[i]);
        }
        match error {
            None => {}
            // The end of the map.
            Some(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(err) => return Err(err),
        }
        token_in = token_out;
        first = false;
    }
}

/// `BPF_MAP_UPDATE_BATCH` (kernel 5.6) of `keys` → `values` into the hash map `map_fd`: how many
/// the kernel wrote (all of them unless it fails part-way, which is an error).
pub fn update_buckets(
    map_fd: RawFd,
    keys: &[BucketKey],
    values: &[BucketState],
) -> io::Result<usize> {
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    assert_eq!(keys.len(), values.len(), "one value per key");
    let count =
        u32::try_from(keys.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: map_fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: keys and values are arrays of `count` elements of the map's key and value types,
    // alive for the call; the kernel only reads them (and writes `attr.count`).
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    Ok(attr.count as usize)
}
