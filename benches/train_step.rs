//! The training step of the workload at sizes S, M and L (f32), and its forward and
//! backward halves, and the optimizer's update alone. `cargo bench --bench train_step`.

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

#[path = "support/workload.rs"]
mod workload;
use tapegrad::optim::{Adam, Optimizer};
use tapegrad::{Grads, runtime};
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

/// The optimizer's update alone on the workload's params (M: 86 K, L: 1.3 M), SGD momentum
/// and Adam, on one thread and on two: memory-bound elementwise passes, split over the threads
/// above 2^16 elements.
fn optimizer_update(c: &mut Criterion) {
    let threads_before = runtime::num_threads();
    let mut group = c.benchmark_group("optimizer_update");
    for config in [M, L] {
        let mut w = Workload::new(config);
        let grads = Grads::zeros_like(w.variables.params())
            .map(|_, zeros| zeros.mapv(|_| 1e-3))
            .unwrap();
        let mut adam = Adam::new(1e-3);
        for threads in [1, 2] {
            runtime::set_num_threads(threads).unwrap();
            let name = format!("{}/{threads}_threads", config.name);
            group.bench_function(format!("sgd/{name}"), |b| {
                b.iter(|| {
                    w.optimizer
                        .update(w.variables.params_mut(), &grads)
                        .unwrap()
                })
            });
            group.bench_function(format!("adam/{name}"), |b| {
                b.iter(|| adam.update(w.variables.params_mut(), &grads).unwrap())
            });
        }
    }
    runtime::set_num_threads(threads_before).unwrap();
    group.finish();
}

criterion_group!(benches, train_step, halves, cnn_step, optimizer_update);
criterion_main!(benches);
