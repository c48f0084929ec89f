//! Averaged weights kept as a collection: an exponential moving average of the params (what
//! timm's `ModelEmaV2` and flax users' `ema_params` keep), with a declared policy for each
//! buffer collection.
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

use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::variables::{PARAMS, Variables};

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
                        if old.shape() != value.shape() {
                            return Err(Error::VariableShape {
                                collection: EMA.to_string(),
                                path: name,
                                stored: old.shape().into(),
                                expected: value.shape().into(),
                            });
                        }
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
                if average.shape() != value.shape() {
                    return Err(Error::VariableShape {
                        collection: EMA.to_string(),
                        path: name,
                        stored: average.shape().into(),
                        expected: value.shape().into(),
                    });
                }
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
