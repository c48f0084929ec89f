//! Fused primitives: compositions that the training-step benchmark showed worth one node
//! each (`benches/train_step.rs`). Each replaces a chain of primitives with a single
//! forward pass and a closed-form VJP, derived in its file; `tests/fused_ops.rs` checks each
//! against the composite it replaces and against finite differences.

mod batch_norm;
mod cross_entropy;
mod linear;
mod rows;

use std::sync::Arc;

use ndarray::{ArrayD, ArrayView2, Ix2};

use crate::Float;

pub(crate) use batch_norm::{Then, batch_norm_train};
pub(crate) use cross_entropy::softmax_cross_entropy_fused;
pub(crate) use linear::linear;

/// A 2-D value as a matrix view; callers have checked the dimensionality.
fn matrix<A: Float>(a: &ArrayD<A>) -> ArrayView2<'_, A> {
    a.view()
        .into_dimensionality::<Ix2>()
        .expect("a matrix by construction")
}

/// The same array in standard (row-major, contiguous) layout: shared when it already is,
/// copied otherwise, so kernels can run over plain slices.
fn standard_layout<A: Float>(a: Arc<ArrayD<A>>) -> Arc<ArrayD<A>> {
    if a.is_standard_layout() {
        a
    } else {
        Arc::new(a.as_standard_layout().into_owned())
    }
}
