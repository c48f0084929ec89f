//! `OptimizerState`: what an optimizer has learned from its steps, as named arrays.

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::collection::Collection;
use crate::error::{Error, Result};
use crate::float::Float;

/// An optimizer's per-param arrays by slot name, then by param path.
pub(crate) type SlotArrays<A> = BTreeMap<String, BTreeMap<String, ArrayD<A>>>;

/// An optimizer's state: which optimizer it belongs to, how many steps it has taken (the
/// learning-rate schedule's position, and Adam's bias correction), and its per-param arrays
/// in named slots (`"velocity"` for [`Sgd`](crate::optim::Sgd); `"mu"` and `"nu"`, optax's
/// names for the first and second moments, for [`Adam`](crate::optim::Adam)), each keyed by
/// param path. A slot is empty until the first step makes its arrays.
///
/// PyTorch: `optimizer.state_dict()["state"]`; optax: the optimizer's state tree.
///
/// ```
/// use tapegrad::optim::{Optimizer, Sgd};
/// use tapegrad::{value_and_grad, Params};
/// use ndarray::arr1;
///
/// let mut params: Params<f64> = [("w".to_string(), arr1(&[1.0]))].into_iter().collect();
/// let mut sgd = Sgd::new(0.1).momentum(0.9);
/// let (_, grads) = value_and_grad(&params, |p| Ok(p.get("w")?.square().sum_all()))?;
/// sgd.update(&mut params, &grads)?;
///
/// let state = sgd.state();
/// assert_eq!((state.kind.as_str(), state.steps), ("Sgd", 1));
/// assert_eq!(state.slots["velocity"].get("w").unwrap()[[0]], 2.0);
/// let mut resumed = Sgd::new(0.1).momentum(0.9);
/// resumed.load_state(state)?;
/// assert_eq!(resumed.velocity("w").unwrap()[[0]], 2.0);
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState<A: Float> {
    /// The optimizer it belongs to: `"Sgd"`, `"Adam"` or `"AdamW"`.
    pub kind: String,
    /// Steps taken.
    pub steps: usize,
    /// Per-param arrays by slot name.
    pub slots: BTreeMap<String, Collection<A>>,
}

impl<A: Float> OptimizerState<A> {
    /// A state of `kind` after `steps` steps, with these slots.
    pub(crate) fn new<'a>(
        kind: &str,
        steps: usize,
        slots: impl IntoIterator<Item = (&'static str, &'a BTreeMap<String, ArrayD<A>>)>,
    ) -> Self {
        let slots = slots
            .into_iter()
            .map(|(name, arrays)| {
                let collection = arrays.iter().map(|(p, a)| (p.clone(), a.clone())).collect();
                (name.to_string(), collection)
            })
            .collect();
        OptimizerState {
            kind: kind.to_string(),
            steps,
            slots,
        }
    }

    /// The slots as maps, checked against what an optimizer of `kind` keeps: another kind,
    /// or a slot it does not keep, is an error (`op` names the optimizer).
    pub(crate) fn into_slots(
        self,
        op: &'static str,
        kind: &str,
        expected: &[&str],
    ) -> Result<(usize, SlotArrays<A>)> {
        let unexpected: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !expected.contains(&name.as_str()))
            .cloned()
            .collect();
        if self.kind != kind || !unexpected.is_empty() {
            return Err(Error::KeyMismatch {
                op,
                missing: vec![format!("an optimizer state of kind {kind}")],
                unexpected: std::iter::once(format!("kind {}", self.kind))
                    .chain(unexpected.into_iter().map(|s| format!("slot {s}")))
                    .collect(),
            });
        }
        let slots = self
            .slots
            .into_iter()
            .map(|(name, collection)| {
                let arrays = collection
                    .iter()
                    .map(|(p, a)| (p.to_string(), a.clone()))
                    .collect();
                (name, arrays)
            })
            .collect();
        Ok((self.steps, slots))
    }
}
