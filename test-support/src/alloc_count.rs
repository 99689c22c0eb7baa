//! A global allocator that counts the allocations of the threads that ask
//! for it, for the tests that prove a path allocates nothing (the serve
//! path in `snp-certs`, a VM's certificate service in `vmm`).
//!
//! A test binary installs it once:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: test_support::alloc_count::CountingAllocator =
//!     test_support::alloc_count::CountingAllocator;
//! ```
//!
//! and measures a closure with [`allocations`]. Only the calling thread
//! is counted, so the test harness's other threads cannot disturb it.
//! Every call goes to the system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the allocations and reallocations of
/// a thread inside [`allocations`].
pub struct CountingAllocator;

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.with(|n| n.set(n.get().saturating_add(1)));
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counting only touches const-initialised thread locals, which allocate
// nothing.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The allocations `f` made on this thread (0 unless [`CountingAllocator`]
/// is the binary's global allocator).
pub fn allocations(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}
