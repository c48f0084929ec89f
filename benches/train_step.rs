//! The training step of the workload at sizes S, M and L (f32), and its forward and
//! backward halves. `cargo bench --bench train_step`.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

#[path = "support/workload.rs"]
mod workload;
use workload::{CNN_M, CNN_S, L, M, S, Workload};

fn train_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("train_step");
    for config in [S, M, L] {
        if config.name == "L" {
            group.sample_size(20);
        }
        let mut w = Workload::new(config);
        for _ in 0..5 {
            w.step();
        }
        group.bench_function(config.name, |b| b.iter(|| w.step()));
    }
    group.finish();
}

/// Forward alone (the tracked training-mode forward and loss), and backward alone.
fn halves(c: &mut Criterion) {
    let mut group = c.benchmark_group("halves");
    for config in [S, M, L] {
        if config.name == "L" {
            group.sample_size(20);
        }
        let w = Workload::new(config);
        let forward = || w.tracked_loss();
        group.bench_function(format!("forward/{}", config.name), |b| b.iter(forward));
        group.bench_function(format!("backward/{}", config.name), |b| {
            b.iter_batched(
                forward,
                |(loss, _params)| loss.backward().unwrap(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// The CNN of workload section 10 at its two sizes.
fn cnn_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("cnn_step");
    group.sample_size(20);
    for config in [CNN_S, CNN_M] {
        let mut w = Workload::cnn(config);
        for _ in 0..3 {
            w.step();
        }
        group.bench_function(config.name, |b| b.iter(|| w.step()));
    }
    group.finish();
}

criterion_group!(benches, train_step, halves, cnn_step);
criterion_main!(benches);
