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
//! `cargo bench --bench step_memory -- REMAT` measures recomputation instead: a deep MLP
//! (32 blocks of Dense(256), BatchNorm and ReLU, batches of 1024) and CNN-M, each with nothing
//! recomputed, every block recomputed, and about √n segments. For each it prints the memory
//! held for the backward pass (the step's high-water mark above the heap in use before it,
//! which holds the params and the optimizer's velocities already, less the gradients, which
//! recomputation cannot shrink) and the median step time, both with their ratio to no
//! recomputation; the three settings take their steps in turn, so that they share the
//! machine's state.
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
        if size == "REMAT" {
            recomputation("deep MLP", |r| Box::new(workload::Workload::deep(r)));
            recomputation("CNN-M", |r| {
                Box::new(workload::Workload::cnn_recomputed(workload::CNN_M, r))
            });
            continue;
        }
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

/// A training step of some model, and the size of its gradients.
trait Step {
    fn step(&mut self) -> f32;
    fn gradient_bytes(&self) -> usize;
}

impl<M> Step for workload::Workload<M>
where
    M: tapegrad::Module<f32, Input = tapegrad::Tensor<f32>, Output = tapegrad::Tensor<f32>>,
{
    fn step(&mut self) -> f32 {
        workload::Workload::step(self)
    }
    fn gradient_bytes(&self) -> usize {
        self.variables.params().size() * std::mem::size_of::<f32>()
    }
}

/// The recomputation table's rows for one model: memory held for backward and median step
/// time for each setting, with ratios to no recomputation.
fn recomputation(model: &str, make: impl Fn(workload::Recompute) -> Box<dyn Step>) {
    const ROUNDS: usize = 30;
    let settings = workload::Recompute::ALL;
    let mut steps: Vec<Box<dyn Step>> = settings.iter().map(|&r| make(r)).collect();
    for step in &mut steps {
        for _ in 0..3 {
            step.step(); // warm: the optimizer's velocities exist from here on
        }
    }
    let held: Vec<usize> = steps
        .iter_mut()
        .map(|step| {
            let before = baseline();
            step.step();
            HIGH_WATER.load(Ordering::Relaxed) - before - step.gradient_bytes()
        })
        .collect();
    let mut times = vec![Vec::with_capacity(ROUNDS); settings.len()];
    for _ in 0..ROUNDS {
        for (step, times) in steps.iter_mut().zip(&mut times) {
            let started = std::time::Instant::now();
            std::hint::black_box(step.step());
            times.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect();
    for (i, setting) in settings.iter().enumerate() {
        println!(
            "{{\"model\": \"{model}\", \"recompute\": \"{}\", \"held_for_backward_mib\": {:.2}, \"memory_ratio\": {:.2}, \"median_step_ms\": {:.2}, \"time_ratio\": {:.2}}}",
            setting.name(),
            mib(held[i]),
            held[0] as f64 / held[i] as f64,
            medians[i],
            medians[i] / medians[0],
        );
    }
}
