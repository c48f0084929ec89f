//! What tapegrad takes from the machine: how many threads its kernels use, and which of the
//! CPU's instruction sets they run on.
//!
//! Neither setting changes a result beyond rounding: a matrix product split over threads
//! computes each output element on one thread, in the same order, and the kernel paths differ
//! only in how a product's sums are associated (`tests/kernel_paths.rs` holds every path to the
//! portable one within the stated tolerance).
//!
//! # Threads
//!
//! Large matrix products (and the two products of a matmul's backward pass) are split over a
//! pool of threads. The count is, in order of precedence:
//!
//! 1. the last [`set_num_threads`] call;
//! 2. the environment variable `TAPEGRAD_NUM_THREADS` (a count from 1 to [`max_threads`],
//!    four per core; any other value is warned about once on standard error, and ignored),
//!    read when tapegrad first needs a thread count, as OpenMP reads `OMP_NUM_THREADS` and
//!    rayon `RAYON_NUM_THREADS`;
//! 3. the cores this process may use ([`std::thread::available_parallelism`]).
//!
//! [`summary`] says in one line which kernel path, thread count and fusion setting a run
//! uses; the examples print it first.
//!
//! One thread means no worker thread at all: every product runs on the calling thread and
//! no thread is ever spawned. With `n` threads the pool has `n − 1` workers, and the calling thread
//! computes a share of each product itself. The pool is tapegrad's own, not rayon's global
//! pool, so a program's own `rayon` work and tapegrad's do not wait on each other.
//!
//! ```
//! use tapegrad::runtime;
//!
//! runtime::set_num_threads(1)?; // single-threaded: no background thread
//! assert_eq!(runtime::num_threads(), 1);
//! assert!(runtime::set_num_threads(0).is_err());
//! # Ok::<(), tapegrad::Error>(())
//! ```
//!
//! # Kernel paths
//!
//! The hot loops are compiled for three instruction sets and chosen at run time from the CPU,
//! so one binary is fast on an AVX2-only AMD and on an AVX-512 Intel: [`KernelPath::Avx512`],
//! [`KernelPath::Avx2`] (with FMA) and [`KernelPath::Portable`] (the baseline of the target,
//! SSE2 on x86-64). The matrix products use `matrixmultiply` (ndarray's product, with its own
//! AVX2 + FMA kernels) on the portable and AVX2 paths and the `gemm` crate's AVX-512 kernels on
//! the AVX-512 path. With the `openblas` feature the vector paths' products go to the
//! system's OpenBLAS instead.
//!
//! The environment variable `TAPEGRAD_KERNELS` (`portable`, `avx2` or `avx512`; any other
//! value is warned about once and ignored) caps the path for the whole process, and
//! [`KernelPath::run`] for one computation on one thread: to compare paths, or to rule a
//! kernel out when a result looks wrong. The cap governs tapegrad's own loops and which
//! library multiplies; `matrixmultiply`, the portable path's, picks its own AVX2 kernels
//! where the CPU has them.
//!
//! # Memory
//!
//! [`retain_freed_memory`] keeps freed arrays' memory in the process for the next step, so
//! that a training loop does not fault in its activations afresh every step: a choice for
//! the program, which tapegrad's examples and benchmarks make.

pub use crate::allocator::{peak_resident_mib, retain_freed_memory};
pub use crate::kernels::path::KernelPath;
pub use crate::kernels::threads::{max_threads, num_threads, set_num_threads};

/// One line saying what this process runs on: the kernel path in force and the CPU's best,
/// the thread count, and whether fused ops run, as a training program prints it at its start
/// (with the environment variables that set them: a bad value of any is warned about once).
///
/// ```
/// let line = tapegrad::runtime::summary();
/// assert!(line.contains("kernel path") && line.contains("thread"));
/// ```
#[must_use]
pub fn summary() -> String {
    let threads = num_threads();
    format!(
        "tapegrad {}: kernel path {} (this CPU's best: {}), {threads} thread{}, fusion {}",
        env!("CARGO_PKG_VERSION"),
        KernelPath::current().name(),
        KernelPath::detected().name(),
        if threads == 1 { "" } else { "s" },
        if crate::ops::Fusion::is_on() {
            "on"
        } else {
            "off"
        },
    )
}
