//! Differentiating a closure with respect to [`Params`], and nothing else.
//!
//! [`value_and_grad`] makes a fresh tape, turns each param into a leaf of it, runs the
//! closure and walks the tape back from the loss. The closure sees the params as a
//! [`ParamTensors`]; everything else it uses (inputs, labels, BatchNorm's running
//! statistics) enters as a constant, with no node and no gradient.

use std::collections::BTreeMap;

use std::sync::Arc;

use ndarray::ArrayD;

use crate::collection::Params;
use crate::collection::require_disjoint;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grads::Grads;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// A param read as a constant, labelled with its full name for printed tapes.
fn param_constant<A: Float>(path: &str, value: &Arc<ArrayD<A>>) -> Tensor<A> {
    Tensor::from_shared(Arc::clone(value)).with_label(format!("params/{path}"))
}

/// Whether `path` belongs to the sub-module at `prefix` (every path is under the root, `""`).
pub(crate) fn is_under(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The params as tensors, as a closure passed to [`value_and_grad`] sees them: tracked
/// leaves of the tape (or constants, when a model is evaluated without gradients).
pub struct ParamTensors<A: Float> {
    tensors: BTreeMap<String, Tensor<A>>,
}

impl<A: Float> ParamTensors<A> {
    /// The params as constants: for evaluating a model with no tape at all.
    #[must_use]
    pub fn constants(params: &Params<A>) -> Self {
        let tensors = params
            .iter_shared()
            .map(|(path, value)| (path.clone(), param_constant(path, value)))
            .collect();
        ParamTensors { tensors }
    }

    /// The params as leaves of `tape`, named by their paths: what `value_and_grad` does
    /// before it calls its closure. For driving a tape by hand (benchmarks, custom loops).
    #[must_use]
    pub fn leaves(params: &Params<A>, tape: &Tape<A>) -> Self {
        let tensors = params
            .iter_shared()
            .map(|(path, value)| {
                let leaf = tape.leaf_shared(Some(path.clone()), value.clone());
                (path.clone(), leaf)
            })
            .collect();
        ParamTensors { tensors }
    }

    /// The tape the tracked params are leaves of (`None` for constants): for inspecting
    /// what a computation recorded.
    pub fn tape(&self) -> Option<&Tape<A>> {
        self.tensors.values().find_map(Tensor::tape)
    }

    /// The param at `path`; an error naming it if there is none.
    ///
    /// # Errors
    ///
    /// [`Error::MissingVariable`] naming `path` if there is no such param.
    pub fn get(&self, path: &str) -> Result<&Tensor<A>> {
        self.tensors
            .get(path)
            .ok_or_else(|| Error::MissingVariable {
                collection: "params".into(),
                path: path.into(),
            })
    }

    /// Paths in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Paths and tensors, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor<A>)> {
        self.tensors.iter().map(|(path, t)| (path.as_str(), t))
    }

    /// `value` as a leaf of the params' tape, named `name`, though not a param: something to
    /// differentiate with respect to inside the closure (with [`grad_of`](crate::grad_of)),
    /// such as the input batch of a gradient penalty. It gets no entry in the gradients the
    /// closure's caller returns, which are the params'. With no tape (constant params) it is
    /// a constant.
    ///
    /// ```
    /// use tapegrad::{grad_of, value_and_grad, Params, Tensor};
    /// use ndarray::arr1;
    ///
    /// let params: Params<f64> = [("w", arr1(&[2.0]))].into_iter().collect();
    /// // L = (w x)², and a penalty on ∂L/∂x = 2 w² x: Σ (∂L/∂x)² = 4 w⁴ x².
    /// let (value, grads) = value_and_grad(&params, |p| {
    ///     let x = p.track("x", arr1(&[3.0]));
    ///     let loss = p.get("w")?.mul(&x)?.square().sum_all();
    ///     let [dx] = <[_; 1]>::try_from(grad_of(&loss, &[&x])?).unwrap();
    ///     Ok(dx.square().sum_all())
    /// })?;
    /// assert_eq!(value, 4.0 * 16.0 * 9.0);
    /// assert_eq!(grads.get("w").unwrap()[[0]], 16.0 * 8.0 * 9.0); // 16 w³ x²
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    pub fn track(&self, name: &str, value: impl crate::into_array::IntoArray<A>) -> Tensor<A> {
        match self.tape() {
            Some(tape) => tape.leaf(name, value),
            None => Tensor::constant(value),
        }
    }

    /// The number of params.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The params of the sub-module at `prefix` (all of them for `""`), full paths kept.
    pub(crate) fn under(&self, prefix: &str) -> Vec<(String, Tensor<A>)> {
        self.tensors
            .iter()
            .filter(|(path, _)| is_under(path, prefix))
            .map(|(path, tensor)| (path.clone(), tensor.clone()))
            .collect()
    }

    pub(crate) fn from_tensors(tensors: impl IntoIterator<Item = (String, Tensor<A>)>) -> Self {
        ParamTensors {
            tensors: tensors.into_iter().collect(),
        }
    }

    /// These params plus `frozen` ones read as constants: frozen params take part in the
    /// computation but are not leaves, so they get no gradient entry at all.
    /// An error naming the paths if both sets have a path in common.
    ///
    /// # Errors
    ///
    /// [`Error::KeyMismatch`] listing the paths both sets have.
    pub fn with_frozen(&self, frozen: &Params<A>) -> Result<Self> {
        require_disjoint("ParamTensors::with_frozen", frozen.paths(), |p| {
            self.tensors.contains_key(p)
        })?;
        let mut tensors = self.tensors.clone();
        for (path, value) in frozen.iter_shared() {
            tensors.insert(path.clone(), param_constant(path, value));
        }
        Ok(ParamTensors { tensors })
    }
}

