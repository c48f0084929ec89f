//! Derivatives beyond one gradient, beside [`value_and_grad`](crate::value_and_grad) and in
//! its style, named as JAX names them: [`jvp`] (forward mode), [`hvp`] (Hessian-vector
//! products) and [`hessian`], each over [`Params`] with everything else a constant.
//!
//! All three record the function on a tape whose params are its leaves, as
//! `value_and_grad` does. `jvp` sweeps tangents forward over it; `hvp` records the backward
//! pass too ([`grad_of`](crate::grad_of)) and sweeps the vector forward over both
//! (forward-over-reverse); `hessian` walks that recorded gradient back once per param
//! element. Buffers stay constants at every order: they are never leaves, so they get no
//! tangent and no entry, and nothing here writes a collection (a model's `apply_tracked`
//! inside writes only what its `ApplyOptions` make mutable, and returns it as usual).

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayD};

use crate::autodiff::ParamTensors;
use crate::collection::Params;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grads::Grads;
use crate::recorded::walk;
use crate::tangents::sweep;
use crate::tape::Tape;
use crate::tensor::Tensor;

/// The value of `f(params)` and its tangent along `tangents` (keyed exactly like `params`):
/// `J_f(params) · tangents`, by forward mode. JAX: `jax.jvp(f, (params,), (tangents,))`.
///
/// ```
/// use tapegrad::{jvp, Params};
/// use ndarray::arr1;
///
/// let params: Params<f64> = [("w", arr1(&[1.0, 2.0]))].into_iter().collect();
/// let along: Params<f64> = [("w", arr1(&[1.0, 0.0]))].into_iter().collect();
/// // f(w) = w², so J·v = 2w·v.
/// let (value, tangent) = jvp(&params, &along, |p| Ok(p.get("w")?.square()))?;
/// assert_eq!(value.as_slice().unwrap(), &[1.0, 4.0]);
/// assert_eq!(tangent.as_slice().unwrap(), &[2.0, 0.0]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::KeyMismatch`] or [`Error::IncompatibleShapes`] if `tangents` is not keyed and
/// shaped like `params`; what `f` returns; [`Error::MissingRule`] for an op without a JVP
/// rule (a `custom_op`).
pub fn jvp<A, F>(params: &Params<A>, tangents: &Params<A>, f: F) -> Result<(ArrayD<A>, ArrayD<A>)>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<Tensor<A>>,
{
    let (value, tangent, ()) = jvp_with_aux(params, tangents, |p| Ok((f(p)?, ())))?;
    Ok((value, tangent))
}

/// [`jvp`] for a closure that returns `(output, aux)`, `aux` passed through (the updates of
/// a mutable apply, say). JAX: `jax.jvp(f, ..., has_aux=True)`.
///
/// # Errors
///
/// As [`jvp`].
pub fn jvp_with_aux<A, X, F>(
    params: &Params<A>,
    tangents: &Params<A>,
    f: F,
) -> Result<(ArrayD<A>, ArrayD<A>, X)>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<(Tensor<A>, X)>,
{
    keyed_like(tangents, params, "jvp")?;
    let tape = Tape::new();
    let leaves = ParamTensors::leaves(params, &tape);
    let (output, aux) = f(&leaves)?;
    let zeros = || ArrayD::zeros(output.shape());
    let tangent = match on_tape(&output, &tape, "jvp")? {
        None => zeros(),
        Some(root) => {
            let seeds = seeds(&leaves, tangents)?;
            sweep(&tape, seeds, root)?[root]
                .take()
                .unwrap_or_else(zeros)
        }
    };
    Ok((output.value().clone(), tangent, aux))
}

/// The Hessian of the one-element `f` at `params` times `vector` (keyed like `params`):
/// `∇²f(params) · vector`, keyed like `params`, by forward-over-reverse (the gradient is
/// recorded, then differentiated along `vector` in forward mode; reverse-over-reverse
/// computes the same and was measured slower: `docs/performance.md`). JAX:
/// `jax.jvp(jax.grad(f), (params,), (vector,))[1]`.
///
/// ```
/// use tapegrad::{hvp, Params};
/// use ndarray::arr1;
///
/// let params: Params<f64> = [("w", arr1(&[1.0, 2.0]))].into_iter().collect();
/// let v: Params<f64> = [("w", arr1(&[1.0, 1.0]))].into_iter().collect();
/// // f(w) = w₀² w₁: ∇²f = [[2w₁, 2w₀], [2w₀, 0]] = [[4, 2], [2, 0]].
/// let hv = hvp(&params, &v, |p| {
///     let w = p.get("w")?;
///     Ok(w.slice_axis(0, 0, 1)?.square().mul(&w.slice_axis(0, 1, 2)?)?.sum_all())
/// })?;
/// assert_eq!(hv.get("w").unwrap().as_slice().unwrap(), &[6.0, 2.0]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// As [`jvp`], and [`Error::NotScalar`] if `f`'s result is not a single element;
/// [`Error::MissingRule`] for an op without a recorded VJP or a JVP rule.
pub fn hvp<A, F>(params: &Params<A>, vector: &Params<A>, f: F) -> Result<Grads<A>>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<Tensor<A>>,
{
    hvp_with_aux(params, vector, |p| Ok((f(p)?, ()))).map(|(hv, ())| hv)
}

