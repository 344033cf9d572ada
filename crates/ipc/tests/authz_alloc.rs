//! Matching a policy resource allocates nothing that grows with the topic: a long topic against
//! a pattern with wildcards costs no memory beyond the pattern (which the deployment sets).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use lichen_ipc::{ResourcePattern, ResourceStyle};

/// Counts the bytes each thread allocates (other threads of the harness do not count).
struct Counting;

thread_local! {
    // Const-initialised `Cell`: no lazy setup, so the allocator may touch it.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|n| n.set(n.get() + layout.size()));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn matching_a_long_topic_allocates_nothing() {
    let topic = format!("{}/end", "level/".repeat(10_000));
    for (pattern, style, expected) in [
        ("level/*/end", ResourceStyle::Standard, true),
        ("*/x/*", ResourceStyle::Standard, false),
        ("level/+/#", ResourceStyle::MqttStyle, true),
        ("+/+/+/nope", ResourceStyle::MqttStyle, false),
    ] {
        let compiled = ResourcePattern::parse(pattern, style);
        let before = ALLOCATED.with(Cell::get);
        let matched = compiled.matches(&topic);
        let allocated = ALLOCATED.with(Cell::get) - before;
        assert_eq!(matched, expected, "{pattern}");
        assert_eq!(
            allocated,
            0,
            "matching {pattern} on a {} byte topic allocated {allocated} bytes",
            topic.len()
        );
    }
}
