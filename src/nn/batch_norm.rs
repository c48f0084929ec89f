//! `BatchNorm` with running statistics in the `batch_stats` collection.

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::fusion::Fusion;
use crate::kernels::fused::{self, Epilogue};
use crate::module::scope::{Module, Scope};
use crate::nn::init;
use crate::replicas::ReduceOp;
use crate::tensor::Tensor;

/// Batch normalisation over every axis but the feature axis (the last by default: the
/// features of `(batch, features)`, the channels of NHWC images, whose statistics are over
/// the batch and every pixel, as PyTorch's `BatchNorm2d` computes them).
///
/// * Params: `scale` (ones) and `bias` (zeros), shape `(features)`, unless turned off with
///   [`BatchNorm::without_scale`] / [`BatchNorm::without_bias`] (Flax's `use_scale`,
///   `use_bias`; PyTorch's `affine=False` turns off both).
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
/// Conventions: Flax's by default, with `momentum = 0.99` on the *old* value and the biased
/// batch variance. PyTorch's `BatchNorm1d/2d(momentum=0.1)` puts 0.1 on the *new* value and
/// updates the running variance with the *unbiased* batch variance; [`BatchNorm::pytorch`]
/// follows that convention exactly (including `momentum=None`, a cumulative average over
/// `batch_stats/num_batches_tracked`), so that a model imported from PyTorch trains on as it
/// would there. Normalisation itself is the same in both: the batch's biased variance in
/// training, the running statistics in evaluation.
///
/// ```
/// use tapegrad::nn::{BatchNorm, StatsConvention};
/// use tapegrad::{ApplyOptions, ModuleExt, Mutable, Tensor, Variables};
/// let x = Tensor::from_vec(&[4, 1], vec![1.0f64, 2.0, 3.0, 6.0])?; // mean 3, unbiased var 14/3
/// let torch = BatchNorm::pytorch(Some(0.1));
/// assert_eq!(torch.convention, StatsConvention::PyTorch { momentum: Some(0.1) });
/// let mut vars: Variables<f64> = torch.init(0, &x)?;
/// let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
/// let (_, updates) = torch.apply(&vars, &x, &train)?;
/// vars.merge(updates)?;
/// // running_mean = 0.9 · 0 + 0.1 · 3, running_var = 0.9 · 1 + 0.1 · 14/3, as in PyTorch.
/// assert!((vars.get("batch_stats/mean").unwrap()[[0]] - 0.3).abs() < 1e-15);
/// assert!((vars.get("batch_stats/var").unwrap()[[0]] - (0.9 + 1.4 / 3.0)).abs() < 1e-15);
/// assert_eq!(vars.get("batch_stats/num_batches_tracked").unwrap()[[]], 1.0);
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Weight of the old running value in the update (Flax default 0.99), under
    /// [`StatsConvention::Flax`]; unused under [`StatsConvention::PyTorch`], which carries
    /// PyTorch's own momentum.
    pub momentum: f64,
    /// Added to the variance before the square root (default 1e-5).
    pub epsilon: f64,
    /// Force evaluation (`Some(true)`) or training (`Some(false)`) behaviour; `None` follows
    /// the mode given to `apply`.
    pub use_running_average: Option<bool>,
    /// Whether to multiply by a learned `scale` (Flax's `use_scale`, default true).
    pub use_scale: bool,
    /// Whether to add a learned `bias` (Flax's `use_bias`, default true).
    pub use_bias: bool,
    /// The feature axis, negative counting from the end (Flax's `axis`, default `-1`;
    /// NCHW inputs, as PyTorch lays them out, would be `1`).
    pub axis: isize,
    /// How training updates the running statistics (Flax's rule by default).
    pub convention: StatsConvention,
    /// The replica axis to reduce batch statistics over (Flax's `axis_name`, PyTorch's
    /// `SyncBatchNorm`): in training, the statistics are those of the global batch of every
    /// replica of the axis `apply` was given under this name. `None` (the default): this
    /// replica's batch alone. See [`replicas`](crate::replicas).
    pub axis_name: Option<String>,
}

