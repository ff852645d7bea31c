//! A `GlobalAlloc` wrapper around [`System`] that counts live heap bytes, for benchmarks.
//!
//! It lives in its own crate because coordinosaur forbids `unsafe_code` in every target
//! (`[lints.rust]` in its Cargo.toml), and implementing `GlobalAlloc` needs `unsafe impl`.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: counting_alloc::Counting = counting_alloc::Counting::new();
//! let before = ALLOC.live_bytes();
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};

/// Counts bytes requested from [`System`] and not yet freed (requested sizes, not the
/// allocator's rounded-up block sizes), and the number of allocation calls.
#[derive(Debug)]
pub struct Counting {
    live: AtomicIsize,
    allocs: AtomicU64,
}

impl Counting {
    /// A counter at zero.
    pub const fn new() -> Counting {
        Counting {
            live: AtomicIsize::new(0),
            allocs: AtomicU64::new(0),
        }
    }

    /// Bytes currently allocated through this allocator.
    pub fn live_bytes(&self) -> isize {
        self.live.load(Ordering::Relaxed)
    }

    /// Allocation calls (alloc, alloc_zeroed and realloc) so far.
    pub fn allocations(&self) -> u64 {
        self.allocs.load(Ordering::Relaxed)
    }
}

impl Default for Counting {
    fn default() -> Self {
        Counting::new()
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters never affect the result.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            self.live
                .fetch_add(layout.size() as isize, Ordering::Relaxed);
            self.allocs.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            self.live
                .fetch_add(layout.size() as isize, Ordering::Relaxed);
            self.allocs.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) };
        self.live
            .fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            self.live.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            self.allocs.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}
