//! Helpers for JVP rules: tangents are arrays of their input's shape (a missing one is zero),
//! an output's tangent has the output's (broadcast) shape.

use ndarray::{ArrayD, IxDyn};

use crate::float::Float;

/// The sum of `terms`, each broadcast to `shape`: the tangent of a broadcasting op.
pub(crate) fn sum_broadcast<A: Float>(
    shape: &[usize],
    terms: impl IntoIterator<Item = ArrayD<A>>,
) -> ArrayD<A> {
    let mut total = ArrayD::zeros(IxDyn(shape));
    for term in terms {
        total += &term;
    }
    total
}

/// The tangent of the only input of a one-input op: a rule is called only when some input
/// has a tangent.
pub(crate) fn only<'a, A>(tangents: &[Option<&'a ArrayD<A>>]) -> &'a ArrayD<A> {
    tangents[0].expect("a JVP rule runs only for an input with a tangent")
}
