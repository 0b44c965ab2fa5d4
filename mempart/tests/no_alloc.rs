//! The allocate/free path performs no heap allocation, even with subscribers listening.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use mempart::{ClassSpec, Credential, Engine, EventFilter, Limits, NewPartition, Spawn};

/// Counts the allocations each thread makes, then defers to `System`.
struct Counting;

thread_local! {
    /// Allocations made by this thread (other threads of the test harness do not count).
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // A thread being torn down has no counter left; its allocations are not ours.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn allocate_and_free_at_depth_eight_make_no_heap_allocation() {
    const MIB: u64 = 1 << 20;
    let host = Credential::Host;
    let mut e = Engine::new(&[ClassSpec::new("sysram", 1 << 30)]).unwrap_or_else(|e| panic!("{e}"));
    let mut path = String::from("/partition/mem/sysram");
    for depth in 1..=8 {
        path.push_str(&format!("/d{depth}"));
        let spec = NewPartition {
            limits: Limits {
                min: MIB,
                max: 512 * MIB,
            },
            ..NewPartition::default()
        };
        e.create(&host, &path, spec)
            .unwrap_or_else(|e| panic!("{e}"));
        let filter = EventFilter {
            threshold: Some(2 * MIB),
            delta: Some(MIB),
            ..EventFilter::default()
        };
        e.subscribe(&host, &path, filter, 4096)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    e.process_start(&host, 1, None, &Spawn::SetMpart(vec![path]))
        .unwrap_or_else(|e| panic!("{e}"));
    let sysram = e.class_id("sysram").unwrap_or_else(|| panic!("sysram"));

    let before = allocations();
    assert!(before > 0, "the counting allocator is not in use");
    let mut failures = 0;
    for _ in 0..1000 {
        match e.allocate(1, sysram, 3 * MIB) {
            Ok(grant) => {
                if e.free(1, grant).is_err() {
                    failures += 1;
                }
            }
            Err(_) => failures += 1,
        }
    }
    let made = allocations() - before;
    assert_eq!(failures, 0);
    assert_eq!(made, 0, "{made} heap allocations on the allocate/free path");
    let metrics = e
        .metrics(&host, "/partition/mem/sysram/d1")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(metrics.highest, 3 * MIB);
}
