//! Forward mode on the tape: the tangent of every node from the tangents of the leaves,
//! swept in recording order (an op's inputs come before it), each op's JVP rule
//! ([`Rule::jvp`](crate::tape::Rule)) mapping its inputs' tangents to its own.
//!
//! Recording first and sweeping after (JAX's `linearize`, rather than pushing a dual number
//! through each op as it runs) reuses the tape, its ops and their saved values: the same
//! machinery serves reverse mode, forward mode and forward-over-reverse, where the sweep
//! runs over a recorded backward pass too.

use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::tape::{NodeView, Tape};
use crate::tensor::Tensor;

/// The tangents of the nodes `0..=upto`, from `seeds` (a node id and its tangent, of its
/// shape); a node that depends on no seeded node has none (a zero tangent).
pub(crate) fn sweep<A: Float>(
    tape: &Tape<A>,
    seeds: impl IntoIterator<Item = (usize, ArrayD<A>)>,
    upto: usize,
) -> Result<Vec<Option<ArrayD<A>>>> {
    let mut tangents: Vec<Option<ArrayD<A>>> = Vec::new();
    tangents.resize_with(upto + 1, || None);
    for (id, tangent) in seeds {
        if id <= upto {
            tangents[id] = Some(tangent);
        }
    }
    for id in 0..=upto {
        let NodeView::Op { op, inputs, rule } = tape.view(id) else {
            continue; // a leaf's tangent is its seed
        };
        let of_inputs: Vec<Option<&ArrayD<A>>> = inputs
            .iter()
            .map(|input| input.node().and_then(|parent| tangents[parent].as_ref()))
            .collect();
        if of_inputs.iter().all(Option::is_none) {
            continue;
        }
        let rule = rule.ok_or(Error::BackwardTwice { op, node: id })?;
        let tangent = rule.jvp(&of_inputs).ok_or(Error::MissingRule {
            op,
            rule: "JVP rule",
            order: "forward-mode",
        })??;
        tangents[id] = Some(tangent);
    }
    Ok(tangents)
}

/// The JVP of a fused op by its definition: `definition` run on a tape of its own, the
/// inputs with a tangent as its leaves, and swept forward.
pub(crate) fn jvp_by_definition<A: Float>(
    values: &[&Arc<ArrayD<A>>],
    tangents: &[Option<&ArrayD<A>>],
    definition: impl FnOnce(&[Tensor<A>]) -> Result<Tensor<A>>,
) -> Result<ArrayD<A>> {
    let tape = Tape::new();
    let mut seeds = Vec::new();
    let inputs: Vec<Tensor<A>> = values
        .iter()
        .zip(tangents)
        .map(|(value, tangent)| match tangent {
            Some(t) => {
                let leaf = tape.leaf_shared(None, Arc::clone(value));
                seeds.push((leaf.node_id().expect("a leaf"), (*t).clone()));
                leaf
            }
            None => Tensor::from_shared(Arc::clone(value)),
        })
        .collect();
    let output = definition(&inputs)?;
    let zeros = || ArrayD::zeros(output.shape());
    let Some(root) = output.node_id() else {
        return Ok(zeros());
    };
    let mut tangents = sweep(&tape, seeds, root)?;
    Ok(tangents[root].take().unwrap_or_else(zeros))
}
