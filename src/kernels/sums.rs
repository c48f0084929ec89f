//! Column sums of a matrix along its contiguous rows: the bias's gradient of the fused
//! linear op and of a convolution whose kernel's gradient is not wanted; and the sum over
//! one axis, not the last, of an array in standard layout (the reductions of the ops).

use ndarray::{Array1, ArrayView2, Axis};

use super::rows;
use crate::float::Float;
use crate::kernels::simd;

/// `Σ_rows g`, row by row along contiguous memory when `g` is in standard layout.
pub(crate) fn column_sums<A: Float>(g: ArrayView2<'_, A>) -> Array1<A> {
    let Some(values) = g.as_slice() else {
        return g.sum_axis(Axis(0));
    };
    let mut sums = vec![A::zero(); g.ncols()];
    if !sums.is_empty() {
        simd::vectorized(
            #[inline(always)]
            || {
                for row in values.chunks_exact(sums.len()) {
                    rows::add(&mut sums, row);
                }
            },
        );
    }
    Array1::from(sums)
}

/// The sum over the middle axis of `values`, an `(outer, n, inner)` array in standard
/// layout: `(outer, inner)`. Each output adds its `n` inputs in order, from zero, exactly as
/// ndarray's `sum_axis` does over an axis that is not the innermost (so the values are the
/// same bit for bit), but along contiguous rows instead of one strided view per index.
pub(crate) fn sum_middle_axis<A: Float>(values: &[A], [outer, n, inner]: [usize; 3]) -> Vec<A> {
    let mut sums = vec![A::zero(); outer * inner];
    if inner == 0 {
        return sums;
    }
    simd::vectorized(
        #[inline(always)]
        || {
            for (block, out) in values
                .chunks_exact(n * inner)
                .zip(sums.chunks_exact_mut(inner))
            {
                for row in block.chunks_exact(inner) {
                    rows::add(out, row);
                }
            }
        },
    );
    sums
}
