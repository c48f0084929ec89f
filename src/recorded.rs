//! A backward pass that records its own ops, so that its result can be differentiated again:
//! [`grad_of`] (PyTorch's `torch.autograd.grad(..., create_graph=True)`; what JAX does when
//! `grad` is taken inside a function that is differentiated).
//!
//! The walk is the first-order one (reverse over the tape from the output, each node's
//! contribution added into its inputs' slots), with tensors in the slots instead of arrays
//! and each op's recorded rule ([`Rule::vjp_recorded`](crate::tape::Rule)) in place of its
//! VJP: the rule's ops go on the same tape, after the forward pass, with the forward's
//! values linked to their nodes. Nothing is released (the forward pass must survive for the
//! next derivative), and an op without a recorded rule is an error naming it.

use ndarray::{ArrayD, Dimension};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::record::{Primal, RecordedGrads};
use crate::tape::{NodeView, Site, Tape};
use crate::tensor::Tensor;

/// The gradients of the one-element `output` with respect to each tensor of `wrt`, as
/// tensors recorded on the tape: differentiable again, to any order. A tensor of `wrt` that
/// `output` does not depend on gets zeros. PyTorch:
/// `torch.autograd.grad(output, wrt, create_graph=True)`.
///
/// The tensors of `wrt` are leaves or results of ops on the tape: params, or an input made a
/// leaf with [`ParamTensors::track`](crate::ParamTensors::track) to differentiate with
/// respect to it (a gradient penalty's `∂L/∂x`).
///
/// ```
/// use tapegrad::{grad_of, Tape};
/// use ndarray::arr1;
///
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf("x", arr1(&[1.0, 2.0]));
/// let y = x.powi(3).sum_all(); // y = Σ x³
/// let [dy] = <[_; 1]>::try_from(grad_of(&y, &[&x])?).unwrap(); // 3x², a tensor on the tape
/// let d2y = dy.sum_all().backward()?; // Σ 6x
/// assert_eq!(dy.value().as_slice().unwrap(), &[3.0, 12.0]);
/// assert_eq!(d2y.wrt(&x)?.as_slice().unwrap(), &[6.0, 12.0]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::NotScalar`] if `output` has more than one element; [`Error::DifferentTapes`] if a
/// tensor of `wrt` is tracked on another tape or not at all while `output` is tracked;
/// [`Error::MissingRule`] for an op without a recorded VJP (a `custom_op`);
/// [`Error::BackwardTwice`] if a first-order backward pass has released the tape.
pub fn grad_of<A: Float>(output: &Tensor<A>, wrt: &[&Tensor<A>]) -> Result<Vec<Tensor<A>>> {
    if output.len() != 1 {
        return Err(Error::NotScalar {
            op: "grad_of",
            shape: output.shape().into(),
        });
    }
    let zeros = |t: &Tensor<A>| Tensor::constant(ArrayD::zeros(t.shape()));
    let Some((tape, root)) = output.node() else {
        return Ok(wrt.iter().map(|t| zeros(t)).collect());
    };
    let mut ids = Vec::with_capacity(wrt.len());
    for t in wrt {
        match t.node() {
            Some((on, id)) if on.same_as(tape) => ids.push(id),
            _ => return Err(Error::DifferentTapes { op: "grad_of" }),
        }
    }
    let seed = Tensor::constant(ArrayD::ones(output.shape()));
    let mut slots = walk(tape, root, seed, 0)?;
    Ok(ids
        .iter()
        .zip(wrt)
        .map(|(&id, t)| {
            slots
                .get_mut(id)
                .and_then(Option::take)
                .unwrap_or_else(|| zeros(t))
        })
        .collect())
}

/// The recorded reverse walk from node `root`, seeded with `seed`, over the nodes from `root`
/// down to `lowest`: the gradient slots, those of the nodes walked released, those below
/// `lowest` (where the walk stops) and the leaves kept.
pub(crate) fn walk<A: Float>(
    tape: &Tape<A>,
    root: usize,
    seed: Tensor<A>,
    lowest: usize,
) -> Result<Vec<Option<Tensor<A>>>> {
    let mut slots: Vec<Option<Tensor<A>>> = Vec::new();
    slots.resize_with(root + 1, || None);
    slots[root] = Some(seed);
    for id in (lowest..=root).rev() {
        let NodeView::Op { op, inputs, rule } = tape.view(id) else {
            continue; // a leaf keeps its gradient: that is the result
        };
        let Some(g) = slots[id].take() else {
            continue; // the output does not depend on this node
        };
        let rule = rule.ok_or(Error::BackwardTwice { op, node: id })?;
        let site = Site {
            inputs: &inputs,
            node: id,
        };
        let contributions = rule
            .vjp_recorded(tape, &site, g.traced_on(tape, op)?)
            .ok_or(Error::MissingRule {
                op,
                rule: "differentiable VJP",
                order: "second-order",
            })??;
        for (input, contribution) in inputs.iter().zip(contributions) {
            let (Some(parent), Some(c)) = (input.node(), contribution) else {
                continue;
            };
            let c = Tensor::from_traced(tape, c).sum_to(tape.shape_of(parent).slice())?;
            slots[parent] = Some(match slots[parent].take() {
                Some(existing) => existing.add(&c)?,
                None => c,
            });
        }
    }
    Ok(slots)
}

/// The recorded VJP of a fused op by its definition: `definition` is run on `inputs` (the
/// op's inputs, linked to their nodes), each wanted input behind an identity node of its
/// own, and the walk from the definition's output stops at those identity nodes, whose
/// slots are the gradients. (Reading the inputs' own nodes instead would count twice an
/// input the op reads twice, and walk on into the rest of the tape.)
pub(crate) fn vjp_by_definition<A: Float>(
    primal: &Primal<'_, A>,
    inputs: &[Tensor<A>],
    g: &Tensor<A>,
    definition: impl FnOnce(&[Tensor<A>]) -> Result<Tensor<A>>,
) -> RecordedGrads<A> {
    let handles: Vec<Tensor<A>> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if primal.needs(i) {
                t.identity()
            } else {
                t.clone()
            }
        })
        .collect();
    let output = definition(&handles)?;
    let Some((_, root)) = output.node() else {
        return Ok(vec![None; inputs.len()]); // the output does not depend on the inputs
    };
    let lowest = handles
        .iter()
        .filter_map(Tensor::node_id)
        .max()
        .map_or(0, |id| id + 1);
    let mut slots = walk(primal.tape(), root, g.clone(), lowest)?;
    Ok(handles
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let id = h.node_id().filter(|_| primal.needs(i))?;
            Some(
                slots[id]
                    .take()
                    .unwrap_or_else(|| Tensor::constant(ArrayD::zeros(h.shape()))),
            )
        })
        .collect())
}
