//! The backward pass a picture draws: the size of what flowed along each edge, and of each
//! leaf's whole gradient.

use std::collections::BTreeMap;

use ndarray::{ArrayD, Dimension};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::shape::sum_to_shape;
use crate::tape::{NodeView, Tape};

/// The sizes (Euclidean norms) a backward pass moved: by edge `(node, input)`, and by leaf.
#[derive(Default)]
pub(super) struct Flows {
    pub(super) edges: BTreeMap<(usize, usize), f64>,
    pub(super) leaves: BTreeMap<usize, f64>,
}

impl Flows {
    /// The backward pass from node `root`, seeded with `seed`, run with the recorded VJPs
    /// without releasing them, so that the tape can still be walked.
    pub(super) fn from_tape<A: Float>(
        tape: &Tape<A>,
        root: usize,
        seed: ArrayD<A>,
    ) -> Result<Self> {
        let mut grads: Vec<Option<ArrayD<A>>> = vec![None; root + 1];
        grads[root] = Some(seed);
        let mut flows = Flows::default();
        for id in (0..=root).rev() {
            let NodeView::Op { op, inputs, rule } = tape.view(id) else {
                if let Some(g) = &grads[id] {
                    flows.leaves.insert(id, norm(g));
                }
                continue;
            };
            let Some(g) = grads[id].take() else { continue };
            let rule = rule.ok_or(Error::BackwardTwice { op, node: id })?;
            let needs: Vec<bool> = inputs.iter().map(|i| i.node().is_some()).collect();
            for (input, c) in inputs.iter().zip(rule.vjp(g, &needs)?) {
                let (Some(parent), Some(c)) = (input.node(), c) else {
                    continue;
                };
                let c = sum_to_shape(c, tape.shape_of(parent).slice());
                *flows.edges.entry((id, parent)).or_insert(0.0) += norm(&c);
                grads[parent] = Some(match grads[parent].take() {
                    Some(existing) => existing + &c,
                    None => c,
                });
            }
        }
        Ok(flows)
    }
}

fn norm<A: Float>(a: &ArrayD<A>) -> f64 {
    a.iter()
        .map(|v| v.as_f64() * v.as_f64())
        .sum::<f64>()
        .sqrt()
}

/// Three significant digits, in scientific notation below 0.001.
pub(super) fn short(size: f64) -> String {
    if size != 0.0 && size.abs() < 1e-3 {
        format!("{size:.1e}")
    } else {
        format!("{:.3}", size)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}
