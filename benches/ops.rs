//! Per-op overhead and matmul throughput. `cargo bench --bench ops`.
//!
//! * `overhead/chain_of_1000_adds`: 1,000 tracked adds of 4-element arrays, then backward:
//!   the cost of recording a node, allocating an output and dispatching, with no arithmetic
//!   to hide it.
//! * `matmul/*`: the L-size products of the training step, the tensor op (a large product's
//!   row halves on two cores, src/kernels/gemm.rs) against the raw GEMM of the same shapes
//!   (`ndarray::dot`: `matrixmultiply` on one thread, as tapegrad builds it); criterion
//!   reports the throughput in elements, here multiply-adds, so GFLOP/s = 2 x the reported
//!   Gelem/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::{Array2, ArrayD};
use tapegrad::{Tape, Tensor};

fn overhead(c: &mut Criterion) {
    let mut group = c.benchmark_group("overhead");
    group.bench_function("chain_of_1000_adds", |b| {
        let one = Tensor::constant(ArrayD::<f32>::ones(vec![4]));
        b.iter(|| {
            let tape = Tape::new();
            let mut x = tape.leaf("x", ArrayD::<f32>::ones(vec![4]));
            let start = x.clone();
            for _ in 0..1000 {
                x = x.add(&one).unwrap();
            }
            let grads = x.sum_all().backward().unwrap();
            grads.get(&start).map(|g| g[[0]])
        })
    });
    group.bench_function("chain_of_1000_adds_untracked", |b| {
        let one = Tensor::constant(ArrayD::<f32>::ones(vec![4]));
        b.iter(|| {
            let mut x = Tensor::constant(ArrayD::<f32>::ones(vec![4]));
            for _ in 0..1000 {
                x = x.add(&one).unwrap();
            }
            x.value()[[0]]
        })
    });
    group.finish();
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul");
    group.sample_size(20);
    // (rows, inner, cols) of the L step's forward products.
    for (m, k, n) in [(512, 256, 1024), (512, 1024, 1024), (512, 1024, 10)] {
        group.throughput(Throughput::Elements((m * k * n) as u64));
        let a = Array2::<f32>::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 * 0.1);
        let b = Array2::<f32>::from_shape_fn((k, n), |(i, j)| ((i * 5 + j * 2) % 13) as f32 * 0.1);
        group.bench_function(format!("raw_gemm/{m}x{k}x{n}"), |bench| {
            bench.iter(|| a.dot(&b))
        });
        let (ta, tb) = (
            Tensor::constant(a.clone().into_dyn()),
            Tensor::constant(b.clone().into_dyn()),
        );
        group.bench_function(format!("tensor/{m}x{k}x{n}"), |bench| {
            bench.iter(|| ta.matmul(&tb).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, overhead, matmul);
criterion_main!(benches);
