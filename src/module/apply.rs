//! The `Module` trait, and `init` / `apply`, which run a module with a root scope.

use std::collections::BTreeMap;

use crate::module::scope::{Context, Phase, Scope};
use crate::variables::Updates;
use crate::{Float, Mutable, ParamTensors, Result, Variables};

/// A model or a layer: a computation that takes its variables from a [`Scope`].
/// Flax: an `nn.Module` with an `@nn.compact` `__call__`.
///
/// A module holds only its configuration (sizes, momentum…); its variables live in
/// [`Variables`], created by [`ModuleExt::init`] and passed to [`ModuleExt::apply`].
///
/// ```
/// use tapegrad::{nn, Apply, Module, ModuleExt, Result, Scope, Tensor};
///
/// /// y = relu(x W + b), then a second Dense.
/// struct TwoLayer;
///
/// impl Module<f64> for TwoLayer {
///     type Input = Tensor<f64>;
///     type Output = Tensor<f64>;
///     fn kind(&self) -> &'static str { "TwoLayer" }
///     fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
///         let h = scope.call(&nn::Dense::new(8), x)?.relu();
///         scope.call(&nn::Dense::new(2), &h)
///     }
/// }
///
/// let x = Tensor::from_vec(&[4, 3], vec![0.1; 12])?;
/// let variables = TwoLayer.init(0, &x)?;
/// let paths: Vec<String> = variables.iter().map(|(name, _)| name).collect();
/// assert_eq!(paths, ["params/Dense_0/bias", "params/Dense_0/kernel",
///                    "params/Dense_1/bias", "params/Dense_1/kernel"]);
/// let (y, _) = TwoLayer.apply(&variables, &x, &Apply::eval())?;
/// assert_eq!(y.shape(), &[4, 2]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub trait Module<A: Float> {
    /// What the module takes: a `Tensor<A>` for most layers, integer ids for embeddings.
    type Input: ?Sized;
    /// What it returns.
    type Output;

    /// The default name prefix of an instance: `"Dense"` names them `Dense_0`, `Dense_1`, …
    fn kind(&self) -> &'static str;

    /// The computation, reading and writing variables through `scope`.
    fn forward(&self, scope: &mut Scope<'_, A>, input: &Self::Input) -> Result<Self::Output>;
}

/// How to run `apply`: training or evaluation mode, which collections are mutable, and the
/// seeds of random streams such as `"dropout"`.
///
/// ```
/// use tapegrad::{Apply, Mutable};
/// let train = Apply::train().mutable(Mutable::only(["batch_stats"])).rng("dropout", 7);
/// assert!(train.is_training());
/// assert!(!Apply::eval().is_training());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Apply {
    training: bool,
    mutable: Mutable,
    rngs: BTreeMap<String, u64>,
}

impl Apply {
    /// Evaluation mode, nothing mutable (PyTorch `model.eval()`).
    pub fn eval() -> Self {
        Apply::default()
    }

    /// Training mode, nothing mutable yet: add `.mutable(...)` for layers that write state
    /// (PyTorch `model.train()`).
    pub fn train() -> Self {
        Apply {
            training: true,
            ..Apply::default()
        }
    }

    /// Which collections may be written.
    pub fn mutable(mut self, mutable: Mutable) -> Self {
        self.mutable = mutable;
        self
    }

    /// Gives the random stream `stream` (e.g. `"dropout"`) the seed `seed`.
    pub fn rng(mut self, stream: &str, seed: u64) -> Self {
        self.rngs.insert(stream.to_string(), seed);
        self
    }

    /// Whether this is training mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The mutability filter.
    pub fn mutability(&self) -> &Mutable {
        &self.mutable
    }
}

/// `init` and `apply`, for every [`Module`].
pub trait ModuleExt<A: Float>: Module<A> {
    /// Runs the module once in evaluation mode and returns every variable it created, in
    /// every collection. Param values come from random streams derived from `seed` and
    /// each variable's path. Flax: `model.init(key, x)`.
    fn init(&self, seed: u64, input: &Self::Input) -> Result<Variables<A>> {
        self.init_with(seed, input, &Apply::eval())
    }

    /// [`ModuleExt::init`] with explicit options (e.g. training mode). Layers do not update
    /// state while initialising.
    fn init_with(&self, seed: u64, input: &Self::Input, options: &Apply) -> Result<Variables<A>> {
        let mutable = Mutable::all();
        let ctx = Context::new(
            Phase::Init { seed },
            options.training,
            &mutable,
            &options.rngs,
        );
        self.forward(&mut Scope::root(&ctx), input)?;
        Ok(ctx.written.into_inner())
    }

    /// Runs the module with `variables`, no tape: params are constants too. Returns the
    /// output and the mutable collections, updated. `variables` is never modified; merge the
    /// updates with [`Variables::merge`]. Flax: `model.apply(variables, x, mutable=...)`.
    fn apply(
        &self,
        variables: &Variables<A>,
        input: &Self::Input,
        options: &Apply,
    ) -> Result<(Self::Output, Updates<A>)> {
        self.apply_tracked(
            &ParamTensors::constants(variables.params()),
            variables,
            input,
            options,
        )
    }

    /// Runs the module with params from `params` (tracked leaves inside
    /// [`value_and_grad`](crate::value_and_grad)) and every other collection from
    /// `variables` (whose own params are ignored). This is how a training step differentiates
    /// a model with respect to its params only.
    fn apply_tracked(
        &self,
        params: &ParamTensors<A>,
        variables: &Variables<A>,
        input: &Self::Input,
        options: &Apply,
    ) -> Result<(Self::Output, Updates<A>)> {
        let ctx = Context::new(
            Phase::Apply { params, variables },
            options.training,
            &options.mutable,
            &options.rngs,
        );
        let output = self.forward(&mut Scope::root(&ctx), input)?;
        let written = ctx.written.into_inner();
        // Flax returns each mutable collection whole: stored variables, overlaid by writes.
        let mut collections = BTreeMap::new();
        for (name, stored) in variables.others() {
            if options.mutable.allows(name) {
                collections.insert(name.clone(), stored.clone());
            }
        }
        for (name, writes) in written.buffers() {
            let target = collections
                .entry(name.to_string())
                .or_insert_with(Default::default);
            for (path, value) in writes.iter_shared() {
                target.insert_shared(path.clone(), value.clone());
            }
        }
        Ok((output, Updates { collections }))
    }
}

impl<A: Float, M: Module<A> + ?Sized> ModuleExt<A> for M {}
