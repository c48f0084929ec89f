//! Recomputing a block of a model during backward ([`nn::Remat`](crate::nn::Remat),
//! [`Sequential::remat_segments`](crate::nn::Sequential::remat_segments)): the tensor-level
//! [`remat`](crate::remat) with the model's variables.
//!
//! A block reads more than its input: its params, its buffers, its random streams. The
//! first run and the recomputation must see the same of each, or the gradients would be of
//! another function. So the first run takes a snapshot of the variables under the block's
//! path and of the random-draw counters, and the recomputation runs in a context made from
//! them, with the params it is differentiated against as leaves of its own tape.
//!
//! Only the first run writes: it is the step's forward, and its updates (running
//! statistics, counters) are what `apply` returns. The recomputation runs with
//! [`Scope::is_recomputing`] true, every collection immutable, and a write is
//! [`Error::WriteWhileRecomputing`](crate::Error::WriteWhileRecomputing).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::iter;
use std::rc::Rc;
use std::sync::Arc;

use crate::autodiff::ParamTensors;
use crate::error::Result;
use crate::float::Float;
use crate::module::context::{Context, Phase};
use crate::module::scope::Scope;
use crate::ops::remat::recompute_later;
use crate::tensor::Tensor;
use crate::variables::{Mutable, Variables};

/// A block of a model, run in a given scope (at its path, continuing its child counters).
pub(crate) type Block<A> = Rc<dyn Fn(&mut Scope<'_, A>, &Tensor<A>) -> Result<Tensor<A>>>;

impl<A: Float> Scope<'_, A> {
    /// Runs `block` in this scope, keeping for the backward pass only its input and the
    /// params under this path; the backward pass runs it again to differentiate it. Where
    /// there is nothing to differentiate (`init`, or no tape) it simply runs.
    pub(crate) fn run_recomputed(&mut self, x: &Tensor<A>, block: Block<A>) -> Result<Tensor<A>> {
        let ctx = self.ctx;
        let Phase::Apply { params, .. } = &ctx.phase else {
            return block(self, x);
        };
        let block_params = params.under(&self.path);
        if !x.is_tracked() && !block_params.iter().any(|(_, p)| p.is_tracked()) {
            return block(self, x);
        }
        let replay = Replay {
            path: self.path.clone(),
            counters: self.counters.clone(),
            variables: Arc::new(ctx.view_under(&self.path)),
            rng_draws: ctx.rng_draws.borrow().clone(),
            rngs: ctx.rngs.clone(),
            axes: ctx.axes.clone(),
            training: ctx.training,
            param_paths: block_params.iter().map(|(path, _)| path.clone()).collect(),
        };

        // The first run: constants in, nothing recorded, its writes and draws kept.
        let constants =
            ParamTensors::from_tensors(block_params.iter().map(|(p, t)| (p.clone(), t.detach())));
        let first = replay.context(&constants, ctx.mutable, ctx.recomputing);
        let mut scope = replay.scope(&first);
        let output = block(&mut scope, &x.detach())?;
        self.counters = scope.counters;
        ctx.absorb(first.written.into_inner());
        *ctx.rng_draws.borrow_mut() = first.rng_draws.into_inner();

        let inputs: Vec<&Tensor<A>> = iter::once(x)
            .chain(block_params.iter().map(|(_, p)| p))
            .collect();
        recompute_later(&inputs, &output, move |tensors| {
            let (x, params) = tensors.split_first().expect("the input comes first");
            let params = ParamTensors::from_tensors(
                replay
                    .param_paths
                    .iter()
                    .cloned()
                    .zip(params.iter().cloned()),
            );
            let again = replay.context(&params, &Mutable::Nothing, true);
            block(&mut replay.scope(&again), x)
        })
    }
}

/// What a block's run depends on besides its input and params, as it was when it started.
struct Replay<A: Float> {
    path: String,
    counters: BTreeMap<&'static str, usize>,
    /// The non-params variables under `path`.
    variables: Arc<Variables<A>>,
    rng_draws: BTreeMap<String, u64>,
    rngs: BTreeMap<String, u64>,
    axes: BTreeMap<String, crate::replicas::ReplicaAxis>,
    training: bool,
    param_paths: Vec<String>,
}

impl<A: Float> Replay<A> {
    fn context<'c>(
        &'c self,
        params: &'c ParamTensors<A>,
        mutable: &'c Mutable,
        recomputing: bool,
    ) -> Context<'c, A> {
        let phase = Phase::Apply {
            params,
            variables: &self.variables,
        };
        let mut ctx = Context::new(phase, self.training, mutable, &self.rngs, &self.axes);
        ctx.rng_draws = RefCell::new(self.rng_draws.clone());
        ctx.recomputing = recomputing;
        ctx
    }

    fn scope<'c>(&self, ctx: &'c Context<'c, A>) -> Scope<'c, A> {
        Scope {
            ctx,
            path: self.path.clone(),
            counters: self.counters.clone(),
        }
    }
}
