//! Gradient accumulation: the gradient of a batch too large for one step, from `k`
//! micro-batches, with the running statistics' policy named at the call.
//!
//! The gradient of the mean loss over `k` micro-batches of `B` is the mean of their
//! gradients, and that is what [`accumulate`] returns. The running statistics are another
//! matter, and the reason this is a function rather than a loop users write: BatchNorm's
//! momentum is applied once per update, so `k` updates of `B` are not one update of `kB`
//! (PyTorch, Keras and the accumulation libraries all do the former). [`StatsPolicy`] says
//! which one a step makes:
//!
//! * [`StatsPolicy::PerMicroBatch`]: each micro-batch updates the running statistics in turn,
//!   and the next one sees them (PyTorch's behaviour).
//! * [`StatsPolicy::MergedPerStep`]: each micro-batch reports its batch moments
//!   ([`BATCH_MOMENTS`]); they are merged by count, exactly (the parallel-variance formula:
//!   `μ = Σ nᵢ μᵢ / N`, `σ² = Σ nᵢ (σᵢ² + (μᵢ − μ)²) / N`), and the running statistics are
//!   updated once, from the merged moments: they are those of one batch of `kB` (for a
//!   BatchNorm after another, of the inputs it saw: see below).
//!
//! Either way each micro-batch is *normalised* with its own statistics, as "ghost batch
//! normalisation" does: the gradient is that of `k` batches of `B`, not of one of `kB`, and
//! a BatchNorm that follows another sees inputs normalised batch by batch, so its merged
//! statistics are those of what it saw. Only where the input reaches a layer unnormalised are
//! its running statistics exactly one batch's.
//!
//! The options the loss function is given are training mode with the policy's collections
//! mutable (`batch_stats`, or [`BATCH_MOMENTS`]); a model that needs more (a dropout seed)
//! adds it to a clone of them.
//!
//! # Two forwards, one update
//!
//! A step that runs the model twice (SAM's forward at perturbed weights, a gradient penalty's
//! extra forward) gets two sets of updates back, one from each `apply`, and merges the one
//! it names: the forward at the step's weights. Nothing is written until a merge, so the other
//! forward's statistics simply go unused, and the running statistics move once per step
//! (`tests/accumulate.rs` shows a SAM step whose statistics are those of one forward, bit for
//! bit).

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::autodiff::{ParamTensors, value_and_grad_with_aux};
use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grads::Grads;
use crate::module::ApplyOptions;
use crate::nn::BATCH_MOMENTS;
use crate::optim::count_at_least_one;
use crate::tensor::Tensor;
use crate::variables::{Mutable, Updates, Variables};

/// How an accumulated step updates the running statistics (see the [module](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatsPolicy {
    /// One update per micro-batch, each micro-batch seeing the last one's: PyTorch's
    /// behaviour, momentum applied `k` times.
    PerMicroBatch,
    /// One update per step, from the micro-batches' moments merged by count: the running
    /// statistics of one batch of `k` times the size.
    MergedPerStep,
}

/// What an accumulated step computed: the mean loss and the mean gradient over the
/// micro-batches, and the updated collections to merge (the running statistics).
#[derive(Debug, Clone)]
pub struct Accumulated<A: Float> {
    /// The mean of the micro-batches' losses.
    pub loss: A,
    /// The mean of the micro-batches' gradients: the gradient of the mean loss.
    pub grads: Grads<A>,
    /// The collections to merge into the variables, as `apply` returns them.
    pub updates: Updates<A>,
}

