//! Averaged weights kept as a collection: an exponential moving average of the params (what
//! timm's `ModelEmaV2` and flax users' `ema_params` keep), with a declared policy for each
//! buffer collection ([`Ema`]); stochastic weight averaging ([`Swa`]), with the running
//! statistics of the averaged weights recomputed over the data ([`recompute_batch_stats`]).
//!
//! The averages live in the variables' collection `ema`, at `params/<path>` and
//! `<collection>/<path>`: a collection like any other buffer, so they are never
//! differentiated, are saved and resumed with the rest by a checkpoint, and change only when
//! [`Ema::update`] is called, after a step. What to do with a buffer is a choice users of
//! averaged weights disagree on, and it matters: an averaged model evaluated with the live
//! running statistics normalises with statistics of other weights. So each buffer collection
//! is averaged or copied as declared ([`BufferPolicy`]); an undeclared one is left out, and
//! the averaged model uses the live one.
//!
//! ```
//! use tapegrad::average::{BufferPolicy, Ema};
//! use tapegrad::nn::{BatchNorm, Mlp};
//! use tapegrad::{ModuleExt, Tensor};
//!
//! let model = Mlp::new(&[4], 2).with_batch_norm(BatchNorm::new());
//! let x = Tensor::from_vec(&[3, 2], vec![0.5f64, -1.0, 2.0, 0.1, -0.3, 0.8])?;
//! let mut variables = model.init(0, &x)?;
//! let ema = Ema::new(0.99)?.buffers("batch_stats", BufferPolicy::Average);
//! ema.update(&mut variables)?; // after each step; the first copies
//! assert!(variables.get("ema/params/Dense_0/kernel").is_some());
//! let averaged = ema.averaged(&variables)?; // the averaged model's variables
//! let (_, _) = model.apply(&averaged, &x, &Default::default())?;
//! # Ok::<(), tapegrad::Error>(())
//! ```

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::accumulate::merge_moments;
use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::module::ApplyOptions;
use crate::nn::BATCH_MOMENTS;
use crate::optim::count_at_least_one;
use crate::variables::{Mutable, PARAMS, Updates, Variables};

/// The collection the averages are kept in.
pub const EMA: &str = "ema";

/// What [`Ema`] does with a buffer collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferPolicy {
    /// Averaged like the params (timm's `ModelEmaV2` averages BatchNorm's statistics too).
    Average,
    /// The live values, copied at each update.
    Copy,
}

/// An exponential moving average of the params, `ema ← decay · ema + (1 − decay) · params`,
/// starting from a copy at the first update; buffers as declared. See the
/// [module](self).
#[derive(Debug, Clone, PartialEq)]
pub struct Ema {
    decay: f64,
    buffers: BTreeMap<String, BufferPolicy>,
}

impl Ema {
    /// An average with weight `decay` on the old value (0.999 is common).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSetting`] unless `decay` is finite and in `[0, 1)`.
    pub fn new(decay: f64) -> Result<Ema> {
        if !(decay.is_finite() && (0.0..1.0).contains(&decay)) {
            return Err(Error::InvalidSetting {
                op: "Ema::new",
                setting: "decay",
                value: decay,
                expected: "finite and in [0, 1)",
            });
        }
        Ok(Ema {
            decay,
            buffers: BTreeMap::new(),
        })
    }

    /// The same average, with buffer collection `collection` averaged or copied.
    #[must_use]
    pub fn buffers(mut self, collection: &str, policy: BufferPolicy) -> Self {
        self.buffers.insert(collection.to_string(), policy);
        self
    }

    /// The weight on the old value.
    #[must_use]
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// Updates the averages in `variables` from their params and declared buffers (the
    /// first update copies them).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming a declared buffer collection the variables do not
    /// have; [`Error::VariableShape`] naming an average whose shape no longer matches its
    /// variable's; [`Error::NonFinite`] for an average that would not be finite. Nothing is
    /// changed then.
    pub fn update<A: Float>(&self, variables: &mut Variables<A>) -> Result<()> {
        let mut next = Collection::new();
        let stored = variables.collection(EMA).cloned().unwrap_or_default();
        let decay = A::of(self.decay);
        for (collection, policy) in self.sources(variables)? {
            let Some(live) = variables.collection(collection) else {
                continue;
            };
            for (path, value) in live.iter() {
                let name = format!("{collection}/{path}");
                let averaged = match (policy, stored.get(&name)) {
                    (BufferPolicy::Average, Some(old)) => {
                        same_shape(EMA, &name, old, value)?;
                        let mut blended = value.clone();
                        blended.zip_mut_with(old, |v, &o| *v = decay * o + (A::one() - decay) * *v);
                        blended
                    }
                    _ => value.clone(),
                };
                if !averaged.iter().all(|v| v.is_finite()) {
                    return Err(Error::NonFinite {
                        op: "Ema::update",
                        name: format!("{EMA}/{name}"),
                    });
                }
                next.insert(name, averaged);
            }
        }
        for (path, value) in next.iter() {
            variables.insert(EMA, path, value.clone())?;
        }
        Ok(())
    }

