//! Runs training steps in a loop, for profilers (`perf record`, `valgrind --tool=callgrind`):
//! `cargo bench --bench profile_step -- S 5000` prints the mean time per step.
//! (Criterion's timings are in `train_step`; this one exists to be profiled.)

#[path = "support/workload.rs"]
mod workload;

fn main() {
    // As the examples do, and as a PyTorch user's jemalloc would: freed arrays' memory is
    // kept for the next step (`runtime::retain_freed_memory`).
    tapegrad::runtime::retain_freed_memory();
    // cargo bench passes --bench; the size and the step count are the other arguments.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let size = args.first().map_or("S", String::as_str);
    let (per_step, loss) = match size {
        "CNN-S" => run(workload::Workload::cnn(workload::CNN_S), steps),
        "CNN-M" => run(workload::Workload::cnn(workload::CNN_M), steps),
        "M" => run(workload::Workload::new(workload::M), steps),
        "L" => run(workload::Workload::new(workload::L), steps),
        _ => run(workload::Workload::new(workload::S), steps),
    };
    println!("{size} x {steps} steps: {per_step:.1} us/step (last loss {loss})");
}

/// Runs `steps` steps; returns the mean microseconds per step and the last loss.
fn run<M>(mut w: workload::Workload<M>, steps: usize) -> (f64, f32)
where
    M: tapegrad::Module<f32, Input = tapegrad::Tensor<f32>, Output = tapegrad::Tensor<f32>>,
{
    let started = std::time::Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = w.step();
    }
    (started.elapsed().as_secs_f64() * 1e6 / steps as f64, loss)
}
