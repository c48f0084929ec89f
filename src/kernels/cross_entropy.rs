//! Mean softmax cross-entropy with integer labels, the loops of the fused loss
//! (src/ops/loss.rs): the loss and the softmax in one pass over the logits, and the
//! gradient from the softmax.
//!
//! Forward, per row: `lse = m + ln Σ e^(z−m)` with `m = max z` (stable), loss
//! `(1/B) Σ_b (lse_b − z_{b,y_b})`. Backward: `dz = g (softmax(z) − onehot(y)) / B`.

use ndarray::{Array2, ArrayView2};

use crate::float::{Float, nan_max};

/// The summed (not yet averaged) loss over the rows of `logits (B, C)` and the softmax of
/// each row; every label is below `C`.
pub(crate) fn forward<A: Float>(logits: ArrayView2<'_, A>, labels: &[usize]) -> (A, Array2<A>) {
    let mut probabilities = logits.to_owned();
    let mut total = A::zero();
    for (mut row, &label) in probabilities.rows_mut().into_iter().zip(labels) {
        let max = row.iter().fold(A::neg_infinity(), |m, &v| nan_max(m, v));
        let picked = row[label];
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        total += max + sum.ln() - picked;
        row /= sum;
    }
    (total, probabilities)
}

/// `scale · (softmax − onehot(labels))`: the logits' gradient, for `scale` the loss's
/// gradient over the batch size.
pub(crate) fn backward<A: Float>(
    probabilities: &Array2<A>,
    labels: &[usize],
    scale: A,
) -> Array2<A> {
    let mut dz = probabilities.clone();
    for (mut row, &label) in dz.rows_mut().into_iter().zip(labels) {
        row[label] -= A::one();
    }
    dz *= scale;
    dz
}
