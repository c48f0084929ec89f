//! `Dense`'s matmul and bias in one node: the fused implementation of `x · kernel + bias`
//! (src/nn/dense.rs).

use ndarray::{Array1, ArrayView2, Axis};

use super::rows;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::gemm::{self, matrix};
use crate::kernels::simd;
use crate::tensor::{Tensor, record};

/// `x · w + b` for `x` `(n, in)`, `w` `(in, out)`, `b` `(out)`: a matmul and a broadcast
/// add in one node. VJP: `dx = g wᵀ`, `dw = xᵀ g`, `db = Σ_rows g`.
pub(crate) fn linear<A: Float>(x: &Tensor<A>, w: &Tensor<A>, b: &Tensor<A>) -> Result<Tensor<A>> {
    let (xv, wv) = (x.value(), w.value());
    if xv.ndim() != 2
        || wv.ndim() != 2
        || xv.shape()[1] != wv.shape()[0]
        || b.shape() != [wv.shape()[1]]
    {
        return Err(Error::incompatible(
            "linear",
            x.shape(),
            w.shape(),
            "expected x (n, in), w (in, out), b (out)",
        ));
    }
    let y = gemm::forward(x.shared_value(), w.shared_value(), Some(b.shared_value()));
    let (x_in, w_in) = (x.shared_value(), w.shared_value());
    record("linear", &[x, w, b], y.into_dyn(), move |g, needs| {
        let db = needs[2].then(|| column_sums(matrix(&g)).into_dyn());
        let (dx, dw) = gemm::backward(g, x_in.clone(), w_in.clone(), (needs[0], needs[1]));
        vec![dx.map(|d| d.into_dyn()), dw.map(|d| d.into_dyn()), db]
    })
}

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
