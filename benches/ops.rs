//! Per-op overhead and matmul throughput. `cargo bench --bench ops`.
//!
//! * `overhead/chain_of_1000_adds`: 1,000 tracked adds of 4-element arrays, then backward:
//!   the cost of recording a node, allocating an output and dispatching, with no arithmetic
//!   to hide it.
//!   (criterion; `cargo bench --bench ops -- overhead`.)
//! * `gemm`: a table of the GEMM candidates' rates, GFLOP/s, at the products of the S, M and L
//!   steps (forward and backward) and the CNN's convolutions: `matrixmultiply` and the `gemm`
//!   crate on one thread, tapegrad's `matmul` op on each kernel path the CPU has (one thread)
//!   and on every thread, and with `--features openblas` the system's OpenBLAS (the
//!   reference). `cargo bench --bench ops -- gemm`; `docs/performance.md` has the figures.
//! * `handoff`: what handing a share of a product to a worker thread costs, awake and asleep.
//! * `pooling`: 2×2 max and average pooling, forward and backward, of CNN-M's first
//!   activations `(64, 26, 26, 32)` on one thread and on two (criterion;
//!   `cargo bench --bench ops -- pooling`).

use std::time::Instant;

use criterion::Criterion;
use ndarray::{Array2, ArrayD};
use tapegrad::runtime::{self, KernelPath};
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

/// Pooling's forward and backward at CNN-M's first pooling, on one thread and on two: passes
/// over images in chunks of 2^16 elements, split over the threads.
fn pooling(c: &mut Criterion) {
    // As the step benchmarks do: freed arrays' memory is kept, so that each iteration does
    // not fault its 12 MB of arrays in afresh (which was most of the time measured). It is
    // process-wide: the groups above have run already.
    runtime::retain_freed_memory();
    let threads_before = runtime::num_threads();
    let mut group = c.benchmark_group("pooling");
    let x = ArrayD::from_shape_fn(vec![64, 26, 26, 32], |i| {
        ((i[0] * 7 + i[1] * 5 + i[2] * 3 + i[3]) as f32 * 0.1).sin()
    });
    for threads in [1, 2] {
        runtime::set_num_threads(threads).unwrap();
        for max in [true, false] {
            let name = format!("{}/{threads}_threads", if max { "max" } else { "avg" });
            group.bench_function(name, |b| {
                b.iter(|| {
                    let tape = Tape::new();
                    let leaf = tape.leaf("x", x.clone());
                    let y = if max {
                        leaf.max_pool([2, 2], [2, 2], tapegrad::Padding::Valid)
                    } else {
                        leaf.avg_pool([2, 2], [2, 2], tapegrad::Padding::Valid)
                    }
                    .unwrap();
                    y.sum_all()
                        .backward()
                        .unwrap()
                        .get(&leaf)
                        .map(|g| g[[0, 0, 0, 0]])
                })
            });
        }
    }
    runtime::set_num_threads(threads_before).unwrap();
    group.finish();
}

/// A product of the workload: `a (m, k) · b (k, n)`, either operand possibly a transposed view
/// (how backward reads its operands).
struct Product {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    a_transposed: bool,
    b_transposed: bool,
}

const fn product(
    name: &'static str,
    (m, k, n): (usize, usize, usize),
    (ta, tb): (bool, bool),
) -> Product {
    Product {
        name,
        m,
        k,
        n,
        a_transposed: ta,
        b_transposed: tb,
    }
}

/// The products of a training step at each size, forward and backward, and of the CNN's
/// convolutions (im2col: positions × patch by patch × channels).
const PRODUCTS: [Product; 19] = [
    product("L Dense_0 x·W", (512, 256, 1024), (false, false)),
    product("L Dense_1 x·W", (512, 1024, 1024), (false, false)),
    product("L Dense_2 x·W", (512, 1024, 10), (false, false)),
    product("L Dense_1 xᵀ·g", (1024, 512, 1024), (true, false)),
    product("L Dense_1 g·Wᵀ", (512, 1024, 1024), (false, true)),
    product("L Dense_0 xᵀ·g", (256, 512, 1024), (true, false)),
    product("L Dense_2 g·Wᵀ", (512, 10, 1024), (false, true)),
    product("M Dense_1 x·W", (128, 256, 256), (false, false)),
    product("M Dense_1 xᵀ·g", (256, 128, 256), (true, false)),
    product("M Dense_1 g·Wᵀ", (128, 256, 256), (false, true)),
    product("S Dense_0 x·W", (32, 16, 64), (false, false)),
    product("S Dense_1 x·W", (32, 64, 64), (false, false)),
    product("S Dense_1 xᵀ·g", (64, 32, 64), (true, false)),
    product("S Dense_1 g·Wᵀ", (32, 64, 64), (false, true)),
    product("S Dense_2 x·W", (32, 64, 4), (false, false)),
    product("CNN-M Conv_1 p·K", (12544, 288, 64), (false, false)),
    product("CNN-M Conv_1 pᵀ·g", (288, 12544, 64), (true, false)),
    product("CNN-M Conv_1 g·Kᵀ", (12544, 64, 288), (false, true)),
    product("CNN-M Conv_0 p·K", (50176, 9, 32), (false, false)),
];