/// [`hvp`] for a closure that returns `(loss, aux)`.
///
/// # Errors
///
/// As [`hvp`].
pub fn hvp_with_aux<A, X, F>(params: &Params<A>, vector: &Params<A>, f: F) -> Result<(Grads<A>, X)>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<(Tensor<A>, X)>,
{
    keyed_like(vector, params, "hvp")?;
    let recorded = RecordedGradient::of(params, f, "hvp")?;
    let hv = recorded.forward_over_reverse(vector)?;
    Ok((hv, recorded.aux))
}

/// [`hvp`] by reverse-over-reverse: the recorded gradient's inner product with `vector`,
/// differentiated by a second backward pass. The same values as [`hvp`] (a test checks
/// they agree); kept to measure the two against each other.
///
/// # Errors
///
/// As [`hvp`].
#[doc(hidden)]
pub fn hvp_reverse_over_reverse<A, F>(
    params: &Params<A>,
    vector: &Params<A>,
    f: F,
) -> Result<Grads<A>>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<Tensor<A>>,
{
    keyed_like(vector, params, "hvp")?;
    let recorded = RecordedGradient::of(params, |p| Ok((f(p)?, ())), "hvp")?;
    recorded.reverse_over_reverse(vector)
}

/// The Hessian of a one-element function of params: every second derivative, rows and
/// columns in the params' path order, each param's elements in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Hessian<A> {
    /// The params' paths, in order, with the offset of each one's first row and its shape.
    pub blocks: Vec<(String, usize, Vec<usize>)>,
    /// The `n × n` matrix, `n` the number of param elements.
    pub matrix: Array2<A>,
}

/// The Hessian of the one-element `f` at `params`: one backward pass over the recorded
/// gradient per param element, so for small models (a few thousand elements). JAX:
/// `jax.hessian(f)(params)`, flattened.
///
/// ```
/// use tapegrad::{hessian, Params};
/// use ndarray::arr1;
///
/// let params: Params<f64> = [("w", arr1(&[1.0, 2.0]))].into_iter().collect();
/// let h = hessian(&params, |p| {
///     let w = p.get("w")?;
///     Ok(w.slice_axis(0, 0, 1)?.square().mul(&w.slice_axis(0, 1, 2)?)?.sum_all())
/// })?;
/// assert_eq!(h.matrix.as_slice().unwrap(), &[4.0, 2.0, 2.0, 0.0]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// As [`hvp`].
pub fn hessian<A, F>(params: &Params<A>, f: F) -> Result<Hessian<A>>
where
    A: Float,
    F: FnOnce(&ParamTensors<A>) -> Result<Tensor<A>>,
{
    let recorded = RecordedGradient::of(params, |p| Ok((f(p)?, ())), "hessian")?;
    recorded.hessian()
}

/// A function of params recorded with its gradient: the tape, the params as its leaves, and
/// the gradient of each as a tensor on it (`None` where the function does not depend on it).
struct RecordedGradient<A: Float, X> {
    tape: Tape<A>,
    leaves: ParamTensors<A>,
    gradients: BTreeMap<String, Option<Tensor<A>>>,
    aux: X,
}

impl<A: Float, X> RecordedGradient<A, X> {
    fn of(
        params: &Params<A>,
        f: impl FnOnce(&ParamTensors<A>) -> Result<(Tensor<A>, X)>,
        op: &'static str,
    ) -> Result<Self> {
        let tape = Tape::new();
        let leaves = ParamTensors::leaves(params, &tape);
        let (loss, aux) = f(&leaves)?;
        if loss.len() != 1 {
            return Err(Error::NotScalar {
                op,
                shape: loss.shape().into(),
            });
        }
        let mut slots = match on_tape(&loss, &tape, op)? {
            None => Vec::new(),
            Some(root) => walk(&tape, root, Tensor::constant(ArrayD::ones(loss.shape())), 0)?,
        };
        let gradients = leaves
            .iter()
            .map(|(path, leaf)| {
                let id = leaf.node_id().expect("params are leaves");
                (path.to_string(), slots.get_mut(id).and_then(Option::take))
            })
            .collect();
        Ok(RecordedGradient {
            tape,
            leaves,
            gradients,
            aux,
        })
    }

