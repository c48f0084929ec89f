//! Fused primitives: compositions that the training-step benchmark showed worth one node
//! each (`benches/train_step.rs`). Each replaces a chain of primitives with a single
//! forward pass and a closed-form VJP, derived in its file; `tests/fused_ops.rs` checks each
//! against the composite it replaces and against finite differences.

mod batch_norm;
mod cross_entropy;
mod linear;
mod rows;

use std::sync::Arc;

use ndarray::ArrayD;

use crate::Float;
use crate::gemm::matrix;

pub(crate) use batch_norm::{Then, batch_norm_train};
pub(crate) use cross_entropy::softmax_cross_entropy_fused;
pub(crate) use linear::linear;

/// The same array in standard (row-major, contiguous) layout: shared when it already is,
/// copied otherwise, so kernels can run over plain slices.
fn standard_layout<A: Float>(a: Arc<ArrayD<A>>) -> Arc<ArrayD<A>> {
    if a.is_standard_layout() {
        a
    } else {
        Arc::new(a.as_standard_layout().into_owned())
    }
}