/// `rows × cols` values, stored transposed (as `(cols, rows)`, then viewed back) if asked.
fn operand(rows: usize, cols: usize, transposed: bool, seed: usize) -> Array2<f32> {
    let value = |i: usize, j: usize| ((i * 7 + j * 3 + seed) % 11) as f32 * 0.1 - 0.5;
    if transposed {
        Array2::from_shape_fn((cols, rows), |(j, i)| value(i, j)).reversed_axes()
    } else {
        Array2::from_shape_fn((rows, cols), |(i, j)| value(i, j))
    }
}

/// Seconds per call of `f`: the median of 7 timings of enough calls to take about 30 ms.
fn seconds_per_call(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-7);
    let calls = ((0.03 / once) as usize).clamp(1, 100_000);
    let mut timings: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..calls {
                f();
            }
            start.elapsed().as_secs_f64() / calls as f64
        })
        .collect();
    timings.sort_by(f64::total_cmp);
    timings[3]
}

/// `c = a · b` by the `gemm` crate on one thread (its run-time choice of micro-kernels).
fn gemm_crate(a: &Array2<f32>, b: &Array2<f32>, c: &mut Array2<f32>) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let (cs, rs) = (c.strides()[1], c.strides()[0]);
    // SAFETY: the pointers and strides are the arrays' own, and `c` is `(m, n)`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            cs,
            rs,
            false,
            a.as_ptr(),
            a.strides()[1],
            a.strides()[0],
            b.as_ptr(),
            b.strides()[1],
            b.strides()[0],
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(feature = "openblas")]
mod openblas {
    unsafe extern "C" {
        pub fn openblas_set_num_threads(threads: i32);
        pub fn cblas_sgemm(
            order: i32,
            ta: i32,
            tb: i32,
            m: i32,
            n: i32,
            k: i32,
            alpha: f32,
            a: *const f32,
            lda: i32,
            b: *const f32,
            ldb: i32,
            beta: f32,
            c: *mut f32,
            ldc: i32,
        );
    }

    /// `c = a · b` by OpenBLAS on `threads` threads (its own).
    pub fn sgemm(
        a: &super::Array2<f32>,
        b: &super::Array2<f32>,
        c: &mut super::Array2<f32>,
        threads: i32,
    ) {
        let layout = |x: &super::Array2<f32>| {
            if x.strides()[1] == 1 {
                (111, x.strides()[0] as i32)
            } else {
                (112, x.strides()[1] as i32)
            }
        };
        let ((ta, lda), (tb, ldb)) = (layout(a), layout(b));
        let (m, k, n) = (a.nrows() as i32, a.ncols() as i32, b.ncols() as i32);
        // SAFETY: the pointers, transposes and leading dimensions describe the arrays.
        unsafe {
            openblas_set_num_threads(threads);
            cblas_sgemm(
                101,
                ta,
                tb,
                m,
                n,
                k,
                1.0,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                0.0,
                c.as_mut_ptr(),
                n,
            );
        }
    }
}

