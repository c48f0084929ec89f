//! The training step timed exactly as the peer scripts time theirs (benches/peers/, workload
//! section 8): warm-up steps, then each timed step measured alone with a wall clock; prints one
//! JSON line per size with the median, p10 and p90 in microseconds, like the peers do.
//! `cargo bench --bench step_times -- S M L CNN-S CNN-M`. (criterion's statistics are in `train_step`.)

use std::time::Instant;

#[path = "support/workload.rs"]
mod workload;

fn main() {
    // As the examples do, and as a PyTorch user's jemalloc would: freed arrays' memory is
    // kept for the next step (`runtime::retain_freed_memory`).
    tapegrad::runtime::retain_freed_memory();
    for size in workload::sizes_from_args() {
        match size.as_str() {
            "S" => report(
                workload::S.name,
                workload::Workload::new(workload::S),
                200,
                500,
            ),
            "M" => report(
                workload::M.name,
                workload::Workload::new(workload::M),
                100,
                300,
            ),
            "L" => report(
                workload::L.name,
                workload::Workload::new(workload::L),
                20,
                60,
            ),
            "CNN-S" => report(
                workload::CNN_S.name,
                workload::Workload::cnn(workload::CNN_S),
                100,
                300,
            ),
            "CNN-M" => report(
                workload::CNN_M.name,
                workload::Workload::cnn(workload::CNN_M),
                10,
                40,
            ),
            other => eprintln!("unknown size {other}: S, M, L, CNN-S or CNN-M"),
        }
    }
}

/// Times `w`'s step and prints its JSON line.
fn report<M>(name: &str, mut w: workload::Workload<M>, warmup: usize, timed: usize)
where
    M: tapegrad::Module<f32, Input = tapegrad::Tensor<f32>, Output = tapegrad::Tensor<f32>>,
{
    let started = Instant::now();
    let first_loss = w.step();
    let first_step_s = started.elapsed().as_secs_f64();
    for _ in 0..warmup {
        w.step();
    }
    let mut times: Vec<f64> = (0..timed)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(w.step());
            started.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"peer\": \"tapegrad\", \"config\": \"{name}\", \"median_us\": {:.1}, \"p10_us\": {:.1}, \"p90_us\": {:.1}, \"first_step_s\": {:.3}, \"first_loss\": {:.4}, \"peak_rss_mib\": {:.1}}}",
        quantile(&times, 0.5),
        quantile(&times, 0.1),
        quantile(&times, 0.9),
        first_step_s,
        first_loss,
        workload::peak_rss_mib()
    );
}

/// The `q` quantile of sorted values, interpolating linearly between order statistics (as
/// numpy's default `percentile`, which the Python peers use).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (at - low as f64)
}
