//! The map values several CPUs update at once, behind two small types whose constructors carry
//! the one safety argument: a pointer from a map lookup stays valid, and 8-byte aligned, for the
//! whole program run (the kernel frees a map value only after an RCU grace period, and a program
//! run is one read-side critical section). Everything else is a safe method: atomic updates,
//! and single aligned loads and stores, which a concurrent update never tears.

use core::intrinsics::{atomic_and, atomic_cxchg, atomic_or, atomic_xadd, AtomicOrdering};
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use limiter_common::maps::BucketState;

/// One `u64` in a map value, shared between CPUs.
#[derive(Clone, Copy)]
pub struct Word(*mut u64);

impl Word {
    /// # Safety
    ///
    /// `ptr` comes from a map lookup of this program run (or points inside such a value), and
    /// is 8-byte aligned.
    #[inline(always)]
    pub unsafe fn new(ptr: *mut u64) -> Word {
        Word(ptr)
    }

    #[inline(always)]
    pub fn load(self) -> u64 {
        // SAFETY: valid and aligned for the program run (see `new`); a single 8-byte load.
        unsafe { read_volatile(self.0) }
    }

    #[inline(always)]
    pub fn store(self, value: u64) {
        // SAFETY: as in `load`; a single 8-byte store.
        unsafe { write_volatile(self.0, value) }
    }

    /// Compare-and-swap: the value found, and whether it was `current` and is now `new`.
    #[inline(always)]
    pub fn compare_exchange(self, current: u64, new: u64) -> (u64, bool) {
        // SAFETY: as in `load`; an atomic instruction.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                self.0, current, new,
            )
        }
    }

    /// Adds one; atomic.
    #[inline(always)]
    pub fn increment(self) {
        self.add(1);
    }

    /// Adds `n`; atomic.
    #[inline(always)]
    pub fn add(self, n: u64) {
        // SAFETY: as in `load`; an atomic instruction.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(self.0, n) };
    }

    /// Sets `bits`; the value before.
    #[inline(always)]
    pub fn fetch_or(self, bits: u64) -> u64 {
        // SAFETY: as in `load`; an atomic instruction.
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(self.0, bits) }
    }

    /// Clears `bits`.
    #[inline(always)]
    pub fn clear(self, bits: u64) {
        // SAFETY: as in `load`; an atomic instruction.
        unsafe { atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(self.0, !bits) };
    }
}

/// A tracked key's value in `BUCKETS`.
#[derive(Clone, Copy)]
pub struct Bucket(*mut BucketState);

impl Bucket {
    /// # Safety
    ///
    /// `ptr` comes from a lookup in `BUCKETS` during this program run.
    #[inline(always)]
    pub unsafe fn new(ptr: *mut BucketState) -> Bucket {
        Bucket(ptr)
    }

    #[inline(always)]
    pub fn tat(self) -> Word {
        // SAFETY: a field of the value `new` was given; BucketState is repr(C) with u64 fields.
        unsafe { Word::new(addr_of_mut!((*self.0).tat_ns)) }
    }

    #[inline(always)]
    pub fn passed(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(addr_of_mut!((*self.0).passed)) }
    }

    #[inline(always)]
    pub fn dropped(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(addr_of_mut!((*self.0).dropped)) }
    }

    #[inline(always)]
    pub fn would_drop(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(addr_of_mut!((*self.0).would_drop)) }
    }

    #[inline(always)]
    pub fn flags(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(addr_of_mut!((*self.0).flags)) }
    }
}