/// The GEMM candidates' rates at the workload's shapes, in GFLOP/s (2 flops a multiply-add),
/// one table: each library on one thread, tapegrad's `matmul` op on each kernel path on one
/// thread and on every thread, and, built with `--features openblas`, OpenBLAS on one and on
/// every thread as the reference.
fn gemm_rates() {
    let threads = runtime::num_threads();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        });
    println!(
        "\nGEMM rates, GFLOP/s (f32). CPU: {}; detected path {:?}; {threads} threads",
        cpu.as_deref().unwrap_or("unknown"),
        KernelPath::detected()
    );
    let mut columns: Vec<String> = vec!["matrixmultiply 1t".into(), "gemm crate 1t".into()];
    let paths: Vec<KernelPath> = KernelPath::ALL
        .into_iter()
        .filter(|&p| p <= KernelPath::detected())
        .collect();
    // With `--features openblas`, tapegrad's vector paths are OpenBLAS's products.
    columns.extend(paths.iter().map(|p| format!("tapegrad {p:?} 1t")));
    columns.push(format!("tapegrad {:?} {threads}t", KernelPath::detected()));
    if cfg!(feature = "openblas") {
        columns.push("OpenBLAS 1t".into());
        columns.push(format!("OpenBLAS {threads}t"));
    }
    println!("| product | m × k × n | {} |", columns.join(" | "));
    println!("|---|---|{}", "---|".repeat(columns.len()));
    for p in PRODUCTS {
        let a = operand(p.m, p.k, p.a_transposed, 1);
        let b = operand(p.k, p.n, p.b_transposed, 2);
        let mut c = Array2::<f32>::zeros((p.m, p.n));
        let flops = 2.0 * (p.m * p.k * p.n) as f64;
        let rate = |seconds: f64| format!("{:.1}", flops / seconds / 1e9);
        let mut row = vec![
            rate(seconds_per_call(|| {
                ndarray::linalg::general_mat_mul(1.0, &a, &b, 0.0, &mut c)
            })),
            rate(seconds_per_call(|| gemm_crate(&a, &b, &mut c))),
        ];
        let (ta, tb) = (
            Tensor::constant(a.clone().into_dyn()),
            Tensor::constant(b.clone().into_dyn()),
        );
        runtime::set_num_threads(1).unwrap();
        for &path in &paths {
            row.push(rate(
                path.run(|| seconds_per_call(|| drop(ta.matmul(&tb).unwrap()))),
            ));
        }
        runtime::set_num_threads(threads).unwrap();
        row.push(rate(seconds_per_call(|| drop(ta.matmul(&tb).unwrap()))));
        #[cfg(feature = "openblas")]
        for t in [1, threads as i32] {
            row.push(rate(seconds_per_call(|| {
                openblas::sgemm(&a, &b, &mut c, t)
            })));
        }
        println!(
            "| {} | {} × {} × {} | {} |",
            p.name,
            p.m,
            p.k,
            p.n,
            row.join(" | ")
        );
    }
}

/// What handing work to a worker thread costs: a rayon pool of one worker (as tapegrad builds
/// it for two threads), one trivial job through `in_place_scope`, when the worker is awake
/// (back to back) and when it has gone to sleep (1 ms after the last job).
fn handoff() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    // The caller either blocks at the end of the scope at once, or first spins on a flag the
    // job sets (what src/kernels/threads.rs does), so that it is not put to sleep.
    let handoff = |spin: bool| {
        let done = std::sync::atomic::AtomicBool::new(false);
        let start = Instant::now();
        pool.in_place_scope(|scope| {
            scope.spawn(|_| done.store(true, std::sync::atomic::Ordering::Release));
            while spin && !done.load(std::sync::atomic::Ordering::Acquire) {
                std::hint::spin_loop();
            }
        });
        start.elapsed().as_secs_f64() * 1e6
    };
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\nworker hand-off, µs (median of 2,000 back to back; of 200 after 1 ms idle):");
    for spin in [false, true] {
        let awake = median((0..2000).map(|_| handoff(spin)).collect());
        let asleep = median(
            (0..200)
                .map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    handoff(spin)
                })
                .collect(),
        );
        let caller = if spin { "spins" } else { "blocks" };
        println!("  caller {caller}: worker awake {awake:.2}, worker asleep {asleep:.2}");
    }
}

fn main() {
    // `cargo bench --bench ops [-- overhead | gemm | handoff | pooling]`: all, or the one named.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if wants("overhead") {
        let mut criterion = Criterion::default().configure_from_args();
        overhead(&mut criterion);
        criterion.final_summary();
    }
    if wants("gemm") {
        gemm_rates();
    }
    if wants("pooling") {
        let mut criterion = Criterion::default().configure_from_args();
        pooling(&mut criterion);
        criterion.final_summary();
    }
    if wants("handoff") {
        handoff();
    }
}
