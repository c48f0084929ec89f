//! User-defined ops: a forward value and its VJP, recorded like a primitive; and with the
//! two rules higher orders need, the VJP as ops and the JVP.

use std::sync::Arc;

use ndarray::ArrayD;

use crate::error::Result;
use crate::float::Float;
use crate::record::{Primal, Rules, record, record_rules};
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

/// [`custom_op`] with the rules a higher order needs, so that it can be differentiated twice
/// and in forward mode: `recorded(g, inputs, output)` is the VJP written with tensor ops, on
/// the inputs and output as tensors tracked where they are (so that the ops it records reach
/// them), one gradient per input (`None` where `needs` is false); `jvp(tangents)` is the
/// output's tangent from the inputs' tangents (`None` for an input without one) and values.
/// PyTorch: an
/// `autograd.Function` whose `backward` uses differentiable ops, with a `jvp`; JAX:
/// `jax.custom_jvp`.
///
/// ```
/// use tapegrad::{custom_op_with_rules, hvp, jvp, Params};
/// use ndarray::arr1;
///
/// // sin(x): VJP g·cos x on arrays and as ops, JVP ẋ·cos x.
/// fn sin(x: &tapegrad::Tensor<f64>) -> tapegrad::Result<tapegrad::Tensor<f64>> {
///     let input = x.value().clone();
///     custom_op_with_rules(
///         "my_sin",
///         &[x],
///         x.value().mapv(f64::sin),
///         move |g, _| vec![Some(g * &input.mapv(f64::cos))],
///         |g, inputs, _| Ok(vec![Some(g.mul(&cos(&inputs[0])?)?)]),
///         |tangents, inputs| Ok(tangents[0].unwrap() * &inputs[0].mapv(f64::cos)),
///     )
/// }
/// // cos(x) = sin(x + π/2), itself with every rule.
/// fn cos(x: &tapegrad::Tensor<f64>) -> tapegrad::Result<tapegrad::Tensor<f64>> {
///     sin(&x.add_scalar(std::f64::consts::FRAC_PI_2))
/// }
///
/// let params: Params<f64> = [("x", arr1(&[0.3]))].into_iter().collect();
/// let f = |p: &tapegrad::ParamTensors<f64>| Ok(sin(p.get("x")?)?.sum_all());
/// let (_, tangent) = jvp(&params, &params, f)?; // 0.3 · cos 0.3
/// assert!((tangent[[]] - 0.3 * 0.3f64.cos()).abs() < 1e-15);
/// let second = hvp(&params, &params, f)?; // -sin 0.3 · 0.3
/// assert!((second.get("x").unwrap()[[0]] + 0.3f64.sin() * 0.3).abs() < 1e-15);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// As [`custom_op`]. During a recorded backward pass or a forward sweep, what the rules
/// return.
pub fn custom_op_with_rules<A, V, R, J>(
    op: &'static str,
    inputs: &[&Tensor<A>],
    value: ArrayD<A>,
    vjp: V,
    recorded: R,
    jvp: J,
) -> Result<Tensor<A>>
where
    A: Float,
    V: Fn(&ArrayD<A>, &[bool]) -> Vec<Option<ArrayD<A>>> + 'static,
    R: Fn(&Tensor<A>, &[Tensor<A>], &Tensor<A>) -> Result<Vec<Option<Tensor<A>>>> + 'static,
    J: Fn(&[Option<&ArrayD<A>>], &[&ArrayD<A>]) -> Result<ArrayD<A>> + 'static,
{
    let arity = inputs.len();
    let value = Arc::new(value);
    let saved = User {
        inputs: inputs.iter().map(|t| t.shared_value()).collect(),
        output: Arc::clone(&value),
        vjp,
        recorded,
        jvp,
    };
    let rules = Rules {
        saved,
        vjp: move |u: &User<A, V, R, J>, g: ArrayD<A>, needs: &[bool]| {
            let mut grads = (u.vjp)(&g, needs);
            grads.resize_with(arity, || None);
            grads
        },
        recorded: move |u: &User<A, V, R, J>, g: &Tensor<A>, p: &Primal<'_, A>| {
            let linked: Vec<Tensor<A>> = u
                .inputs
                .iter()
                .enumerate()
                .map(|(i, v)| p.input(i, v))
                .collect();
            let mut grads = (u.recorded)(g, &linked, &p.output(&u.output))?;
            grads.resize_with(arity, || None);
            Ok(grads)
        },
        jvp: |u: &User<A, V, R, J>, t: &[Option<&ArrayD<A>>]| {
            let values: Vec<&ArrayD<A>> = u.inputs.iter().map(|v| &**v).collect();
            (u.jvp)(t, &values)
        },
    };
    record_rules(op, inputs, value, rules)
}

/// What a user's op keeps: its inputs and output, and its rules.
struct User<A, V, R, J> {
    inputs: Vec<Arc<ArrayD<A>>>,
    output: Arc<ArrayD<A>>,
    vjp: V,
    recorded: R,
    jvp: J,
}
