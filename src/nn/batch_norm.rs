//! `BatchNorm` with running statistics in the `batch_stats` collection.

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::module::variable::Variable;
use crate::nn::init;
use crate::ops::normalize::{Normalization, Normalized, along_axis, batch_norm_train};
use crate::replicas::ReplicaAxis;
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
/// (with [`Fusion::On`](crate::Fusion), one fused node with a closed-form VJP computes the
/// same). It then
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
    /// Added to the variance before the square root (default 1e-5; it must be above 0).
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
        self.normalize(scope, x, false)
    }
}

/// BatchNorm followed by ReLU, as one layer with the variables of the BatchNorm it wraps
/// (same kind, same names), so that the ReLU can run inside the normalisation's fused node
/// in training mode: one pass over memory and one array fewer than a separate ReLU. What
/// [`Mlp`](crate::nn::Mlp) runs when its activation is ReLU. PyTorch:
/// `torch.ao.nn.intrinsic.BNReLU2d`.
///
/// ```
/// use tapegrad::nn::BatchNorm;
/// use tapegrad::{ApplyOptions, ModuleExt, Mutable, Tensor};
/// let x = Tensor::from_vec(&[4, 2], vec![1.0f64, -2.0, 3.0, 0.5, -1.0, 2.0, 0.0, 1.0])?;
/// let variables = BatchNorm::new().init(0, &x)?;
/// let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
/// let (fused, _) = BatchNorm::new().with_relu().apply(&variables, &x, &train)?;
/// let (plain, _) = BatchNorm::new().apply(&variables, &x, &train)?;
/// assert_eq!(fused.value(), plain.relu().value());
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNormRelu(pub BatchNorm);

impl BatchNorm {
    /// This layer followed by ReLU, as one layer (see [`BatchNormRelu`]).
    #[must_use]
    pub fn with_relu(self) -> BatchNormRelu {
        BatchNormRelu(self)
    }
}

impl<A: Float> Module<A> for BatchNormRelu {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "BatchNorm"
    }

    fn layer_kinds(&self) -> Vec<&'static str> {
        vec!["BatchNorm", "Relu"]
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        self.0.normalize(scope, x, true)
    }
}

/// A BatchNorm's variables in `batch_stats`: the running statistics, and PyTorch's counter
/// under its convention.
struct RunningStatistics<'s, A: Float> {
    mean: Variable<'s, A>,
    var: Variable<'s, A>,
    batches_tracked: Option<Variable<'s, A>>,
}

/// The new values of the running statistics after one training step.
struct Update<A> {
    mean: ArrayD<A>,
    var: ArrayD<A>,
    batches_tracked: Option<ArrayD<A>>,
}

impl BatchNorm {
    /// Momentum in `[0, 1]` and epsilon above 0, both finite; checked before the layer reads
    /// or writes anything.
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
        // As PyTorch ("eps must be positive"): with 0, a constant feature divides 0 by 0.
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return invalid("epsilon", self.epsilon, "finite and above 0");
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

    /// The feature axis of `x`: in range, and not the only axis.
    fn feature_axis<A: Float>(&self, x: &Tensor<A>) -> Result<usize> {
        let ndim = x.ndim();
        let axis = if self.axis < 0 {
            ndim.checked_sub(self.axis.unsigned_abs())
        } else {
            Some(self.axis as usize)
        };
        axis.filter(|&axis| axis < ndim && ndim >= 2)
            .ok_or_else(|| {
                Error::invalid(
                    "BatchNorm",
                    x.shape(),
                    format!(
                        "expected (batch, ..., features) with feature axis {}",
                        self.axis
                    ),
                )
            })
    }

    /// The layer, then ReLU if `relu`.
    fn normalize<A: Float>(
        &self,
        scope: &mut Scope<'_, A>,
        x: &Tensor<A>,
        relu: bool,
    ) -> Result<Tensor<A>> {
        let axis = self.feature_axis(x)?;
        self.check_settings()?;
        let features = x.shape()[axis];
        let training = !self.use_running_average.unwrap_or(!scope.is_training());
        let running = self.running_statistics(scope, features, training)?;
        let [scale, bias] = self.affine_params(scope, features)?;
        if !training {
            let y = self.evaluate(x, axis, &running, [&scale, &bias])?;
            return Ok(if relu { y.relu() } else { y });
        }
        let replicas = self.replica_axis(scope)?;
        let how = Normalization {
            axis,
            epsilon: self.epsilon,
            replicas: replicas.as_ref(),
            relu,
        };
        let batch = batch_norm_train(x, &scale, &bias, &how)?;
        let Normalized {
            output,
            mean,
            var,
            count,
        } = batch;
        if scope.is_initializing() || scope.is_recomputing() {
            // Init creates the statistics without updating them; a recomputation for the
            // backward pass runs after the first forward has made this step's update.
            return Ok(output);
        }
        let moments = Moments { mean, var, count };
        let reporting = scope.is_asked_for(BATCH_MOMENTS);
        if reporting {
            report(scope, &moments)?;
        }
        if scope.is_mutable_collection("batch_stats") || !reporting {
            // Moments the variables give (an accumulated step's, merged) stand in for the
            // batch's own; a step that reports its own updates from them.
            let moments = match reporting {
                true => moments,
                false => given_moments(scope, features)?.unwrap_or(moments),
            };
            let update = self.running_update(&running, moments);
            write(&running, update)?;
        }
        Ok(output)
    }

