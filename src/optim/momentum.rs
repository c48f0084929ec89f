//! The heavy-ball momentum transform, shared by SGD (and usable by any optimizer).

use std::collections::BTreeMap;

use ndarray::{ArrayD, Zip};

use crate::Float;

/// Per-param velocities `v ← μ v + g`, starting at 0 (PyTorch and optax semantics, no
/// dampening). With Nesterov the direction is `g + μ v`, otherwise `v`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Momentum<A: Float> {
    pub(crate) velocities: BTreeMap<String, ArrayD<A>>,
}

impl<A: Float> Momentum<A> {
    /// Updates the velocity of `path` with `g` and returns the step direction.
    pub(crate) fn direction(
        &mut self,
        path: &str,
        g: &ArrayD<A>,
        mu: A,
        nesterov: bool,
    ) -> ArrayD<A> {
        let v = self
            .velocities
            .entry(path.to_string())
            .or_insert_with(|| ArrayD::zeros(g.raw_dim()));
        Zip::from(&mut *v).and(g).for_each(|v, &g| *v = mu * *v + g);
        if nesterov {
            Zip::from(g).and(&*v).map_collect(|&g, &v| g + mu * v)
        } else {
            v.clone()
        }
    }
}
