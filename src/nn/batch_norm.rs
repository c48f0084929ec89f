//! `BatchNorm` with running statistics in the `batch_stats` collection.

use crate::nn::init;
use crate::ops::fused::{Then, batch_norm_train};
use crate::{Error, Float, Module, Result, Scope, Tensor};

/// Batch normalisation over every axis but the last (the features).
///
/// * Params: `scale` (ones) and `bias` (zeros), shape `(features)`.
/// * batch_stats: `mean` (zeros) and `var` (ones), shape `(features)`.
///
/// **Training mode** normalises with the batch's mean and *biased* variance, and the
/// gradient flows through both (the full BatchNorm backward: one fused node with a
/// closed-form VJP, checked against the composite of primitives it replaces). It then writes
/// `running = momentum · running + (1 - momentum) · batch` into `batch_stats`, with plain
/// arrays: the running statistics are outputs of the forward pass, never differentiated.
/// Writing needs `batch_stats` mutable; otherwise the step is
/// [`Error::ImmutableCollection`](crate::Error::ImmutableCollection), as in Flax.
/// Initialisation does not update them.
///
/// **Evaluation mode** normalises with the running statistics, read as constants.
///
/// Conventions: Flax's, with default `momentum = 0.99` on the *old* value. PyTorch's
/// `BatchNorm1d(momentum=0.1)` puts 0.1 on the *new* value (so PyTorch 0.1 is our 0.9) and
/// updates the running variance with the *unbiased* batch variance.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Weight of the old running value in the update (Flax default 0.99).
    pub momentum: f64,
    /// Added to the variance before the square root (default 1e-5).
    pub epsilon: f64,
    /// Force evaluation (`Some(true)`) or training (`Some(false)`) behaviour; `None` follows
    /// the mode given to `apply`.
    pub use_running_average: Option<bool>,
    /// Apply ReLU to the output. In training mode it runs inside the BatchNorm node (one
    /// pass and one array fewer than a separate ReLU, and the mask is read off the output);
    /// [`Mlp`](crate::nn::Mlp) sets it when its activation is ReLU. The variables are the same.
    pub relu: bool,
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            momentum: 0.99,
            epsilon: 1e-5,
            use_running_average: None,
            relu: false,
        }
    }
}

impl BatchNorm {
    /// Flax's defaults: momentum 0.99, epsilon 1e-5.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same layer with another momentum (`0.9` is PyTorch's `momentum=0.1`).
    pub fn momentum(self, momentum: f64) -> Self {
        BatchNorm { momentum, ..self }
    }

    /// The same layer with another epsilon.
    pub fn epsilon(self, epsilon: f64) -> Self {
        BatchNorm { epsilon, ..self }
    }

    /// The same layer followed by ReLU (see [`BatchNorm::relu`]).
    pub fn with_relu(self) -> Self {
        BatchNorm { relu: true, ..self }
    }
}

impl<A: Float> Module<A> for BatchNorm {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "BatchNorm"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let Some(&features) = x.shape().last().filter(|_| x.ndim() >= 2) else {
            return Err(Error::invalid(
                "BatchNorm",
                x.shape(),
                "expected (batch, ..., features)",
            ));
        };
        let running_mean = scope.variable("batch_stats", "mean", &[features], init::zeros())?;
        let running_var = scope.variable("batch_stats", "var", &[features], init::ones())?;
        let eps = A::of(self.epsilon);

        let scale = scope.param("scale", &[features], init::ones())?;
        let bias = scope.param("bias", &[features], init::zeros())?;

        if self.use_running_average.unwrap_or(!scope.is_training()) {
            // Constants only in the statistics: no node is recorded for them.
            let inv_std = running_var.value().add_scalar(eps).sqrt().recip();
            let normalized = x.sub(&running_mean.value())?.mul(&inv_std)?;
            let y = normalized.mul(&scale)?.add(&bias)?;
            return Ok(if self.relu { y.relu() } else { y });
        }
        // One fused node; its closed-form backward flows through the batch statistics
        // (see ops/fused/batch_norm.rs, and tests/fused_ops.rs for the check against the
        // composite).
        let then = if self.relu { Then::Relu } else { Then::Nothing };
        let (y, batch) = batch_norm_train(x, &scale, &bias, eps, then)?;
        if !scope.is_initializing() {
            // Values, not tensors: the update is detached by type.
            let m = A::of(self.momentum);
            // running ← m · running + (1 − m) · batch, in one pass over the batch's array.
            let blend = |old: &Tensor<A>, new: ndarray::Array1<A>| {
                let mut blended = new.into_dyn();
                blended.zip_mut_with(old.value(), |b, &o| *b = m * o + (A::one() - m) * *b);
                blended
            };
            running_mean.set(blend(&running_mean.value(), batch.mean))?;
            running_var.set(blend(&running_var.value(), batch.var))?;
        }
        Ok(y)
    }
}