    /// The running statistics, created by `init` (zeros and ones, and the counter at 0).
    fn running_statistics<'s, A: Float>(
        &self,
        scope: &mut Scope<'s, A>,
        features: usize,
        training: bool,
    ) -> Result<RunningStatistics<'s, A>> {
        let mean = scope.variable("batch_stats", "mean", &[features], init::zeros())?;
        let var = scope.variable("batch_stats", "var", &[features], init::ones())?;
        let batches_tracked = match self.convention {
            StatsConvention::Flax => None,
            StatsConvention::PyTorch { momentum } => {
                Self::batches_tracked(scope, training, momentum)?
            }
        };
        Ok(RunningStatistics {
            mean,
            var,
            batches_tracked,
        })
    }

    /// PyTorch's step counter: created by `init`; in training, counted on where the
    /// variables have it, and required by the cumulative average (`momentum: None`), whose
    /// weight it is; never read in evaluation, where nothing depends on it. (Variables made
    /// for a Flax BatchNorm have none.)
    fn batches_tracked<'s, A: Float>(
        scope: &mut Scope<'s, A>,
        training: bool,
        momentum: Option<f64>,
    ) -> Result<Option<Variable<'s, A>>> {
        const COUNTER: &str = "num_batches_tracked";
        let present = scope.has_variable("batch_stats", COUNTER);
        let required = training && momentum.is_none();
        if required && !present && !scope.is_initializing() {
            return Err(Error::invalid(
                "BatchNorm",
                &[],
                format!(
                    "PyTorch's cumulative average (momentum None) weighs each batch by \
                     batch_stats/{path}{COUNTER}, which these variables lack (variables made for \
                     a Flax BatchNorm have none): insert it (a 0-d array of the batches seen so \
                     far, 0 to start), or use a fixed momentum",
                    path = match scope.path() {
                        "" => String::new(),
                        path => format!("{path}/"),
                    },
                ),
            ));
        }
        if scope.is_initializing() || (training && present) {
            return scope
                .variable("batch_stats", COUNTER, &[], init::zeros())
                .map(Some);
        }
        Ok(None)
    }

    /// `scale` and `bias`: params, or constant ones and zeros when turned off.
    fn affine_params<A: Float>(
        &self,
        scope: &mut Scope<'_, A>,
        features: usize,
    ) -> Result<[Tensor<A>; 2]> {
        let scale = match self.use_scale {
            true => scope.param("scale", &[features], init::ones())?,
            false => Tensor::constant(ArrayD::ones(vec![features])),
        };
        let bias = match self.use_bias {
            true => scope.param("bias", &[features], init::zeros())?,
            false => Tensor::constant(ArrayD::zeros(vec![features])),
        };
        Ok([scale, bias])
    }

    /// Evaluation: normalised with the running statistics, constants with no node on the
    /// tape. The label says what the constant holds (it is not the running variance itself).
    fn evaluate<A: Float>(
        &self,
        x: &Tensor<A>,
        axis: usize,
        running: &RunningStatistics<'_, A>,
        [scale, bias]: [&Tensor<A>; 2],
    ) -> Result<Tensor<A>> {
        let along = along_axis(axis, x.ndim());
        let var = running.var.value();
        let label = format!("1/√({} + ε)", var.label().unwrap_or("var"));
        let inv_std = along(&var)?
            .add_scalar(A::of(self.epsilon))
            .sqrt()
            .recip()
            .with_label(label);
        let normalized = x.sub(&along(&running.mean.value())?)?.mul(&inv_std)?;
        normalized.mul(&along(scale)?)?.add(&along(bias)?)
    }

    /// The replica axis the statistics are over, if the layer names one. Required in
    /// `apply`; in `init` (which updates nothing) the replica's own batch stands in if none
    /// is given.
    fn replica_axis<A: Float>(&self, scope: &Scope<'_, A>) -> Result<Option<ReplicaAxis>> {
        let Some(name) = &self.axis_name else {
            return Ok(None);
        };
        match scope.replica_axis(name) {
            Some(axis) => Ok(Some(axis.clone())),
            None if scope.is_initializing() => Ok(None),
            None => Err(Error::MissingReplicaAxis {
                axis: name.clone(),
                path: scope.path().to_string(),
            }),
        }
    }

    /// The running statistics after this batch, under the layer's convention: values, not
    /// tensors, so the update is detached by type.
    fn running_update<A: Float>(
        &self,
        running: &RunningStatistics<'_, A>,
        batch: Moments<A>,
    ) -> Update<A> {
        let (old_mean, old_var) = (running.mean.value(), running.var.value());
        match self.convention {
            StatsConvention::Flax => {
                let m = A::of(self.momentum);
                // running ← m · running + (1 − m) · batch, in one pass over the batch.
                let blend = |old: &Tensor<A>, mut blended: ArrayD<A>| {
                    blended.zip_mut_with(old.value(), |b, &o| *b = m * o + (A::one() - m) * *b);
                    blended
                };
                Update {
                    mean: blend(&old_mean, batch.mean),
                    var: blend(&old_var, batch.var),
                    batches_tracked: None,
                }
            }
            StatsConvention::PyTorch { momentum } => {
                let stored = running
                    .batches_tracked
                    .as_ref()
                    .and_then(|t| t.value().value().first().copied());
                let tracked = stored.unwrap_or_default() + A::one();
                // PyTorch's `exponential_average_factor`, and its expression order
                // (aten's batch_norm_cpu_update_stats): factor · batch + (1 − factor) · old.
                let factor = momentum.map_or(A::one() / tracked, A::of);
                let bessel = A::of(batch.count / (batch.count - 1.0));
                let blend = |old: &Tensor<A>, mut blended: ArrayD<A>, correction: A| {
                    blended.zip_mut_with(old.value(), |b, &o| {
                        *b = factor * (*b * correction) + (A::one() - factor) * o;
                    });
                    blended
                };
                Update {
                    mean: blend(&old_mean, batch.mean, A::one()),
                    var: blend(&old_var, batch.var, bessel),
                    batches_tracked: Some(ArrayD::from_elem(vec![], tracked)),
                }
            }
        }
    }
}

