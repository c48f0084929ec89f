//! `BatchNorm` with running statistics in the `batch_stats` collection.

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::fusion::Fusion;
use crate::kernels::fused::{self, Epilogue};
use crate::module::scope::{Module, Scope};
use crate::nn::init;
use crate::tensor::Tensor;

/// Batch normalisation over every axis but the last (the features).
///
/// * Params: `scale` (ones) and `bias` (zeros), shape `(features)`.
/// * batch_stats: `mean` (zeros) and `var` (ones), shape `(features)`.
///
/// **Training mode** normalises with the batch's mean and *biased* variance, and the
/// gradient flows through both: the layer is defined as the composition of primitives in
/// `forward` below, so the tape differentiates through the statistics like any other op
/// (with [`Fusion::On`], one fused node with a closed-form VJP computes the same). It then
/// writes `running = momentum · running + (1 - momentum) · batch` into `batch_stats`, with
/// plain arrays: the running statistics are outputs of the forward pass, never
/// differentiated.
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
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            momentum: 0.99,
            epsilon: 1e-5,
            use_running_average: None,
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
}

impl<A: Float> Module<A> for BatchNorm {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "BatchNorm"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        self.normalize(scope, x, Epilogue::Nothing)
    }
}

impl BatchNorm {
    /// Momentum in `[0, 1]` and epsilon at least 0, both finite; checked before the layer
    /// reads or writes anything.
    fn check_settings(&self) -> Result<()> {
        let invalid = |setting, value, expected| {
            Err(Error::InvalidSetting {
                op: "BatchNorm",
                setting,
                value,
                expected,
            })
        };
        if !(self.momentum.is_finite() && (0.0..=1.0).contains(&self.momentum)) {
            return invalid("momentum", self.momentum, "finite and in [0, 1]");
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return invalid("epsilon", self.epsilon, "finite and at least 0");
        }
        Ok(())
    }

    /// The layer, then `epilogue`: with fusion on and in training mode, the epilogue runs
    /// inside the fused node; otherwise it is applied to the layer's output.
    fn normalize<A: Float>(
        &self,
        scope: &mut Scope<'_, A>,
        x: &Tensor<A>,
        epilogue: Epilogue,
    ) -> Result<Tensor<A>> {
        let Some(&features) = x.shape().last().filter(|_| x.ndim() >= 2) else {
            return Err(Error::invalid(
                "BatchNorm",
                x.shape(),
                "expected (batch, ..., features)",
            ));
        };
        self.check_settings()?;
        let running_mean = scope.variable("batch_stats", "mean", &[features], init::zeros())?;
        let running_var = scope.variable("batch_stats", "var", &[features], init::ones())?;
        let eps = A::of(self.epsilon);

        let scale = scope.param("scale", &[features], init::ones())?;
        let bias = scope.param("bias", &[features], init::zeros())?;
        let then = |y: Tensor<A>| match epilogue {
            Epilogue::Nothing => y,
            Epilogue::Relu => y.relu(),
        };

        if self.use_running_average.unwrap_or(!scope.is_training()) {
            // Constants only in the statistics: no node is recorded for them.
            let inv_std = running_var.value().add_scalar(eps).sqrt().recip();
            let normalized = x.sub(&running_mean.value())?.mul(&inv_std)?;
            return Ok(then(normalized.mul(&scale)?.add(&bias)?));
        }
        // Statistics of no value are 0 / 0, and of one value a variance of 0 (PyTorch refuses
        // both: "Expected more than 1 value per channel when training").
        let per_channel = x.len() / features.max(1);
        if per_channel < 2 {
            return Err(Error::invalid(
                "BatchNorm",
                x.shape(),
                format!(
                    "expected more than 1 value per channel when training, got {per_channel} \
                     (batch statistics of fewer are undefined or zero)"
                ),
            ));
        }
        let (y, batch_mean, batch_var) = if Fusion::is_on() {
            let (y, batch) = fused::batch_norm_train(x, &scale, &bias, eps, epilogue)?;
            (y, batch.mean.into_dyn(), batch.var.into_dyn())
        } else {
            // The definition. Statistics over every axis but the features, the variance
            // biased (divided by N); the gradient flows through both.
            let axes: Vec<usize> = (0..x.ndim() - 1).collect();
            let mean = x.mean_axes(&axes, false)?;
            let centred = x.sub(&mean)?;
            let var = centred.square().mean_axes(&axes, false)?;
            let inv_std = var.add_scalar(eps).sqrt().recip();
            let y = centred.mul(&inv_std)?.mul(&scale)?.add(&bias)?;
            (then(y), mean.value().clone(), var.value().clone())
        };
        if !scope.is_initializing() {
            // Values, not tensors: the update is detached by type.
            let m = A::of(self.momentum);
            // running ← m · running + (1 − m) · batch, in one pass over the batch's array.
            let blend = |old: &Tensor<A>, mut blended: ArrayD<A>| {
                blended.zip_mut_with(old.value(), |b, &o| *b = m * o + (A::one() - m) * *b);
                blended
            };
            let (mean, var) = (
                blend(&running_mean.value(), batch_mean),
                blend(&running_var.value(), batch_var),
            );
            // Both checked before either is written: a NaN in the input, or an overflow of
            // f32, must not become the running statistics.
            running_mean.check_finite("BatchNorm", &mean)?;
            running_var.check_finite("BatchNorm", &var)?;
            running_mean.set(mean)?;
            running_var.set(var)?;
        }
        Ok(y)
    }
}

/// BatchNorm followed by ReLU: what [`Mlp`](crate::nn::Mlp) runs when its activation is
/// ReLU, with the variables of a BatchNorm (same kind, same names). With fusion on, in
/// training mode, the ReLU runs inside BatchNorm's fused node: one pass over memory and one
/// array fewer than a separate ReLU.
pub(crate) struct BatchNormRelu<'a>(pub(crate) &'a BatchNorm);

impl<A: Float> Module<A> for BatchNormRelu<'_> {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "BatchNorm"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        self.0.normalize(scope, x, Epilogue::Relu)
    }
}
