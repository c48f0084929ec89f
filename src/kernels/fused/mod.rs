//! Fused implementations: compositions that the training-step benchmark showed worth one
//! node each. Each computes what a definition in the core computes, in a single forward pass
//! with a closed-form VJP derived in its file; the layer or loss whose definition it replaces
//! selects it when [`Fusion`](crate::Fusion) is on.

mod batch_norm;
mod cross_entropy;
mod linear;
mod rows;

pub(crate) use batch_norm::{Epilogue, batch_norm_train};
pub(crate) use cross_entropy::softmax_cross_entropy;
pub(crate) use linear::{column_sums, linear};
