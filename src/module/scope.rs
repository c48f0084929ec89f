//! The `Module` trait and the scope: what a module sees of the variables while it runs.
//! (They refer to each other: a module's `forward` takes a scope, and a scope `call`s
//! modules, so they share a file.)
//!
//! A scope has a path (`"Block_0/Dense_1"`) and hands out three things:
//! * [`Scope::param`]: a trainable array, the only way to a tracked leaf of the tape;
//! * [`Scope::variable`]: a handle on a variable of any other collection, which reads as a
//!   constant and is written with a plain array;
//! * [`Scope::call`] / [`Scope::child`]: sub-scopes for sub-modules, named `Kind_N` by default.

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;
use crate::module::context::{Context, Phase, check_shape};
use crate::module::variable::Variable;
use crate::replicas::ReplicaAxis;
use crate::rng::SplitMix64;
use crate::shape::element_count;
use crate::tensor::Tensor;
use crate::variables::{PARAMS, check_collection_name};

/// A model or a layer: a computation that takes its variables from a [`Scope`].
/// Flax: an `nn.Module` with an `@nn.compact` `__call__`.
///
/// A module holds only its configuration (sizes, momentum…); its variables live in
/// [`Variables`](crate::Variables), created by [`ModuleExt::init`](crate::ModuleExt::init)
/// and passed to [`ModuleExt::apply`](crate::ModuleExt::apply).
///
/// ```
/// use tapegrad::{nn, ApplyOptions, Module, ModuleExt, Result, Scope, Tensor};
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
/// let (y, _) = TwoLayer.apply(&variables, &x, &ApplyOptions::eval())?;
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

    /// The kinds of the layers this module stands for, in order, as a framework that lists
    /// them one by one would (PyTorch's `nn.Sequential`): itself alone by default;
    /// [`BatchNormRelu`](crate::nn::BatchNormRelu), one layer here, is a BatchNorm and an
    /// activation there. What [`Sequential::kinds`](crate::nn::Sequential::kinds) lists.
    fn layer_kinds(&self) -> Vec<&'static str> {
        vec![self.kind()]
    }

    /// The computation, reading and writing variables through `scope`.
    ///
    /// # Errors
    ///
    /// A shape or setting error naming the layer, or what [`Scope`]'s methods return (a missing or
    /// misshapen variable, an immutable collection).
    fn forward(&self, scope: &mut Scope<'_, A>, input: &Self::Input) -> Result<Self::Output>;
}

/// Makes an initial value of a given shape from a random stream. Any closure
/// `Fn(&mut SplitMix64, &[usize]) -> ArrayD<A>` is one; `tapegrad::nn::init` has the usual.
pub trait Initializer<A: Float> {
    /// An array of `shape`.
    fn init(&self, rng: &mut SplitMix64, shape: &[usize]) -> ArrayD<A>;
}

impl<A: Float, F: Fn(&mut SplitMix64, &[usize]) -> ArrayD<A>> Initializer<A> for F {
    fn init(&self, rng: &mut SplitMix64, shape: &[usize]) -> ArrayD<A> {
        self(rng, shape)
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        return name.to_string();
    }
    // Not `format!`: this runs for every param and variable of every apply.
    let mut path = String::with_capacity(prefix.len() + 1 + name.len());
    path.push_str(prefix);
    path.push('/');
    path.push_str(name);
    path
}

/// What a module sees while it runs: its path, its variables, and whether it is training.
/// Flax: the module's `self` inside `@nn.compact`.
pub struct Scope<'a, A: Float> {
    pub(super) ctx: &'a Context<'a, A>,
    pub(super) path: String,
    /// Per module kind, how many default-named children this scope has made.
    pub(super) counters: BTreeMap<&'static str, usize>,
}

impl<'a, A: Float> Scope<'a, A> {
    pub(crate) fn root(ctx: &'a Context<'a, A>) -> Self {
        Scope {
            ctx,
            path: String::new(),
            counters: BTreeMap::new(),
        }
    }

    /// This scope's path (`""` at the root).
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the model is in training mode (as given to `apply`). BatchNorm uses batch
    /// statistics and Dropout drops only in training mode.
    #[must_use]
    pub fn is_training(&self) -> bool {
        self.ctx.training
    }

    /// Whether this run is `init`. Layers skip state updates then, as Flax's BatchNorm does,
    /// so that initialisation does not move running statistics.
    #[must_use]
    pub fn is_initializing(&self) -> bool {
        self.ctx.is_initializing()
    }

