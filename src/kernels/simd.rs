//! Hot loops compiled twice: for the baseline x86-64 (SSE2, 4 floats per instruction) and for
//! AVX2 with FMA (8 floats), chosen at run time.
//!
//! Rust compiles for the baseline unless told otherwise (`-C target-cpu`), and a library
//! cannot tell its users how to build. The fused kernels' loops are plain slice loops that the
//! compiler vectorises; run inside [`vectorized`], they are compiled again with AVX2 enabled
//! and that copy runs when the CPU has it (all x86-64 CPUs since about 2013). The results are
//! the same either way: the loops vectorise across features, never reassociating a sum.

/// Runs `f`, with AVX2 and FMA enabled for it (and whatever it inlines) when the CPU has them.
/// Mark the loops `f` calls `#[inline(always)]` so they are compiled into the AVX2 copy.
#[inline]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: `with_avx2` may only run on a CPU with AVX2 and FMA, checked just above.
        return unsafe { with_avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_result_is_the_closures() {
        let values: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let total = super::vectorized(|| values.iter().map(|v| v * 2.0).sum::<f32>());
        assert_eq!(total, 9900.0);
    }
}