/// The gradient of the mean loss over `micro_batches` micro-batches, and the running
/// statistics updated as `policy` says. `loss(i, params, variables, options)` runs the model
/// on micro-batch `i` with `options` (training mode, and the collections the policy writes
/// made mutable: pass them to `apply_tracked` as they are) and returns its loss and the
/// updates `apply_tracked` returned. `variables` are not changed: merge
/// [`Accumulated::updates`] after the optimizer's step, as after any step. Under
/// [`StatsPolicy::MergedPerStep`], `loss` is called once more, for the last micro-batch with
/// no tape, to make the one update from the merged moments: a forward pass, `1/k` of the
/// step's forward work.
///
/// ```
/// use tapegrad::accumulate::{accumulate, StatsPolicy};
/// use tapegrad::nn::{BatchNorm, Mlp};
/// use tapegrad::{softmax_cross_entropy, ModuleExt, Tensor};
///
/// let model = Mlp::new(&[4], 3).with_batch_norm(BatchNorm::new().momentum(0.9));
/// let x = Tensor::from_vec(&[8, 2], (0..16).map(|i| (i as f64 * 0.37).sin()).collect())?;
/// let labels = [0, 1, 2, 0, 1, 2, 0, 1];
/// let mut variables = model.init(0, &x)?;
/// // Two micro-batches of 4 rows, the running statistics those of one batch of 8.
/// let step = accumulate(&variables, 2, StatsPolicy::MergedPerStep, |i, p, vars, options| {
///     let rows = ndarray::s![4 * i..4 * i + 4, ..];
///     let micro = Tensor::constant(x.value().slice(rows).to_owned());
///     let (logits, updates) = model.apply_tracked(p, vars, &micro, options)?;
///     Ok((softmax_cross_entropy(&logits, &labels[4 * i..4 * i + 4])?, updates))
/// })?;
/// assert_eq!(step.grads.paths().collect::<Vec<_>>(), variables.params().paths().collect::<Vec<_>>());
/// variables.merge(step.updates)?;
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::InvalidSetting`] for 0 micro-batches; what `loss` returns, or a merge of its
/// updates; nothing is changed.
pub fn accumulate<A: Float>(
    variables: &Variables<A>,
    micro_batches: usize,
    policy: StatsPolicy,
    mut loss: impl FnMut(
        usize,
        &ParamTensors<A>,
        &Variables<A>,
        &ApplyOptions,
    ) -> Result<(Tensor<A>, Updates<A>)>,
) -> Result<Accumulated<A>> {
    count_at_least_one("accumulate", "micro-batches", micro_batches)?;
    let writes = match policy {
        StatsPolicy::PerMicroBatch => Mutable::only(["batch_stats"]),
        StatsPolicy::MergedPerStep => Mutable::only([BATCH_MOMENTS]),
    };
    let options = ApplyOptions::train().mutable(writes);
    // Each micro-batch sees the variables as the policy leaves them: with the previous
    // micro-batches' updates merged, or as they were.
    let mut current = variables.clone();
    let mut reported: Vec<Collection<A>> = Vec::with_capacity(micro_batches);
    let (mut loss_sum, mut grad_sum) = (A::zero(), Grads::zeros_like(variables.params()));
    for i in 0..micro_batches {
        let (value, updates, grads) =
            value_and_grad_with_aux(current.params(), |p| loss(i, p, &current, &options))?;
        loss_sum += value;
        grad_sum = grad_sum.add(&grads)?;
        match policy {
            StatsPolicy::PerMicroBatch => current.merge(updates)?,
            StatsPolicy::MergedPerStep => {
                reported.push(
                    updates
                        .collection(BATCH_MOMENTS)
                        .cloned()
                        .unwrap_or_default(),
                );
            }
        }
    }
    let scale = A::one() / A::of(micro_batches as f64);
    let updates = match policy {
        StatsPolicy::PerMicroBatch => updates_of(&current, "batch_stats"),
        StatsPolicy::MergedPerStep => {
            // One more forward of the last micro-batch, with no tape, whose BatchNorms update
            // their running statistics from the merged moments instead of their batch's.
            let merged = merge_moments(&reported)?;
            let mut given = variables.clone();
            for (path, value) in merged.iter() {
                given.insert(BATCH_MOMENTS, path, value.clone())?;
            }
            let commit = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
            let constants = ParamTensors::constants(variables.params());
            let (_, updates) = loss(micro_batches - 1, &constants, &given, &commit)?;
            updates
        }
    };
    Ok(Accumulated {
        loss: loss_sum * scale,
        grads: grad_sum.scale(scale),
        updates,
    })
}

/// `collection` of `variables`, as the updates of an `apply` that made it mutable.
fn updates_of<A: Float>(variables: &Variables<A>, collection: &str) -> Updates<A> {
    let mut collections = BTreeMap::new();
    if let Some(found) = variables.collection(collection) {
        collections.insert(collection.to_string(), found.clone());
    }
    Updates { collections }
}

/// The moments of every BatchNorm over all the micro-batches, merged by count: for each layer
/// path, `mean`, `var` and `count` of the union (the parallel-variance formula, exact).
pub(crate) fn merge_moments<A: Float>(reported: &[Collection<A>]) -> Result<Collection<A>> {
    let mut merged = Collection::new();
    let Some(first) = reported.first() else {
        return Ok(merged);
    };
    let layers: Vec<&str> = first
        .paths()
        .filter_map(|p| p.strip_suffix("/count").or((p == "count").then_some("")))
        .collect();
    for layer in layers {
        let name = |field: &str| match layer {
            "" => field.to_string(),
            _ => format!("{layer}/{field}"),
        };
        let field = |moments: &Collection<A>, f: &str| -> Result<ArrayD<A>> {
            moments
                .get(&name(f))
                .cloned()
                .ok_or_else(|| Error::ReplicasDisagree {
                    op: "accumulate",
                    detail: format!("a micro-batch reported no {}", name(f)),
                })
        };
        let counts: Vec<f64> = reported
            .iter()
            .map(|m| Ok(field(m, "count")?.first().map_or(0.0, |c| c.as_f64())))
            .collect::<Result<_>>()?;
        let total: f64 = counts.iter().sum();
        let means: Vec<ArrayD<A>> = reported
            .iter()
            .map(|m| field(m, "mean"))
            .collect::<Result<_>>()?;
        let vars: Vec<ArrayD<A>> = reported
            .iter()
            .map(|m| field(m, "var"))
            .collect::<Result<_>>()?;
        let mut mean = ArrayD::<A>::zeros(means[0].raw_dim());
        for (m, &n) in means.iter().zip(&counts) {
            mean.zip_mut_with(m, |acc, &v| *acc += A::of(n / total) * v);
        }
        let mut var = ArrayD::<A>::zeros(mean.raw_dim());
        for ((m, v), &n) in means.iter().zip(&vars).zip(&counts) {
            let weight = A::of(n / total);
            ndarray::Zip::from(&mut var)
                .and(m)
                .and(v)
                .and(&mean)
                .for_each(|acc, &mi, &vi, &mu| *acc += weight * (vi + (mi - mu) * (mi - mu)));
        }
        merged.insert(name("mean"), mean);
        merged.insert(name("var"), var);
        merged.insert(name("count"), ArrayD::from_elem(vec![], A::of(total)));
    }
    Ok(merged)
}