    /// A trainable parameter, `params/<path>/<name>` of shape `shape`.
    ///
    /// In `init` it is created with `init`, from a random stream derived from the seed and
    /// the param's full name (so it does not depend on creation order). In `apply` the
    /// stored value is returned, a tracked leaf when gradients are being taken; a missing
    /// param or one of another shape is an error naming it.
    ///
    /// # Errors
    ///
    /// In `apply`, [`Error::MissingVariable`] if the param does not exist and
    /// [`Error::VariableShape`] if its stored shape is not `shape`.
    pub fn param(
        &mut self,
        name: &str,
        shape: &[usize],
        init: impl Initializer<A>,
    ) -> Result<Tensor<A>> {
        let path = join(&self.path, name);
        element_count::<A>("Scope::param", shape)?;
        match &self.ctx.phase {
            Phase::Init { seed } => {
                let existing = self.ctx.written.borrow().params().get(&path).cloned();
                let value = match existing {
                    Some(value) => value, // a shared module: created once
                    None => {
                        let mut rng = SplitMix64::for_path(*seed, &join(PARAMS, &path));
                        let value = init.init(&mut rng, shape);
                        self.ctx
                            .written
                            .borrow_mut()
                            .collection_entry(PARAMS)
                            .insert(path.clone(), value.clone());
                        value
                    }
                };
                check_shape(PARAMS, &path, &value, shape)?;
                Ok(Tensor::constant(value))
            }
            Phase::Apply { params, .. } => {
                let tensor = params.get(&path)?;
                check_shape(PARAMS, &path, tensor.value(), shape)?;
                Ok(tensor.clone())
            }
        }
    }