/// How a [`BatchNorm`] in training mode updates its running statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StatsConvention {
    /// Flax's `nn.BatchNorm`: `running ← m · running + (1 − m) · batch` with `m` the layer's
    /// `momentum` and the batch's biased variance (divided by N).
    Flax,
    /// PyTorch's `nn.BatchNorm1d/2d(momentum=...)`:
    /// `running ← momentum · batch + (1 − momentum) · running` with the batch's unbiased
    /// variance (divided by N − 1), and a `num_batches_tracked` counter in `batch_stats`
    /// incremented every training step. `momentum: None` is PyTorch's cumulative moving
    /// average, weight `1 / num_batches_tracked` on the new value. (The counter is a float
    /// of the model's element type: exact up to 2^24 steps in `f32`.)
    PyTorch {
        /// PyTorch's momentum: the weight of the *new* value (PyTorch's default 0.1), or
        /// `None` for the cumulative average.
        momentum: Option<f64>,
    },
}

impl Default for BatchNorm {
    fn default() -> Self {
        BatchNorm {
            momentum: 0.99,
            epsilon: 1e-5,
            use_running_average: None,
            use_scale: true,
            use_bias: true,
            axis: -1,
            convention: StatsConvention::Flax,
            axis_name: None,
        }
    }
}

impl BatchNorm {
    /// Flax's defaults: momentum 0.99, epsilon 1e-5.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// PyTorch's `BatchNorm1d/2d(momentum=momentum)` (eps 1e-5, affine): its running
    /// statistics follow [`StatsConvention::PyTorch`]. `BatchNorm::pytorch(Some(0.1))` is
    /// PyTorch's default; `None` its cumulative average.
    #[must_use]
    pub fn pytorch(momentum: Option<f64>) -> Self {
        BatchNorm {
            convention: StatsConvention::PyTorch { momentum },
            ..Self::default()
        }
    }

    /// The same layer with another momentum (`0.9` is PyTorch's `momentum=0.1`).
    #[must_use]
    pub fn momentum(self, momentum: f64) -> Self {
        BatchNorm { momentum, ..self }
    }

    /// The same layer with another epsilon.
    #[must_use]
    pub fn epsilon(self, epsilon: f64) -> Self {
        BatchNorm { epsilon, ..self }
    }

    /// The same layer without a learned scale (no `scale` param).
    #[must_use]
    pub fn without_scale(self) -> Self {
        BatchNorm {
            use_scale: false,
            ..self
        }
    }

    /// The same layer without a learned bias (no `bias` param).
    #[must_use]
    pub fn without_bias(self) -> Self {
        BatchNorm {
            use_bias: false,
            ..self
        }
    }

    /// The same layer with batch statistics over every replica of the axis `name` (see
    /// [`BatchNorm::axis_name`](BatchNorm#structfield.axis_name)).
    #[must_use]
    pub fn axis_name(self, name: &str) -> Self {
        BatchNorm {
            axis_name: Some(name.to_string()),
            ..self
        }
    }

    /// The same layer normalising features along `axis` (negative: from the end).
    #[must_use]
    pub fn axis(self, axis: isize) -> Self {
        BatchNorm { axis, ..self }
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
        if let StatsConvention::PyTorch {
            momentum: Some(momentum),
        } = self.convention
            && !(momentum.is_finite() && (0.0..=1.0).contains(&momentum))
        {
            return invalid("PyTorch momentum", momentum, "finite and in [0, 1]");
        }
        Ok(())
    }

    /// The feature axis of an input of rank `ndim`, if in range.
    fn feature_axis(&self, ndim: usize) -> Option<usize> {
        let axis = if self.axis < 0 {
            ndim.checked_sub(self.axis.unsigned_abs())?
        } else {
            self.axis as usize
        };
        (axis < ndim).then_some(axis)
    }

