//! Heap use of one training step, counted by a global allocator:
//! `cargo bench --bench step_memory -- S M L`.
//!
//! For each size it prints, in MiB above the heap in use before the step:
//! * `step_peak`: the high-water mark of one `value_and_grad` step (forward, backward, SGD,
//!   merge of the new statistics);
//! * `backward_peak`: the high-water mark of a tape driven by hand, from the forward pass to
//!   the end of `backward`;
//! * `kept_by_gradients`: what is still allocated once everything but the [`LeafGradients`] of
//!   that backward pass has been dropped (the gradients themselves, plus whatever they keep
//!   alive of the tape);
//! * `gradients_alone`: the size of the gradient arrays, for comparison with the above;
//! * `peak_rss_mib`: the process's VmHWM, as the peer scripts report it.
//!
//! [`LeafGradients`]: tapegrad::LeafGradients

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

#[path = "support/workload.rs"]
mod workload;

/// The system allocator, counting the bytes in use and their high-water mark.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = IN_USE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    HIGH_WATER.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Starts a measurement: the high-water mark is reset to what is in use now.
fn baseline() -> usize {
    let now = IN_USE.load(Ordering::Relaxed);
    HIGH_WATER.store(now, Ordering::Relaxed);
    now
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    // As the examples do, and as a PyTorch user's jemalloc would: freed arrays' memory is
    // kept for the next step (`runtime::retain_freed_memory`).
    tapegrad::runtime::retain_freed_memory();
    for size in workload::sizes_from_args() {
        let config = match size.as_str() {
            "S" => workload::S,
            "M" => workload::M,
            "L" => workload::L,
            other => {
                eprintln!("unknown size {other}: S, M or L");
                continue;
            }
        };
        let mut w = workload::Workload::new(config);
        for _ in 0..3 {
            w.step(); // warm: the optimizer's velocities exist from here on
        }

        let before = baseline();
        w.step();
        let step_peak = HIGH_WATER.load(Ordering::Relaxed) - before;

        let before = baseline();
        let gradients = w.backward_by_hand();
        let backward_peak = HIGH_WATER.load(Ordering::Relaxed) - before;
        let kept = IN_USE.load(Ordering::Relaxed) - before;
        let gradients_alone = w.variables.params().size() * std::mem::size_of::<f32>();
        drop(gradients);

        println!(
            "{{\"peer\": \"tapegrad\", \"config\": \"{}\", \"step_peak_mib\": {:.2}, \"backward_peak_mib\": {:.2}, \"kept_by_gradients_mib\": {:.2}, \"gradients_alone_mib\": {:.2}, \"peak_rss_mib\": {:.1}}}",
            config.name,
            mib(step_peak),
            mib(backward_peak),
            mib(kept),
            mib(gradients_alone),
            workload::peak_rss_mib()
        );
    }
}
