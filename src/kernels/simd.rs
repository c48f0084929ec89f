//! Hot loops compiled three times: for the baseline x86-64 (SSE2, 4 floats per instruction),
//! for AVX2 with FMA (8 floats) and for AVX-512 (16 floats), chosen at run time.
//!
//! Rust compiles for the baseline unless told otherwise (`-C target-cpu`), and a library
//! cannot tell its users how to build. The fused kernels' loops are plain Rust that the
//! compiler vectorises (BatchNorm's in blocks of features, `kernels/rows.rs`, so that
//! it needs no run-time overlap checks); run inside [`vectorized`], they are compiled again
//! with the wider instruction sets enabled, and the copy of the [kernel path](KernelPath) in
//! force runs. The results are the same on every path: the loops vectorise across features,
//! never reassociating a sum, and Rust never fuses a multiply and an add on its own.

use crate::float::Float;
use crate::kernels::path::KernelPath;

/// Runs `f`, compiled for the [kernel path](KernelPath::current) in force: with AVX2 and FMA,
/// or AVX-512, enabled for it (and whatever it inlines). Mark the loops `f` calls
/// `#[inline(always)]` so they are compiled into each copy.
#[inline]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    vectorized_on(KernelPath::current(), f)
}

/// [`vectorized`] on a path read elsewhere: on a pool's worker, the caller's path (a
/// [`KernelPath::run`] cap is the caller thread's). Never above what the CPU has.
#[inline]
pub(crate) fn vectorized_on<R>(path: KernelPath, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match path.min(KernelPath::detected()) {
        // SAFETY: the CPU has the path's features (`KernelPath::detected`).
        KernelPath::Avx512 => return unsafe { with_avx512(f) },
        KernelPath::Avx2 => return unsafe { with_avx2(f) },
        KernelPath::Portable => {}
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = path;
    f()
}

/// Whether every value is finite (no NaN, no infinity), in one vectorised pass: `x − x` is
/// 0 for a finite `x` and NaN otherwise, and a NaN survives any sum. Sixteen partial sums,
/// because the compiler may not reorder one float sum into lanes by itself.
#[allow(clippy::eq_op)] // `x - x` is the test itself
pub(crate) fn all_finite<A: Float>(values: &[A]) -> bool {
    vectorized(
        #[inline(always)]
        || {
            const LANES: usize = 16;
            let mut lanes = [A::zero(); LANES];
            let chunks = values.chunks_exact(LANES);
            let mut total = chunks
                .remainder()
                .iter()
                .fold(A::zero(), |t, &x| t + (x - x));
            for chunk in chunks {
                for j in 0..LANES {
                    lanes[j] += chunk[j] - chunk[j];
                }
            }
            for lane in lanes {
                total += lane;
            }
            total == A::zero()
        },
    )
}

/// [`all_finite`] for an array in any layout.
pub(crate) fn array_all_finite<A: Float>(array: &ndarray::ArrayD<A>) -> bool {
    match array.as_slice_memory_order() {
        Some(values) => all_finite(values),
        None => array.iter().all(|x| x.is_finite()),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
unsafe fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn all_finite_finds_any_nan_or_infinity_wherever_it_is() {
        let mut values = vec![1.5f32; 37];
        assert!(super::all_finite(&values));
        for at in [0, 15, 16, 36] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                values[at] = bad;
                assert!(!super::all_finite(&values), "{bad} at {at}");
                values[at] = 1.5;
            }
        }
        assert!(super::all_finite::<f64>(&[]));
    }

    #[test]
    fn the_result_is_the_closures() {
        let values: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let total = super::vectorized(|| values.iter().map(|v| v * 2.0).sum::<f32>());
        assert_eq!(total, 9900.0);
    }
}