    /// A variable of a non-params collection (`"batch_stats"`, `"state"`, …), at
    /// `<collection>/<path>/<name>`: a constant to read and a plain array to write. In
    /// `init` it is created with `init`; in `apply` it must exist (a missing variable is an
    /// error naming it: stricter than Flax, which creates it in a mutable collection,
    /// because a silently created variable hides a renamed layer).
    ///
    /// Asking for `"params"` here is [`Error::ReservedCollection`]: params come only from
    /// [`Scope::param`].
    ///
    /// # Errors
    ///
    /// [`Error::ReservedCollection`] for `"params"`; in `apply`, [`Error::MissingVariable`] if the
    /// variable does not exist and [`Error::VariableShape`] if its stored shape is not `shape`.
    pub fn variable(
        &mut self,
        collection: &str,
        name: &str,
        shape: &[usize],
        init: impl Initializer<A>,
    ) -> Result<Variable<'a, A>> {
        let path = join(&self.path, name);
        if collection == PARAMS {
            return Err(Error::ReservedCollection { path });
        }
        check_collection_name("Scope::variable", collection)?;
        element_count::<A>("Scope::variable", shape)?;
        let value = match self.ctx.read(collection, &path) {
            Some(value) => value,
            None if self.is_initializing() => {
                let seed = match self.ctx.phase {
                    Phase::Init { seed } => seed,
                    Phase::Apply { .. } => unreachable!("initializing"),
                };
                let mut rng = SplitMix64::for_path(seed, &join(collection, &path));
                let value = init.init(&mut rng, shape);
                self.ctx
                    .written
                    .borrow_mut()
                    .collection_entry(collection)
                    .insert(path.clone(), value.clone());
                Arc::new(value)
            }
            None => {
                return Err(Error::MissingVariable {
                    collection: collection.to_string(),
                    path,
                });
            }
        };
        check_shape(collection, &path, &value, shape)?;
        Ok(Variable {
            ctx: self.ctx,
            label: join(collection, &path).into(),
            collection: collection.to_string(),
            path,
        })
    }

    /// Whether this `apply` may write `collection` (in `init`, every collection; while
    /// [recomputing](Scope::is_recomputing), none). Flax:
    /// `self.is_mutable_collection(collection)`.
    #[must_use]
    pub fn is_mutable_collection(&self, collection: &str) -> bool {
        self.ctx.may_write(collection)
    }

    /// Whether this run is a recomputation: a block's forward run again during backward
    /// ([`nn::Remat`](crate::nn::Remat)), with its inputs, params, variables and random
    /// draws as they were the first time. Nothing may be written then (the first forward
    /// made the step's updates), so a layer that keeps state skips its update.
    #[must_use]
    pub fn is_recomputing(&self) -> bool {
        self.ctx.recomputing
    }

    /// Whether this `apply` names `collection` among its mutable ones ([`Mutable::names`]):
    /// asked for by name, not merely allowed. What a module writes only on request (a
    /// report of its run, such as a BatchNorm's batch moments) waits for this; never true
    /// in `init`.
    ///
    /// [`Mutable::names`]: crate::Mutable::names
    #[must_use]
    pub fn is_asked_for(&self, collection: &str) -> bool {
        !self.is_initializing() && !self.ctx.recomputing && self.ctx.mutable.names(collection)
    }

    /// Writes `value` at `<collection>/<path>/<name>`, creating the variable if the given
    /// variables lack it: for what a module reports about its run rather than state it keeps
    /// (a BatchNorm's batch moments, say), which exists only when asked for. Flax:
    /// `self.sow(collection, name, value)`, which appends where this replaces.
    ///
    /// # Errors
    ///
    /// [`Error::ImmutableCollection`] unless the collection is mutable in this `apply`,
    /// [`Error::ReservedCollection`] for `"params"`; nothing is written.
    pub fn put(&mut self, collection: &str, name: &str, value: impl IntoArray<A>) -> Result<()> {
        let path = join(&self.path, name);
        if collection == PARAMS {
            return Err(Error::ReservedCollection { path });
        }
        check_collection_name("Scope::put", collection)?;
        self.ctx.write(collection, &path, value.into_array())
    }

    /// Whether `collection` holds `name` at this scope's path: in `apply`, whether the given
    /// variables have it; in `init`, whether it was created already. For variables a module
    /// uses only when present. Flax: `self.has_variable(collection, name)`.
    #[must_use]
    pub fn has_variable(&self, collection: &str, name: &str) -> bool {
        self.ctx.read(collection, &join(&self.path, name)).is_some()
    }

    /// A sub-scope named `name`, for a sub-module called by hand. Two children of the same
    /// name share their variables. The tape counts what such a child records as its caller's
    /// ([`TapeEntry::module`](crate::TapeEntry::module)); [`Scope::call_named`] runs a module
    /// as a child that the tape and its pictures know by name.
    #[must_use]
    pub fn child(&mut self, name: &str) -> Scope<'a, A> {
        Scope {
            ctx: self.ctx,
            path: join(&self.path, name),
            counters: BTreeMap::new(),
        }
    }

    /// Runs `module` in a child scope with its default name, `Kind_N`, N counting the
    /// children of that kind in this scope: `Dense_0`, `BatchNorm_0`, `Dense_1`, … (as
    /// Flax names the sub-modules of a compact module).
    ///
    /// # Errors
    ///
    /// What the sub-module's `forward` returns.
    pub fn call<M: Module<A> + ?Sized>(
        &mut self,
        module: &M,
        input: &M::Input,
    ) -> Result<M::Output> {
        let kind = module.kind();
        let counter = self.counters.entry(kind).or_insert(0);
        let name = format!("{kind}_{counter}");
        *counter += 1;
        self.call_named(&name, module, input)
    }

    /// Runs `module` in a child scope named `name`; the nodes it records belong to that
    /// path on the tape ([`TapeEntry::module`](crate::TapeEntry::module)).
    ///
    /// # Errors
    ///
    /// What the sub-module's `forward` returns.
    pub fn call_named<M: Module<A> + ?Sized>(
        &mut self,
        name: &str,
        module: &M,
        input: &M::Input,
    ) -> Result<M::Output> {
        let mut child = self.child(name);
        let tape = self.ctx.tape();
        if let Some(tape) = tape {
            tape.enter_module(&child.path);
        }
        let output = module.forward(&mut child, input);
        if let Some(tape) = tape {
            tape.enter_module(&self.path);
        }
        output
    }

    /// The replica axis `name`, if this run was given one
    /// ([`ApplyOptions::replica_axis`](crate::ApplyOptions::replica_axis)).
    #[must_use]
    pub fn replica_axis(&self, name: &str) -> Option<&ReplicaAxis> {
        self.ctx.axes.get(name)
    }

    /// A random stream for this scope, from the seed given to `apply` for `stream` (e.g.
    /// `"dropout"`); each call draws a fresh one. In `init` it derives from the init seed.
    /// A stream `apply` was not given is [`Error::MissingRng`].
    ///
    /// # Errors
    ///
    /// [`Error::MissingRng`] naming the stream and this scope's path if `apply` was not given the
    /// stream.
    pub fn rng(&mut self, stream: &str) -> Result<SplitMix64> {
        let seed = match (&self.ctx.phase, self.ctx.rngs.get(stream)) {
            (_, Some(&seed)) => seed,
            (Phase::Init { seed }, None) => *seed,
            (Phase::Apply { .. }, None) => {
                return Err(Error::MissingRng {
                    stream: stream.to_string(),
                    path: self.path.clone(),
                });
            }
        };
        let key = format!("{stream}:{}", self.path);
        let mut draws = self.ctx.rng_draws.borrow_mut();
        let draw = draws.entry(key.clone()).or_insert(0);
        *draw += 1;
        Ok(SplitMix64::for_path(seed, &format!("{key}#{draw}")))
    }
}
