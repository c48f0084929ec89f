//! `init` and `apply`, which run a module with a root scope, and the options of a run.

use std::collections::BTreeMap;

use crate::autodiff::ParamTensors;
use crate::error::Result;
use crate::float::Float;
use crate::module::context::{Context, Phase};
use crate::module::scope::{Module, Scope};
use crate::replicas::ReplicaAxis;
use crate::rng::IntoSeed;
use crate::variables::{Mutable, Updates, Variables};

/// How to run `apply`: training or evaluation mode, which collections are mutable, and the
/// seeds of random streams such as `"dropout"`.
///
/// ```
/// use tapegrad::{ApplyOptions, Mutable};
/// let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"])).rng("dropout", 7);
/// assert!(train.is_training());
/// assert!(!ApplyOptions::eval().is_training());
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOptions {
    training: bool,
    mutable: Mutable,
    rngs: BTreeMap<String, u64>,
    axes: BTreeMap<String, ReplicaAxis>,
}

impl ApplyOptions {
    /// Evaluation mode, nothing mutable (PyTorch `model.eval()`).
    #[must_use]
    pub fn eval() -> Self {
        ApplyOptions::default()
    }

    /// Training mode, nothing mutable yet: add `.mutable(...)` for layers that write state
    /// (PyTorch `model.train()`).
    #[must_use]
    pub fn train() -> Self {
        ApplyOptions {
            training: true,
            ..ApplyOptions::default()
        }
    }

    /// Which collections may be written.
    #[must_use]
    pub fn mutable(mut self, mutable: Mutable) -> Self {
        self.mutable = mutable;
        self
    }

    /// Gives the random stream `stream` (e.g. `"dropout"`) the seed `seed`: a `u64`, or a
    /// draw from a `rand` generator (see [`IntoSeed`]).
    #[must_use]
    pub fn rng(mut self, stream: &str, seed: impl IntoSeed) -> Self {
        self.rngs.insert(stream.to_string(), seed.into_seed());
        self
    }

    /// Runs this step as one replica of `axis`: layers that reduce over the axis by name
    /// (a `BatchNorm` with `axis_name`) use its communicator. See
    /// [`replicas`](crate::replicas).
    #[must_use]
    pub fn replica_axis(mut self, axis: ReplicaAxis) -> Self {
        self.axes.insert(axis.name().to_string(), axis);
        self
    }

    /// Whether this is training mode.
    #[must_use]
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The mutability filter.
    #[must_use]
    pub fn mutability(&self) -> &Mutable {
        &self.mutable
    }
}

/// `init` and `apply`, for every [`Module`].
pub trait ModuleExt<A: Float>: Module<A> {
    /// Runs the module once in evaluation mode and returns every variable it created, in
    /// every collection. Param values come from random streams derived from `seed` and
    /// each variable's path; `seed` is a `u64` or a user's `rand` generator
    /// (`&mut rng`, see [`IntoSeed`]). Flax: `model.init(key, x)`.
    ///
    /// # Errors
    ///
    /// Whatever the module's `forward` returns: a shape or setting error naming the layer.
    fn init(&self, seed: impl IntoSeed, input: &Self::Input) -> Result<Variables<A>> {
        self.init_with(seed, input, &ApplyOptions::eval())
    }

    /// [`ModuleExt::init`] with explicit options (e.g. training mode). Layers do not update
    /// state while initialising.
    ///
    /// # Errors
    ///
    /// As [`ModuleExt::init`].
    fn init_with(
        &self,
        seed: impl IntoSeed,
        input: &Self::Input,
        options: &ApplyOptions,
    ) -> Result<Variables<A>> {
        let seed = seed.into_seed();
        let mutable = Mutable::all();
        let ctx = Context::new(
            Phase::Init { seed },
            options.training,
            &mutable,
            &options.rngs,
            &options.axes,
        );
        self.forward(&mut Scope::root(&ctx), input)?;
        Ok(ctx.written.into_inner())
    }

    /// Runs the module with `variables`, no tape: params are constants too. Returns the
    /// output and the mutable collections, updated. `variables` is never modified; merge the
    /// updates with [`Variables::merge`]. Flax: `model.apply(variables, x, mutable=...)`.
    ///
    /// # Errors
    ///
    /// [`Error::ImmutableCollection`](crate::Error::ImmutableCollection) if the module writes a
    /// collection `options` did not make mutable,
    /// [`Error::MissingVariable`](crate::Error::MissingVariable) or
    /// [`Error::VariableShape`](crate::Error::VariableShape) if `variables` do not fit the model,
    /// [`Error::MissingRng`](crate::Error::MissingRng) for a stream not given, and the layers' own
    /// shape errors. `variables` are never changed.
    fn apply(
        &self,
        variables: &Variables<A>,
        input: &Self::Input,
        options: &ApplyOptions,
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
    ///
    /// # Errors
    ///
    /// As [`ModuleExt::apply`].
    fn apply_tracked(
        &self,
        params: &ParamTensors<A>,
        variables: &Variables<A>,
        input: &Self::Input,
        options: &ApplyOptions,
    ) -> Result<(Self::Output, Updates<A>)> {
        let ctx = Context::new(
            Phase::Apply { params, variables },
            options.training,
            &options.mutable,
            &options.rngs,
            &options.axes,
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
