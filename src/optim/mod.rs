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

use crate::{Float, Grads, Params, Result};

/// A gradient-based optimizer.
pub trait Optimizer<A: Float> {
    /// One step: moves `params` using `grads`, which must be keyed exactly like `params`
    /// (otherwise [`Error::KeyMismatch`](crate::Error::KeyMismatch), and nothing moves).
    fn update(&mut self, params: &mut Params<A>, grads: &Grads<A>) -> Result<()>;

    /// How many steps have been taken.
    fn steps(&self) -> usize;
}
