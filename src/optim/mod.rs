//! Optimizers over [`Params`] alone.
//!
//! Every optimizer's update is `update(&mut Params, &Grads)`: no signature gives an optimizer
//! access to `batch_stats`, `state` or frozen params, so weight decay and Adam's moments can
//! never move them. Optimizer state (velocities, moments) lives in the optimizer, keyed by
//! param path, and can be inspected.
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
mod sgd;

pub use adam::Adam;
pub use schedule::LearningRate;
pub use sgd::Sgd;

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::collection::{Grads, Params};
use crate::error::{Error, Result};
use crate::float::Float;

/// A gradient-based optimizer.
pub trait Optimizer<A: Float> {
    /// One step: moves `params` using `grads`, which must be keyed exactly like `params`
    /// (otherwise [`Error::KeyMismatch`], and nothing moves). A
    /// param whose shape changed since the optimizer kept state for it is
    /// [`Error::IncompatibleShapes`], and nothing moves.
    fn update(&mut self, params: &mut Params<A>, grads: &Grads<A>) -> Result<()>;

    /// How many steps have been taken.
    fn steps(&self) -> usize;
}

/// Checks that the per-param state an optimizer kept (a velocity, a moment) still has its
/// param's shape: a param replaced by one of another shape under the same path is an error
/// naming the path, before anything moves, rather than a state applied to the wrong elements.
pub(crate) fn check_state_shapes<A: Float>(
    op: &'static str,
    state: &BTreeMap<String, ArrayD<A>>,
    grads: &Grads<A>,
) -> Result<()> {
    for (path, g) in grads.iter() {
        if let Some(kept) = state.get(path).filter(|kept| kept.shape() != g.shape()) {
            return Err(Error::incompatible(
                op,
                kept.shape(),
                g.shape(),
                format!("the optimizer state of \"{path}\" was made for another shape"),
            ));
        }
    }
    Ok(())
}
