//! User-defined ops: a forward value and its VJP, recorded like a primitive.

use ndarray::ArrayD;

use crate::error::Result;
use crate::float::Float;
use crate::record::record;
use crate::tensor::Tensor;

/// Records a user-defined op: `value` is its forward result, computed by the caller from the
/// inputs' values; `vjp(g, needs)` returns, for each input `i` with `needs[i]`, the gradient
/// `Jᵢᵀ g` (of the input's shape, or of a shape that broadcasts to it: the tape sums it
/// back). PyTorch: an `autograd.Function`; JAX: `jax.custom_vjp`.
///
/// If no input is tracked nothing is recorded. Check a custom VJP with
/// [`gradcheck`](crate::gradcheck) before you trust it.
///
/// ```
/// use tapegrad::{custom_op, Tape};
/// use ndarray::arr1;
///
/// // sin(x), with d sin / dx = cos.
/// fn sin(x: &tapegrad::Tensor<f64>) -> tapegrad::Result<tapegrad::Tensor<f64>> {
///     let input = x.value().clone();
///     custom_op("sin", &[x], x.value().mapv(f64::sin), move |g, _| {
///         vec![Some(g * &input.mapv(f64::cos))]
///     })
/// }
/// let tape = Tape::new();
/// let x = tape.leaf("x", arr1(&[0.0, 1.0]));
/// let grads = sin(&x)?.sum_all().backward()?;
/// assert_eq!(grads.get(&x).unwrap()[[0]], 1.0);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the inputs are tracked on different
/// tapes; nothing is recorded.
pub fn custom_op<A: Float>(
    op: &'static str,
    inputs: &[&Tensor<A>],
    value: ArrayD<A>,
    vjp: impl Fn(&ArrayD<A>, &[bool]) -> Vec<Option<ArrayD<A>>> + 'static,
) -> Result<Tensor<A>> {
    let arity = inputs.len();
    record(op, inputs, value, move |g, needs| {
        let mut grads = vjp(&g, needs);
        // One gradient per input: pad a short answer, drop extras. Shapes are checked by the
        // tape, which reports a gradient that does not reduce to its input's shape.
        grads.resize_with(arity, || None);
        grads
    })
}