    /// The highest node of the recorded gradients, if any is a node.
    fn last_node(&self) -> Option<usize> {
        self.gradients
            .values()
            .filter_map(|g| g.as_ref().and_then(Tensor::node_id))
            .max()
    }

    fn forward_over_reverse(&self, vector: &Params<A>) -> Result<Grads<A>> {
        let mut tangents = match self.last_node() {
            Some(last) => sweep(&self.tape, seeds(&self.leaves, vector)?, last)?,
            None => Vec::new(),
        };
        Ok(self.keyed(|path, gradient| {
            let tangent = gradient
                .and_then(Tensor::node_id)
                .and_then(|id| tangents.get_mut(id).and_then(Option::take));
            tangent.unwrap_or_else(|| self.zeros(path))
        }))
    }

    fn reverse_over_reverse(&self, vector: &Params<A>) -> Result<Grads<A>> {
        let mut inner = Tensor::scalar(A::zero());
        for (path, gradient) in &self.gradients {
            if let Some(g) = gradient {
                let v = Tensor::constant(vector.get(path).expect("keys checked"));
                inner = inner.add(&g.mul(&v)?.sum_all())?;
            }
        }
        let mut second = inner.backward()?;
        Ok(self.keyed(|path, _| {
            let leaf = self.leaves.get(path).expect("the same paths");
            second.take(leaf.node_id().expect("a leaf"), leaf.shape())
        }))
    }

    fn hessian(&self) -> Result<Hessian<A>> {
        let mut blocks = Vec::new();
        let mut n = 0;
        for (path, leaf) in self.leaves.iter() {
            blocks.push((path.to_string(), n, leaf.shape().to_vec()));
            n += leaf.len();
        }
        let mut matrix = Array2::zeros((n, n));
        let mut row = 0;
        for (path, gradient) in &self.gradients {
            let size = self.leaves.get(path)?.len();
            let Some(g) = gradient.as_ref().filter(|g| g.is_tracked()) else {
                row += size; // a constant gradient: its rows are zero
                continue;
            };
            for i in 0..size {
                let mut e = ArrayD::zeros(g.shape());
                e.as_slice_mut().expect("standard layout")[i] = A::one();
                let second = g.backward_retaining(e)?;
                let mut column = 0;
                for (_, leaf) in self.leaves.iter() {
                    let d = second.wrt(leaf)?;
                    for (k, &value) in d.iter().enumerate() {
                        matrix[[row + i, column + k]] = value;
                    }
                    column += leaf.len();
                }
            }
            row += size;
        }
        Ok(Hessian { blocks, matrix })
    }

    fn zeros(&self, path: &str) -> ArrayD<A> {
        let leaf = self.leaves.get(path).expect("the same paths");
        ArrayD::zeros(leaf.shape())
    }

    /// A value per param, from its path and recorded gradient.
    fn keyed(&self, mut value: impl FnMut(&str, Option<&Tensor<A>>) -> ArrayD<A>) -> Grads<A> {
        Grads::from_map(
            self.gradients
                .iter()
                .map(|(path, g)| (path.clone(), value(path, g.as_ref())))
                .collect(),
        )
    }
}

/// `tangents` against `params`: the same paths and shapes.
fn keyed_like<A: Float>(tangents: &Params<A>, params: &Params<A>, op: &'static str) -> Result<()> {
    let as_grads = Grads::from_map(
        tangents
            .iter()
            .map(|(p, v)| (p.to_string(), v.clone()))
            .collect(),
    );
    as_grads.check_matches(params, op)
}

/// The leaves' tangents as seeds of a sweep.
fn seeds<A: Float>(
    leaves: &ParamTensors<A>,
    tangents: &Params<A>,
) -> Result<Vec<(usize, ArrayD<A>)>> {
    leaves
        .iter()
        .map(|(path, leaf)| {
            let tangent = tangents.get(path).ok_or_else(|| Error::MissingVariable {
                collection: "tangents".into(),
                path: path.to_string(),
            })?;
            Ok((leaf.node_id().expect("a leaf"), tangent.clone()))
        })
        .collect()
}

/// The node of `output` on `tape` (`None` for a constant); another tape is an error.
fn on_tape<A: Float>(
    output: &Tensor<A>,
    tape: &Tape<A>,
    op: &'static str,
) -> Result<Option<usize>> {
    match output.node() {
        None => Ok(None),
        Some((on, id)) if on.same_as(tape) => Ok(Some(id)),
        Some(_) => Err(Error::DifferentTapes { op }),
    }
}
