//! The heavy-ball momentum transform, one element at a time, shared by SGD (and usable by
//! any optimizer that wants a velocity).

use crate::float::Float;

/// Updates the velocity `v ← μ v + g` (PyTorch and optax semantics: starts at 0, no
/// dampening) and returns the step direction: `g + μ v` with Nesterov, otherwise `v`.
#[inline(always)]
pub(crate) fn heavy_ball<A: Float>(v: &mut A, g: A, mu: A, nesterov: bool) -> A {
    *v = mu * *v + g;
    if nesterov { g + mu * *v } else { *v }
}
