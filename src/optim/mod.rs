//! Optimizers over [`Params`] alone.
//!
//! Every optimizer's update is `update(&mut Params, &Grads)`: no signature gives an optimizer
//! access to `batch_stats`, `state` or frozen params, so weight decay and Adam's moments can
//! never move them. Optimizer state (velocities, moments, the step count) lives in the
//! optimizer, keyed by param path; [`Optimizer::state`] reads it out and
//! [`Optimizer::load_state`] puts it back, which is how a checkpoint resumes a run
//! ([`checkpoint::save_training`](crate::checkpoint::save_training)).
//!
//! Before anything moves, `update` checks its settings (as PyTorch's constructors do: a
//! negative momentum, `β ≥ 1`, a NaN learning rate are [`Error::InvalidSetting`]), the keys
//! and shapes of the gradients, and that every gradient is finite
//! ([`Error::NonFinite`], naming the first one that is not; turn this check off with the
//! optimizer's `allow_non_finite(true)`). A step that fails changes neither the params nor
//! the optimizer's state.
//!
//! ```compile_fail,E0308
//! use tapegrad::optim::{Optimizer, Sgd};
//! use tapegrad::{Grads, Variables};
//! let mut variables = Variables::<f64>::new();
//! // An optimizer cannot be handed every collection, only the params:
//! Sgd::new(0.1).update(&mut variables, &Grads::default());
//! ```

mod adam;
mod momentum;
mod schedule;
mod settings;
mod sgd;
mod state;

pub use adam::Adam;
pub use schedule::LearningRate;
pub use sgd::Sgd;
pub use state::OptimizerState;

pub(crate) use settings::{count_at_least_one, setting_at_least_zero, setting_below_one};

use std::cmp::Ordering;
use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::collection::Params;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grads::Grads;

/// A gradient-based optimizer.
pub trait Optimizer<A: Float> {
    /// One step: moves `params` using `grads`, which must be keyed exactly like `params`
    /// (otherwise [`Error::KeyMismatch`]), with each gradient of its param's shape and kept
    /// state of that shape too ([`Error::IncompatibleShapes`]), every gradient finite unless
    /// allowed ([`Error::NonFinite`]), and valid settings ([`Error::InvalidSetting`]). On any
    /// error nothing moves: neither the params nor the optimizer's state.
    ///
    /// # Errors
    ///
    /// [`Error::KeyMismatch`] or [`Error::IncompatibleShapes`] if `grads` do not match `params`,
    /// [`Error::NonFinite`] for a NaN or infinite gradient (unless allowed),
    /// [`Error::InvalidSetting`] for a bad learning rate or setting. On any error neither `params`
    /// nor the optimizer's state is changed.
    fn update(&mut self, params: &mut Params<A>, grads: &Grads<A>) -> Result<()>;

    /// How many steps have been taken.
    fn steps(&self) -> usize;

    /// Everything the optimizer has learned from the steps so far (the step count, which
    /// is the schedule's position, and per-param velocities or moments), as named arrays.
    fn state(&self) -> OptimizerState<A>;

    /// Replaces the optimizer's state with `state` (read back from [`Optimizer::state`] or a
    /// checkpoint). An error, with nothing changed, if `state` is another optimizer's
    /// (another `kind`) or has slots this optimizer does not keep.
    ///
    /// # Errors
    ///
    /// [`Error::KeyMismatch`] if `state` is another kind of optimizer's or holds a slot this one
    /// does not keep; the optimizer is not changed.
    fn load_state(&mut self, state: OptimizerState<A>) -> Result<()>;
}

/// Checks that the per-param state an optimizer kept (a velocity, a moment) still has its
/// param's shape: a param replaced by one of another shape under the same path is an error
/// naming the path, before anything moves, rather than a state applied to the wrong elements.
pub(crate) fn check_state_shapes<A: Float>(
    op: &'static str,
    state: &BTreeMap<String, ArrayD<A>>,
    grads: &Grads<A>,
) -> Result<()> {
    let mut result = Ok(());
    walk_in_path_order(state.iter(), grads.iter(), |path, kept, g| {
        if let Some(kept) = kept.filter(|kept| kept.shape() != g.shape())
            && result.is_ok()
        {
            result = Err(Error::incompatible(
                op,
                kept.shape(),
                g.shape(),
                format!("the optimizer state of \"{path}\" was made for another shape"),
            ));
        }
    });
    result
}

/// The arrays of `state` for each gradient, in the gradients' (sorted) order; first a zero
/// array is added for each gradient that has none (every one at the first step). The map may
/// hold more (the state of params frozen since).
pub(crate) fn state_for_each_gradient<'a, A: Float>(
    state: &'a mut BTreeMap<String, ArrayD<A>>,
    grads: &Grads<A>,
) -> Vec<&'a mut ArrayD<A>> {
    let mut missing = Vec::new();
    walk_in_path_order(state.iter(), grads.iter(), |path, kept, g| {
        if kept.is_none() {
            missing.push((path.to_string(), ArrayD::zeros(g.raw_dim())));
        }
    });
    state.extend(missing);
    let mut found = Vec::with_capacity(grads.len());
    walk_in_path_order(state.iter_mut(), grads.iter(), |_, kept, _| {
        found.push(kept.expect("every gradient has its state"));
    });
    found
}

/// Calls `f(path, kept, gradient)` for each gradient in path order, with `kept` the entry of
/// `state` at that path, if any. Both are sorted by path, so one merge-like walk finds them
/// all: a path is compared with a few neighbours, not searched for from the root of the map
/// (about 20 string comparisons a step at the S workload, against 140 for a search per path).
fn walk_in_path_order<'s, 'g, V, A: Float + 'g>(
    state: impl Iterator<Item = (&'s String, V)>,
    grads: impl Iterator<Item = (&'g str, &'g ArrayD<A>)>,
    mut f: impl FnMut(&'g str, Option<V>, &'g ArrayD<A>),
) {
    let mut state = state.peekable();
    for (path, g) in grads {
        let kept = loop {
            match state.peek().map(|(kept, _)| kept.as_str().cmp(path)) {
                // The state of a path with no gradient (a frozen param): skipped.
                Some(Ordering::Less) => drop(state.next()),
                Some(Ordering::Equal) => break state.next().map(|(_, v)| v),
                Some(Ordering::Greater) | None => break None,
            }
        };
        f(path, kept, g);
    }
}

/// Everything `update` checks before it moves anything, in the order a user meets them:
/// the keys and shapes of the gradients, then their values.
pub(crate) fn check_gradients<A: Float>(
    op: &'static str,
    params: &Params<A>,
    grads: &Grads<A>,
    allow_non_finite: bool,
) -> Result<()> {
    grads.check_matches(params, op)?;
    if !allow_non_finite && let Some(path) = grads.first_non_finite() {
        return Err(Error::NonFinite {
            op,
            name: format!("the gradient of \"params/{path}\""),
        });
    }
    Ok(())
}
