//! Column sums of a matrix along its contiguous rows: the bias's gradient of the fused
//! linear op and of a convolution whose kernel's gradient is not wanted.

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
