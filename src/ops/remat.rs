//! Recomputation ("rematerialisation", gradient checkpointing): a block whose forward keeps
//! only its inputs, and runs again during backward to differentiate. JAX: `jax.checkpoint`;
//! PyTorch: `torch.utils.checkpoint.checkpoint`.
//!
//! The block runs first on detached copies of its inputs, so it records nothing and every
//! intermediate array is freed as soon as the next op has read it. One node goes on the tape
//! for the whole block, saving its inputs. Its VJP makes a fresh tape, runs the block again
//! with the inputs as leaves of it, and walks that tape back from the output's gradient: the
//! same ops on the same values, so the same gradients, bit for bit, at the price of a second
//! forward. Memory held for the backward pass drops from every activation of the block to
//! its inputs, plus one block's activations while its VJP runs.

use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::record::{Primal, record_rules, run_recorded};
use crate::recorded::vjp_by_definition;
use crate::tangents::jvp_by_definition;
use crate::tape::{Rule, Site, Traced};
use crate::tape::{Saved, Tape};
use crate::tensor::Tensor;

/// `f(inputs)`, recomputed during backward instead of keeping what its ops would save.
/// JAX: `jax.checkpoint(f)(*inputs)`; PyTorch: `torch.utils.checkpoint.checkpoint(f, *inputs)`.
///
/// `f` must be a function of `inputs` alone: a tracked tensor it captured from outside is
/// an error (it would be recorded, defeating the purpose, and could not be recomputed).
/// It must be deterministic: it runs twice on the same values. Blocks that hold params and
/// buffers are recomputed with [`nn::Remat`](crate::nn::Remat), which also replays their
/// variables and random draws.
///
/// ```
/// use tapegrad::{remat, Tape, Tensor};
/// use ndarray::arr1;
///
/// let tape = Tape::<f64>::new();
/// let x = tape.leaf("x", arr1(&[0.5, -1.0, 2.0]));
/// let w = tape.leaf("w", arr1(&[2.0, 3.0, -1.0]));
/// let block = |t: &[Tensor<f64>]| Ok(t[0].mul(&t[1])?.tanh().square());
/// let y = remat(block, &[&x, &w])?.sum_all();
/// assert_eq!(tape.len(), 4); // two leaves, the recomputed block, the sum
/// let grads = y.backward()?;
///
/// let plain = Tape::<f64>::new();
/// let (px, pw) = (plain.leaf("x", arr1(&[0.5, -1.0, 2.0])), plain.leaf("w", arr1(&[2.0, 3.0, -1.0])));
/// let expected = block(&[px.clone(), pw.clone()])?.sum_all().backward()?;
/// assert_eq!(grads.wrt(&x)?, expected.wrt(&px)?);
/// assert_eq!(grads.wrt(&w)?, expected.wrt(&pw)?);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// What `f` returns; [`Error::InvalidArgument`] if `f` used a tracked tensor it was not
/// given; [`Error::DifferentTapes`] if the inputs are tracked on different tapes. During
/// backward, what `f` returns when run again, and [`Error::InvalidArgument`] if it then
/// returns another shape.
pub fn remat<A, F>(f: F, inputs: &[&Tensor<A>]) -> Result<Tensor<A>>
where
    A: Float,
    F: Fn(&[Tensor<A>]) -> Result<Tensor<A>> + 'static,
{
    let detached: Vec<Tensor<A>> = inputs.iter().map(|t| t.detach()).collect();
    let output = f(&detached)?;
    recompute_later(inputs, &output, move |tensors| f(tensors))
}

/// Records `output`, computed from detached copies of `inputs` by the caller, as one node
/// whose VJP runs `again` on the inputs (leaves of a fresh tape where a gradient is wanted,
/// constants elsewhere) and differentiates that.
pub(crate) fn recompute_later<A: Float>(
    inputs: &[&Tensor<A>],
    output: &Tensor<A>,
    again: impl Fn(&[Tensor<A>]) -> Result<Tensor<A>> + 'static,
) -> Result<Tensor<A>> {
    if output.is_tracked() {
        return Err(Error::invalid(
            "remat",
            output.shape(),
            "the block used a tracked tensor it was not given as an input; pass it in, \
             so that it is saved and recomputed with the rest",
        ));
    }
    let recomputed = Recomputed {
        values: inputs.iter().map(|t| t.shared_value()).collect(),
        shape: output.shape().to_vec(),
        again,
    };
    record_rules("remat", inputs, output.shared_value(), recomputed)
}

/// A recomputed block: its inputs' values, its output's shape, and the block.
struct Recomputed<A, F> {
    values: Vec<Arc<ArrayD<A>>>,
    shape: Vec<usize>,
    again: F,
}

impl<A, F> Recomputed<A, F>
where
    A: Float,
    F: Fn(&[Tensor<A>]) -> Result<Tensor<A>>,
{
    /// The block run again, its output checked against the first run's shape.
    fn run(&self, inputs: &[Tensor<A>]) -> Result<Tensor<A>> {
        let output = (self.again)(inputs)?;
        if output.shape() != self.shape.as_slice() {
            return Err(Error::incompatible(
                "remat",
                &self.shape,
                output.shape(),
                "the block, run again for its backward pass, returned another shape",
            ));
        }
        Ok(output)
    }
}

impl<A, F> Rule<A> for Recomputed<A, F>
where
    A: Float,
    F: Fn(&[Tensor<A>]) -> Result<Tensor<A>>,
{
    /// The block run again on a fresh tape, the inputs that want a gradient its leaves, and
    /// that tape walked back from `g`.
    fn vjp(&self, g: ArrayD<A>, needs: &[bool]) -> Result<Vec<Option<ArrayD<A>>>> {
        let tape = Tape::new();
        let tensors: Vec<Tensor<A>> = self
            .values
            .iter()
            .zip(needs)
            .map(|(value, &need)| match need {
                true => tape.leaf_shared(None, Arc::clone(value)),
                false => Tensor::from_shared(Arc::clone(value)),
            })
            .collect();
        let output = self.run(&tensors)?;
        let root = match output.node() {
            None => return Ok(vec![None; tensors.len()]), // no dependence on the inputs
            Some((on, id)) if on.same_as(&tape) => id,
            Some(_) => return Err(Error::DifferentTapes { op: "remat" }),
        };
        let mut slots = tape.backward_from(root, g, Saved::Release)?;
        Ok(tensors
            .iter()
            .map(|t| t.node_id().and_then(|id| slots[id].take()))
            .collect())
    }

    /// The block run again on the tape itself, its inputs linked to their nodes, and
    /// differentiated as recorded ops.
    fn vjp_recorded(
        &self,
        tape: &Tape<A>,
        site: &Site<'_>,
        g: Traced<A>,
    ) -> Option<Result<Vec<Option<Traced<A>>>>> {
        Some(run_recorded(tape, site, g, |g, primal: &Primal<'_, A>| {
            let inputs: Vec<Tensor<A>> = (0..self.values.len())
                .map(|i| primal.input(i, &self.values[i]))
                .collect();
            vjp_by_definition(primal, &inputs, g, |t| self.run(t))
        }))
    }

    fn jvp(&self, tangents: &[Option<&ArrayD<A>>]) -> Option<Result<ArrayD<A>>> {
        let values: Vec<&Arc<ArrayD<A>>> = self.values.iter().collect();
        Some(jvp_by_definition(&values, tangents, |t| self.run(t)))
    }
}
