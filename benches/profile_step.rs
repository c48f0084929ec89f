//! Runs training steps in a loop, for profilers (`perf record`, `valgrind --tool=callgrind`):
//! `cargo bench --bench profile_step -- S 5000` prints the mean time per step.
//! (Criterion's timings are in `train_step`; this one exists to be profiled.)

#[path = "support/workload.rs"]
mod workload;

fn main() {
    // cargo bench passes --bench; the size and the step count are the other arguments.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let config = match args.first().map(String::as_str) {
        Some("M") => workload::M,
        Some("L") => workload::L,
        _ => workload::S,
    };
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200);
    let mut w = workload::Workload::new(config);
    let started = std::time::Instant::now();
    let mut loss = 0.0;
    for _ in 0..steps {
        loss = w.step();
    }
    let per_step = started.elapsed().as_secs_f64() * 1e6 / steps as f64;
    println!(
        "{} x {steps} steps: {per_step:.1} us/step (last loss {loss})",
        config.name
    );
}
