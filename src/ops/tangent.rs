//! Helpers for JVP rules: tangents are arrays of their input's shape (a missing one is zero),
//! an output's tangent has the output's (broadcast) shape.

use ndarray::{ArrayD, IxDyn};

use crate::float::Float;
use crate::ops::broadcast::zip_broadcast;

/// The sum of `terms`, each broadcast to `shape`: the tangent of a broadcasting op.
pub(crate) fn sum_broadcast<A: Float>(
    shape: &[usize],
    terms: impl IntoIterator<Item = ArrayD<A>>,
) -> ArrayD<A> {
    let mut total: Option<ArrayD<A>> = None;
    for term in terms {
        total = Some(match total {
            // The first term of the output's shape is the sum so far: no zeros to add to.
            None if term.shape() == shape => term,
            None => {
                let zeros = ArrayD::zeros(IxDyn(shape));
                zip_broadcast("add", &zeros, &term, |x, y| x + y).expect("a broadcast term")
            }
            Some(mut sum) if term.shape() == shape => {
                sum += &term;
                sum
            }
            Some(sum) => zip_broadcast("add", &sum, &term, |x, y| x + y).expect("a broadcast term"),
        });
    }
    total.unwrap_or_else(|| ArrayD::zeros(IxDyn(shape)))
}

/// The tangent of the only input of a one-input op: a rule is called only when some input
/// has a tangent.
pub(crate) fn only<'a, A>(tangents: &[Option<&'a ArrayD<A>>]) -> &'a ArrayD<A> {
    tangents[0].expect("a JVP rule runs only for an input with a tangent")
}