/// The collection where a training-mode BatchNorm reports its batch's moments when an `apply`
/// asks for it by name (`Mutable::only([BATCH_MOMENTS])`, not [`Mutable::all`]):
/// `<path>/mean`, `<path>/var` (biased) and `<path>/count` (the values each feature's
/// statistics are over), in place of updating its running statistics unless `batch_stats` is
/// named too. Given back in the variables, moments of this collection are what the running
/// statistics are updated from, instead of the batch's own: how
/// [`accumulate`](crate::accumulate) makes one update of a step's micro-batches, merged. So
/// never merge a report into a model's variables: [`accumulate`](crate::accumulate) keeps
/// them apart.
///
/// [`Mutable::all`]: crate::Mutable::all
pub const BATCH_MOMENTS: &str = "batch_moments";

/// A batch's moments per feature: the mean, the biased variance, and how many values each is
/// over.
struct Moments<A> {
    mean: ArrayD<A>,
    var: ArrayD<A>,
    count: f64,
}

/// Writes `moments` into [`BATCH_MOMENTS`].
fn report<A: Float>(scope: &mut Scope<'_, A>, moments: &Moments<A>) -> Result<()> {
    scope.put(BATCH_MOMENTS, "mean", moments.mean.clone())?;
    scope.put(BATCH_MOMENTS, "var", moments.var.clone())?;
    scope.put(
        BATCH_MOMENTS,
        "count",
        ArrayD::from_elem(vec![], A::of(moments.count)),
    )
}

/// The moments the variables give for this layer in [`BATCH_MOMENTS`], if they give any.
fn given_moments<A: Float>(
    scope: &mut Scope<'_, A>,
    features: usize,
) -> Result<Option<Moments<A>>> {
    if !scope.has_variable(BATCH_MOMENTS, "count") {
        return Ok(None);
    }
    let read = |scope: &mut Scope<'_, A>, name, shape: &[usize]| -> Result<ArrayD<A>> {
        let variable = scope.variable(BATCH_MOMENTS, name, shape, init::zeros())?;
        Ok(variable.value().value().clone())
    };
    let mean = read(scope, "mean", &[features])?;
    let var = read(scope, "var", &[features])?;
    let count = read(scope, "count", &[])?;
    let count = count.first().map_or(0.0, |c| c.as_f64());
    Ok(Some(Moments { mean, var, count }))
}

/// Writes the update, all of it checked first: a NaN in the input, or an overflow of f32,
/// must not become the running statistics.
fn write<A: Float>(running: &RunningStatistics<'_, A>, update: Update<A>) -> Result<()> {
    running.mean.check_finite("BatchNorm", &update.mean)?;
    running.var.check_finite("BatchNorm", &update.var)?;
    running.mean.set(update.mean)?;
    running.var.set(update.var)?;
    if let (Some(variable), Some(count)) = (&running.batches_tracked, update.batches_tracked) {
        variable.set(count)?;
    }
    Ok(())
}
