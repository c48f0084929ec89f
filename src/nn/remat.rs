//! `Remat`: a layer whose forward is recomputed during backward instead of kept.

use std::rc::Rc;
use std::sync::Arc;

use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::tensor::Tensor;

/// `block`, recomputed during backward: its forward keeps only its input (and its params,
/// which the model holds anyway), and the backward pass runs it again to differentiate it.
/// Memory for activations, for a second forward's time. Flax: `nn.remat(Block)`; PyTorch:
/// `torch.utils.checkpoint.checkpoint(block, x)`.
///
/// The wrapper is transparent: it has the block's kind and variables, so a model reads the
/// same variables with and without it, and gives the same values and gradients, bit for bit.
/// The recomputation sees the variables and random draws of the first run, and writes
/// nothing: BatchNorm's running statistics are updated once per step, by the first run
/// (see [`Scope::is_recomputing`]).
///
/// ```
/// use tapegrad::nn::{Activation, BatchNorm, Dense, Remat, Sequential};
/// use tapegrad::{value_and_grad_with_aux, ApplyOptions, ModuleExt, Mutable, Tensor};
///
/// let block = || Sequential::<f64>::new().push(Dense::new(8)).push(BatchNorm::new()).push(Activation::Relu);
/// let plain = Sequential::new().push(block()).push(Dense::new(1));
/// let recomputed = Sequential::new().push(Remat::new(block())).push(Dense::new(1));
///
/// let x = Tensor::from_vec(&[4, 3], (0..12).map(|i| f64::from(i).sin()).collect())?;
/// let variables = plain.init(0, &x)?;
/// let options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
/// let step = |model: &Sequential<f64>| {
///     value_and_grad_with_aux(variables.params(), |p| {
///         let (y, updates) = model.apply_tracked(p, &variables, &x, &options)?;
///         Ok((y.square().mean_all(), updates))
///     })
/// };
/// let (loss, updates, grads) = step(&plain)?;
/// let (loss_r, updates_r, grads_r) = step(&recomputed)?;
/// assert_eq!(loss, loss_r);
/// assert_eq!(grads, grads_r);
/// assert_eq!(updates.get("batch_stats/Sequential_0/BatchNorm_0/mean"),
///            updates_r.get("batch_stats/Sequential_0/BatchNorm_0/mean"));
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub struct Remat<M> {
    block: Arc<M>,
}

impl<M> Remat<M> {
    /// `block`, recomputed during backward.
    pub fn new(block: M) -> Self {
        Remat {
            block: Arc::new(block),
        }
    }
}

impl<A, M> Module<A> for Remat<M>
where
    A: Float,
    M: Module<A, Input = Tensor<A>, Output = Tensor<A>> + 'static,
{
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        self.block.kind()
    }

    fn layer_kinds(&self) -> Vec<&'static str> {
        self.block.layer_kinds()
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let block = Arc::clone(&self.block);
        scope.run_recomputed(x, Rc::new(move |scope, x| block.forward(scope, x)))
    }
}