    /// The layer, then `epilogue`: with fusion on and in training mode, the epilogue runs
    /// inside the fused node; otherwise it is applied to the layer's output.
    fn normalize<A: Float>(
        &self,
        scope: &mut Scope<'_, A>,
        x: &Tensor<A>,
        epilogue: Epilogue,
    ) -> Result<Tensor<A>> {
        let axis = self.feature_axis(x.ndim()).filter(|_| x.ndim() >= 2);
        let Some(axis) = axis else {
            return Err(Error::invalid(
                "BatchNorm",
                x.shape(),
                format!(
                    "expected (batch, ..., features) with feature axis {}",
                    self.axis
                ),
            ));
        };
        self.check_settings()?;
        let features = x.shape()[axis];
        let running_mean = scope.variable("batch_stats", "mean", &[features], init::zeros())?;
        let running_var = scope.variable("batch_stats", "var", &[features], init::ones())?;
        let batches_tracked = match self.convention {
            StatsConvention::Flax => None,
            StatsConvention::PyTorch { .. } => {
                Some(scope.variable("batch_stats", "num_batches_tracked", &[], init::zeros())?)
            }
        };
        let eps = A::of(self.epsilon);
        let scale = match self.use_scale {
            true => scope.param("scale", &[features], init::ones())?,
            false => Tensor::constant(ArrayD::ones(vec![features])),
        };
        let bias = match self.use_bias {
            true => scope.param("bias", &[features], init::zeros())?,
            false => Tensor::constant(ArrayD::zeros(vec![features])),
        };
        // Per-feature vectors shaped to broadcast along the feature axis: (F) when it is the
        // last axis, (1, F, 1, 1) for NCHW.
        let mut per_feature = vec![1; x.ndim()];
        per_feature[axis] = features;
        let last = axis == x.ndim() - 1;
        let along = |t: &Tensor<A>| {
            if last {
                Ok(t.clone()) // (F) broadcasts along the last axis as it is
            } else {
                t.reshape(&per_feature)
            }
        };
        let then = |y: Tensor<A>| match epilogue {
            Epilogue::Nothing => y,
            Epilogue::Relu => y.relu(),
        };

        if self.use_running_average.unwrap_or(!scope.is_training()) {
            // Constants only in the statistics: no node is recorded for them. The label says
            // what the constant holds (it is not the running variance itself).
            let var = running_var.value();
            let label = format!("1/√({} + ε)", var.label().unwrap_or("var"));
            let inv_std = along(&var)?
                .add_scalar(eps)
                .sqrt()
                .recip()
                .with_label(label);
            let normalized = x.sub(&along(&running_mean.value())?)?.mul(&inv_std)?;
            return Ok(then(normalized.mul(&along(&scale)?)?.add(&along(&bias)?)?));
        }
        // Cross-replica statistics need the replicas' communicator: required in apply, and
        // in init (which updates nothing) the replica's own batch stands in if none is given.
        let replicas = match &self.axis_name {
            Some(name) => match scope.replica_axis(name) {
                Some(axis) => Some(axis.clone()),
                None if scope.is_initializing() => None,
                None => {
                    return Err(Error::MissingReplicaAxis {
                        axis: name.clone(),
                        path: scope.path().to_string(),
                    });
                }
            },
            None => None,
        };
        // Statistics of no value are 0 / 0, and of one value a variance of 0 (PyTorch refuses
        // both: "Expected more than 1 value per channel when training").
        let per_channel = x.len() / features.max(1);
        // With replicas, the statistics are of every replica's values together.
        let mut count = per_channel as f64;
        if let Some(replica_axis) = &replicas {
            let mut global = [count];
            replica_axis
                .communicator()
                .all_reduce(&mut global, ReduceOp::Sum)?;
            count = global[0];
        }
        if count < 2.0 {
            return Err(Error::invalid(
                "BatchNorm",
                x.shape(),
                format!(
                    "expected more than 1 value per channel when training, got {count} \
                     (batch statistics of fewer are undefined or zero)"
                ),
            ));
        }
        let (y, batch_mean, batch_var) = if Fusion::is_on() && last && replicas.is_none() {
            let (y, batch) = fused::batch_norm_train(x, &scale, &bias, eps, epilogue)?;
            (y, batch.mean.into_dyn(), batch.var.into_dyn())
        } else {
            // The definition. Statistics over every axis but the features, the variance
            // biased (divided by N); the gradient flows through both. Over replicas, the
            // per-channel sums are all-reduced (`psum`, whose VJP all-reduces the gradient's
            // sums) and divided by the global count.
            let axes: Vec<usize> = (0..x.ndim()).filter(|&a| a != axis).collect();
            let mean_over_batch = |t: &Tensor<A>| match &replicas {
                None => t.mean_axes(&axes, true),
                Some(replica_axis) => Ok(t
                    .sum_axes(&axes, true)?
                    .psum(replica_axis)?
                    .mul_scalar(A::of(1.0 / count))),
            };
            let mean = mean_over_batch(x)?;
            let centred = x.sub(&mean)?;
            let var = mean_over_batch(&centred.square())?;
            let inv_std = var.add_scalar(eps).sqrt().recip();
            let y = centred
                .mul(&inv_std)?
                .mul(&along(&scale)?)?
                .add(&along(&bias)?)?;
            let flat = |t: &Tensor<A>| t.value().clone().into_shape_with_order(vec![features]);
            let (mean, var) = (flat(&mean), flat(&var));
            (then(y), mean.expect("(F) values"), var.expect("(F) values"))
        };
        if !scope.is_initializing() {
            // Values, not tensors: the update is detached by type.
            let (mean, var, tracked) = match self.convention {
                StatsConvention::Flax => {
                    let m = A::of(self.momentum);
                    // running ← m · running + (1 − m) · batch, in one pass over the batch.
                    let blend = |old: &Tensor<A>, mut blended: ArrayD<A>| {
                        blended.zip_mut_with(old.value(), |b, &o| *b = m * o + (A::one() - m) * *b);
                        blended
                    };
                    let mean = blend(&running_mean.value(), batch_mean);
                    (mean, blend(&running_var.value(), batch_var), None)
                }
                StatsConvention::PyTorch { momentum } => {
                    let stored = batches_tracked
                        .as_ref()
                        .and_then(|t| t.value().value().first().copied());
                    let tracked = stored.unwrap_or_default() + A::one();
                    // PyTorch's `exponential_average_factor`, and its expression order
                    // (aten's batch_norm_cpu_update_stats): factor · batch + (1 − factor) · old.
                    let factor = momentum.map_or(A::one() / tracked, A::of);
                    let bessel = A::of(count / (count - 1.0));
                    let blend = |old: &Tensor<A>, mut blended: ArrayD<A>, correction: A| {
                        blended.zip_mut_with(old.value(), |b, &o| {
                            *b = factor * (*b * correction) + (A::one() - factor) * o;
                        });
                        blended
                    };
                    let mean = blend(&running_mean.value(), batch_mean, A::one());
                    let var = blend(&running_var.value(), batch_var, bessel);
                    (mean, var, Some(ArrayD::from_elem(vec![], tracked)))
                }
            };
            // All checked before any is written: a NaN in the input, or an overflow of f32,
            // must not become the running statistics.
            running_mean.check_finite("BatchNorm", &mean)?;
            running_var.check_finite("BatchNorm", &var)?;
            running_mean.set(mean)?;
            running_var.set(var)?;
            if let (Some(variable), Some(count)) = (&batches_tracked, tracked) {
                variable.set(count)?;
            }
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
