//! Mean softmax cross-entropy with integer labels in one node: the fused implementation of
//! the loss defined in src/ops/loss.rs.

use ndarray::ArrayD;

use crate::error::Result;
use crate::float::{Float, nan_max};
use crate::kernels::gemm::matrix;
use crate::tensor::{Tensor, record};

/// Mean softmax cross-entropy of `logits (B, C)` with integer labels, in one node.
///
/// Forward, per row: `lse = m + ln Σ e^(z−m)` with `m = max z` (stable), loss
/// `(1/B) Σ_b (lse_b − z_{b,y_b})`. Backward: `dz = g (softmax(z) − onehot(y)) / B`, with the
/// softmax kept from the forward pass. `logits` is `(B, C)` and every label below `C`.
pub(crate) fn softmax_cross_entropy<A: Float>(
    logits: &Tensor<A>,
    labels: &[usize],
) -> Result<Tensor<A>> {
    // The loss checked the shapes and the labels before it chose this implementation.
    let z = logits.value();
    let batch = z.shape()[0];
    let mut probabilities = matrix(z).to_owned();
    let mut total = A::zero();
    for (mut row, &label) in probabilities.rows_mut().into_iter().zip(labels) {
        let max = row.iter().fold(A::neg_infinity(), |m, &v| nan_max(m, v));
        let picked = row[label];
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        total += max + sum.ln() - picked;
        row /= sum;
    }
    let inv_batch = A::of(1.0 / batch.max(1) as f64);
    let loss = ArrayD::from_elem(vec![], total * inv_batch);
    let labels = labels.to_vec();
    record("softmax_cross_entropy", &[logits], loss, move |g, _| {
        let scale = g.iter().next().copied().unwrap_or_else(A::zero) * inv_batch;
        let mut dz = probabilities.clone();
        for (mut row, &label) in dz.rows_mut().into_iter().zip(&labels) {
            row[label] -= A::one();
        }
        dz *= scale;
        vec![Some(dz.into_dyn())]
    })
}