    /// `variables` with the params, and the declared buffers, replaced by their averages:
    /// what evaluating the averaged model takes (`model.apply(&ema.averaged(&v)?, …)`).
    ///
    /// # Errors
    ///
    /// [`Error::MissingVariable`] if an average is missing (no update yet, or a variable
    /// added since), [`Error::VariableShape`] if one no longer has its variable's shape,
    /// [`Error::InvalidArgument`] for a declared buffer collection the variables lack.
    pub fn averaged<A: Float>(&self, variables: &Variables<A>) -> Result<Variables<A>> {
        let stored = variables.collection(EMA);
        let mut averaged = variables.clone();
        for (collection, _) in self.sources(variables)? {
            let Some(live) = variables.collection(collection) else {
                continue;
            };
            for (path, value) in live.iter() {
                let name = format!("{collection}/{path}");
                let Some(average) = stored.and_then(|s| s.get(&name)) else {
                    return Err(Error::MissingVariable {
                        collection: EMA.to_string(),
                        path: name,
                    });
                };
                same_shape(EMA, &name, average, value)?;
                averaged.insert(collection, path, average.clone())?;
            }
        }
        Ok(averaged)
    }

    /// The collections averaged, with their policies: the params, then each declared buffer
    /// collection, which the variables must have.
    fn sources<'e, A: Float>(
        &'e self,
        variables: &Variables<A>,
    ) -> Result<Vec<(&'e str, BufferPolicy)>> {
        let mut sources = vec![(PARAMS, BufferPolicy::Average)];
        for (collection, &policy) in &self.buffers {
            if variables.collection(collection).is_none() {
                return Err(Error::invalid(
                    "Ema",
                    &[],
                    format!(
                        "the buffer collection \"{collection}\" was declared to Ema::buffers, \
                         but the variables have no such collection"
                    ),
                ));
            }
            sources.push((collection.as_str(), policy));
        }
        Ok(sources)
    }
}

/// An error naming `<collection>/<name>` unless the average kept there still has the shape of
/// the variable it averages (a model changed since the averaging began).
fn same_shape<A: Float>(
    collection: &str,
    name: &str,
    average: &ArrayD<A>,
    value: &ArrayD<A>,
) -> Result<()> {
    if average.shape() == value.shape() {
        return Ok(());
    }
    Err(Error::VariableShape {
        collection: collection.to_string(),
        path: name.to_string(),
        stored: average.shape().into(),
        expected: value.shape().into(),
    })
}

/// The collection a [`Swa`] keeps its average in.
pub const SWA: &str = "swa";

/// Stochastic weight averaging: the equal-weight mean of the params at each
/// [`Swa::update`] (once an epoch, say, late in training), kept in the `swa` collection with
/// its count, as `torch.optim.swa_utils.AveragedModel` keeps its `n_averaged`. The running
/// statistics are not averaged: statistics of the averaged weights are recomputed over the
/// data with [`recompute_batch_stats`].
///
/// ```
/// use tapegrad::average::Swa;
/// use tapegrad::{ModuleExt, Tensor};
/// let model = tapegrad::nn::Dense::new(2);
/// let mut variables = model.init(0, &Tensor::from_vec(&[1, 3], vec![1.0f64; 3])?)?;
/// let first = variables.params().get("kernel").unwrap().clone();
/// Swa.update(&mut variables)?;
/// variables.params_mut().insert("kernel", first.mapv(|w| w + 1.0));
/// Swa.update(&mut variables)?;
/// let averaged = Swa.averaged(&variables)?;
/// assert_eq!(averaged.params().get("kernel").unwrap(), &first.mapv(|w| w + 0.5));
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swa;