/// The value of `f(params)` (a one-element loss) and its gradient with respect to every
/// param, keyed exactly like `params`. JAX: `jax.value_and_grad(f)(params)`.
///
/// A param the loss does not depend on gets a zero gradient, as in JAX.
///
/// ```
/// use tapegrad::{value_and_grad, Params};
/// use ndarray::arr1;
///
/// let mut params = Params::<f64>::new();
/// params.insert("w", arr1(&[1.0, 2.0]));
/// // loss = sum(w^2), so d loss / d w = 2w.
/// let (loss, grads) = value_and_grad(&params, |p| Ok(p.get("w")?.square().sum_all()))?;
/// assert_eq!(loss, 5.0);
/// assert_eq!(grads.get("w").unwrap().as_slice().unwrap(), &[2.0, 4.0]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// Only `Params` can be differentiated; any other collection does not compile here:
///
/// ```compile_fail,E0308
/// use tapegrad::{value_and_grad, Variables};
/// let variables = Variables::<f64>::new();
/// // Asking for gradients with respect to batch_stats:
/// let batch_stats = variables.collection("batch_stats").unwrap();
/// let _ = value_and_grad(batch_stats, |p| Ok(p.get("mean")?.sum_all()));
/// ```
///
/// ```compile_fail,E0308
/// use tapegrad::{value_and_grad, Variables};
/// let variables = Variables::<f64>::new();
/// // Passing every collection where only params may go:
/// let _ = value_and_grad(&variables, |p| Ok(p.get("Dense_0/kernel")?.sum_all()));
/// ```
///
/// # Errors
///
/// What `f` returns, and [`Error::NotScalar`] if its result is not a single element; `params` are
/// not changed either way.
pub fn value_and_grad<A, F>(params: &Params<A>, f: F) -> Result<(A, Grads<A>)>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<Tensor<A>>,
{
    let (value, (), grads) = value_and_grad_with_aux(params, |p| Ok((f(p)?, ())))?;
    Ok((value, grads))
}

/// The gradient of `f(params)` with respect to every param. JAX: `jax.grad(f)(params)`.
///
/// # Errors
///
/// As [`value_and_grad`].
pub fn grad<A, F>(params: &Params<A>, f: F) -> Result<Grads<A>>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<Tensor<A>>,
{
    value_and_grad(params, f).map(|(_, grads)| grads)
}

/// Like [`value_and_grad`] for a closure that returns `(loss, aux)`: `aux` is passed
/// through untouched (typically the updated `batch_stats` of a mutable apply, or logits).
/// JAX: `jax.value_and_grad(f, has_aux=True)`.
///
/// # Errors
///
/// As [`value_and_grad`].
pub fn value_and_grad_with_aux<A, X, F>(params: &Params<A>, f: F) -> Result<(A, X, Grads<A>)>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<(Tensor<A>, X)>,
{
    let tape = Tape::new();
    let leaves = ParamTensors::leaves(params, &tape);
    let (loss, aux) = f(&leaves)?;
    if loss.len() != 1 {
        return Err(Error::NotScalar {
            op: "value_and_grad",
            shape: loss.shape().into(),
        });
    }
    if loss.tape().is_some_and(|t| !t.same_as(&tape)) {
        return Err(Error::DifferentTapes {
            op: "value_and_grad",
        });
    }
    let value = loss.item()?;
    let mut gradients = loss.backward()?;
    let grads = leaves
        .tensors
        .iter()
        .map(|(path, leaf)| {
            let id = leaf.node_id().expect("params are leaves");
            (path.clone(), gradients.take(id, leaf.shape()))
        })
        .collect();
    Ok((value, aux, Grads::from_map(grads)))
}
