//! Losses, defined as compositions of primitives.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::{cross_entropy, gemm::matrix};
use crate::ops::fusion::Fusion;
use crate::ops::shape_ops::one_hot;
use std::sync::Arc;

use ndarray::{Array2, ArrayD};

use crate::ops::tangent::only;
use crate::record::{Primal, Rules, record_one};
use crate::tensor::Tensor;

/// Mean softmax cross-entropy of `logits (batch, classes)` against integer `labels`:
/// `(1/B) Σ_b [logsumexp(logits[b]) - logits[b, labels[b]]]`, defined as
/// `-(1/B) Σ log_softmax(logits) · onehot(labels)`.
///
/// With [`Fusion::On`] it is one node with the closed-form gradient
/// `(softmax(z) − onehot(y)) / B` instead of the definition's ten.
///
/// PyTorch: `F.cross_entropy(logits, labels)`; optax:
/// `softmax_cross_entropy_with_integer_labels(logits, labels).mean()`.
///
/// ```
/// use tapegrad::{softmax_cross_entropy, Tensor};
/// // Uniform logits over 4 classes: the loss is ln 4 whatever the label.
/// let logits = Tensor::from_vec(&[2, 4], vec![0.0f64; 8])?;
/// let loss = softmax_cross_entropy(&logits, &[0, 3])?;
/// assert!((loss.item()? - 4f64.ln()).abs() < 1e-12);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidArgument`] if `logits` is not `(batch, classes)`, [`Error::IncompatibleShapes`]
/// if `labels` has not `batch` entries, [`Error::IndexOutOfRange`] for a label `>= classes`.
pub fn softmax_cross_entropy<A: Float>(logits: &Tensor<A>, labels: &[usize]) -> Result<Tensor<A>> {
    const OP: &str = "softmax_cross_entropy";
    let &[batch, classes] = logits.shape() else {
        return Err(Error::invalid(
            OP,
            logits.shape(),
            "expected logits of shape (batch, classes)",
        ));
    };
    if labels.len() != batch {
        return Err(Error::incompatible(
            OP,
            logits.shape(),
            &[labels.len()],
            "one label per row of logits",
        ));
    }
    if let Some(&index) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::IndexOutOfRange {
            op: OP,
            index,
            len: classes,
        });
    }
    let inv_batch = A::of(1.0 / batch.max(1) as f64);
    if Fusion::is_on() {
        // The same, in one node: the softmax is kept from the forward pass for the VJP
        // `(softmax(z) − onehot(y)) / B`.
        let (total, probabilities) = cross_entropy::forward(matrix(logits.value()), labels);
        let loss = ArrayD::from_elem(vec![], total * inv_batch);
        let rules = Rules {
            saved: Picked {
                probabilities,
                labels: labels.to_vec(),
                inv_batch,
                logits: logits.shared_value(),
            },
            vjp: |s: &Picked<A>, g: ArrayD<A>, _: &[bool]| {
                let scale = g.iter().next().copied().unwrap_or_else(A::zero) * s.inv_batch;
                cross_entropy::backward(&s.probabilities, &s.labels, scale).into_dyn()
            },
            recorded: |s: &Picked<A>, g: &Tensor<A>, p: &Primal<'_, A>| {
                // (softmax(z) − onehot(y)) · g / B, the softmax as ops of the logits.
                let z = p.input(0, &s.logits);
                let onehot = one_hot(&s.labels, z.shape()[1])?;
                let dz = z.softmax(1)?.sub(&onehot)?.mul(g)?.mul_scalar(s.inv_batch);
                Ok(dz)
            },
            jvp: |s: &Picked<A>, t: &[Option<&ArrayD<A>>]| Ok(s.tangent(only(t))),
        };
        return Ok(record_one(OP, logits, loss, rules));
    }
    definition(logits, labels, inv_batch)
}

/// The definition: `−Σ log_softmax(z) · onehot(y) / B`.
fn definition<A: Float>(logits: &Tensor<A>, labels: &[usize], inv_batch: A) -> Result<Tensor<A>> {
    let classes = logits.shape()[1];
    let picked = logits
        .log_softmax(1)?
        .mul(&one_hot(labels, classes)?.with_label("onehot(labels)"))?
        .sum_all();
    Ok(picked.mul_scalar(-inv_batch))
}

/// What the fused node keeps: the softmax, the labels, `1/B`, and the logits, of which the
/// recorded VJP computes the softmax again as ops.
struct Picked<A> {
    probabilities: Array2<A>,
    labels: Vec<usize>,
    inv_batch: A,
    logits: Arc<ArrayD<A>>,
}

impl<A: Float> Picked<A> {
    /// The loss's tangent for the logits' `t`: `Σ_b (⟨softmax_b, t_b⟩ − t_b[y_b]) / B`.
    fn tangent(&self, t: &ArrayD<A>) -> ArrayD<A> {
        let t = matrix(t);
        let mut total = A::zero();
        for ((p, t), &label) in self
            .probabilities
            .rows()
            .into_iter()
            .zip(t.rows())
            .zip(&self.labels)
        {
            total += p.dot(&t) - t[label];
        }
        ArrayD::from_elem(vec![], total * self.inv_batch)
    }
}

/// Mean squared error `mean((prediction - target)^2)` of two tensors of one shape.
/// PyTorch: `F.mse_loss(prediction, target)` (which warns and broadcasts where the shapes
/// differ; a `[2, 2]` prediction against a `[2, 1]` target is almost always a bug, such as a
/// bias of the wrong length, so here it is an error).
///
/// ```
/// use tapegrad::{mse, Tensor};
/// let prediction = Tensor::from_vec(&[2, 2], vec![1.0f64, 2.0, 3.0, 4.0])?;
/// assert!(mse(&prediction, &Tensor::from_vec(&[2, 1], vec![0.0, 0.0])?).is_err());
/// assert_eq!(mse(&prediction, &prediction)?.item()?, 0.0);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::IncompatibleShapes`] naming both shapes if they differ, [`Error::DifferentTapes`]
/// if the operands are tracked on different tapes; nothing is recorded.
pub fn mse<A: Float>(prediction: &Tensor<A>, target: &Tensor<A>) -> Result<Tensor<A>> {
    if prediction.shape() != target.shape() {
        return Err(Error::incompatible(
            "mse",
            prediction.shape(),
            target.shape(),
            "the prediction and the target must have one shape",
        ));
    }
    Ok(prediction.sub(target)?.square().mean_all())
}