impl Swa {
    /// Adds the current params to the average: `avg ← avg + (p − avg) / (n + 1)`.
    ///
    /// # Errors
    ///
    /// [`Error::VariableShape`] naming an average whose shape no longer matches its param;
    /// nothing is changed.
    pub fn update<A: Float>(&self, variables: &mut Variables<A>) -> Result<()> {
        let stored = variables.collection(SWA).cloned().unwrap_or_default();
        let n = stored
            .get("count")
            .and_then(|c| c.first().copied())
            .unwrap_or_else(A::zero);
        let weight = A::one() / (n + A::one());
        let mut next = Collection::new();
        for (path, value) in variables.params().iter() {
            let name = format!("{PARAMS}/{path}");
            let averaged = match stored.get(&name) {
                Some(old) => {
                    same_shape(SWA, &name, old, value)?;
                    let mut sum = old.clone();
                    sum.zip_mut_with(value, |a, &p| *a += (p - *a) * weight);
                    sum
                }
                None => value.clone(),
            };
            next.insert(name, averaged);
        }
        next.insert("count", ArrayD::from_elem(vec![], n + A::one()));
        for (path, value) in next.iter() {
            variables.insert(SWA, path, value.clone())?;
        }
        Ok(())
    }

    /// `variables` with the params replaced by their average.
    ///
    /// # Errors
    ///
    /// [`Error::MissingVariable`] if a param has no average (no update yet),
    /// [`Error::VariableShape`] if one no longer has its param's shape.
    pub fn averaged<A: Float>(&self, variables: &Variables<A>) -> Result<Variables<A>> {
        let stored = variables.collection(SWA);
        let mut averaged = variables.clone();
        for (path, value) in variables.params().iter() {
            let name = format!("{PARAMS}/{path}");
            let Some(average) = stored.and_then(|s| s.get(&name)) else {
                return Err(Error::MissingVariable {
                    collection: SWA.to_string(),
                    path: name,
                });
            };
            same_shape(SWA, &name, average, value)?;
            averaged.params_mut().insert(path, average.clone());
        }
        Ok(averaged)
    }
}

/// The running statistics of every BatchNorm recomputed over a data set, for weights whose
/// statistics were never tracked (averaged ones): `forward(i, variables, options)` runs the
/// model on batch `i` of `batches` with `options` (training mode, asking for the batch
/// moments) and returns the updates. The moments of all batches are merged by count
/// (exactly), and each layer's running mean becomes their mean and its running variance
/// their variance: biased under Flax's convention, unbiased (`N / (N − 1)`) for a layer that
/// keeps PyTorch's `num_batches_tracked`. Returns the `batch_stats` to merge. PyTorch:
/// `torch.optim.swa_utils.update_bn`, which averages batch statistics instead of merging
/// their moments. As there, a BatchNorm after another sees inputs normalised batch by batch.
///
/// # Errors
///
/// [`Error::InvalidSetting`] for 0 batches; what `forward` returns; nothing is changed.
pub fn recompute_batch_stats<A: Float>(
    variables: &Variables<A>,
    batches: usize,
    mut forward: impl FnMut(usize, &Variables<A>, &ApplyOptions) -> Result<Updates<A>>,
) -> Result<Updates<A>> {
    count_at_least_one("recompute_batch_stats", "batches", batches)?;
    let options = ApplyOptions::train().mutable(Mutable::only([BATCH_MOMENTS]));
    let mut reported = Vec::with_capacity(batches);
    for i in 0..batches {
        let updates = forward(i, variables, &options)?;
        reported.push(
            updates
                .collection(BATCH_MOMENTS)
                .cloned()
                .unwrap_or_default(),
        );
    }
    let merged = merge_moments(&reported)?;
    let mut stats = variables
        .collection("batch_stats")
        .cloned()
        .unwrap_or_default();
    let layers: Vec<String> = merged
        .paths()
        .filter_map(|p| p.strip_suffix("count").map(str::to_string))
        .collect();
    for layer in layers {
        let count = merged
            .get(&format!("{layer}count"))
            .and_then(|c| c.first().copied())
            .map_or(0.0, |c| c.as_f64());
        let pytorch = stats.get(&format!("{layer}num_batches_tracked")).is_some();
        let correction = A::of(if pytorch && count > 1.0 {
            count / (count - 1.0)
        } else {
            1.0
        });
        if let Some(mean) = merged.get(&format!("{layer}mean")) {
            stats.insert(format!("{layer}mean"), mean.clone());
        }
        if let Some(var) = merged.get(&format!("{layer}var")) {
            stats.insert(format!("{layer}var"), var.mapv(|v| v * correction));
        }
    }
    let collections = BTreeMap::from([("batch_stats".to_string(), stats)]);
    Ok(Updates { collections })
}
