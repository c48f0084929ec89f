//! The forward-mode and second-order checks of [`check_grads`](super::check_grads).
//!
//! * Forward mode: for random directions `t` of each param, the tangent `J t` from a
//!   forward sweep against the central difference `(f(p + eps t) − f(p − eps t)) / 2eps`,
//!   element by element; and against reverse mode by the transpose identity
//!   `⟨c, J t⟩ = ⟨Jᵀ c, t⟩` for a random cotangent `c` (both sides analytic: they agree to
//!   rounding, so a wrong JVP or VJP rule shows at once).
//! * Second order, of the scalar `s = ⟨c, f⟩`: for random directions `v` of each param, the
//!   Hessian-vector product `∇²s · v` (every param's block of it) against the central
//!   difference of gradients `(∇s(p + eps v) − ∇s(p − eps v)) / 2eps`, by
//!   forward-over-reverse (forward mode on) and by reverse-over-reverse (reverse mode on).
//!
//! The tolerances are the first-order ones: the central difference of a gradient has the
//! truncation error `O(eps²)` of any central difference, and its rounding, `ulp(∇s) / eps`,
//! is the same `2e-10` relative as the first-order check's.

use ndarray::ArrayD;

use super::{CheckMode, Derivative, GradCheckOptions, ParamCheck, Tally, dot, normal_array};
use crate::autodiff::{ParamTensors, value_and_grad};
use crate::collection::Params;
use crate::error::{Error, Result};
use crate::higher_order::{hvp, hvp_reverse_over_reverse};
use crate::rng::SplitMix64;
use crate::tangents::sweep;
use crate::tape::Tape;
use crate::tensor::Tensor;

type Function<'f> = dyn Fn(&ParamTensors<f64>) -> Result<Tensor<f64>> + 'f;

/// Tangents against finite differences and against the gradients, per param.
pub(super) fn forward_mode(
    params: &Params<f64>,
    f: &Function<'_>,
    options: &GradCheckOptions,
    rng: &mut SplitMix64,
) -> Result<Vec<ParamCheck>> {
    let tape = Tape::new();
    let leaves = ParamTensors::leaves(params, &tape);
    let output = f(&leaves)?;
    let root = match output.node() {
        None => None,
        Some((on, id)) if on.same_as(&tape) => Some(id),
        Some(_) => return Err(Error::DifferentTapes { op: "check_grads" }),
    };
    let cotangent = normal_array(rng, output.shape());
    let transposed = output.backward_retaining(&cotangent)?;
    let mut checks = Vec::new();
    for (path, leaf) in leaves.iter() {
        let (mut tangents, mut transposes) = (Tally::new(options), Tally::new(options));
        for _ in 0..options.directions {
            let t = normal_array(rng, leaf.shape());
            let analytic = match root {
                None => ArrayD::zeros(output.shape()),
                Some(root) => {
                    let seeds = [(leaf.node_id().expect("a leaf"), t.clone())];
                    sweep(&tape, seeds, root)?[root]
                        .take()
                        .unwrap_or_else(|| ArrayD::zeros(output.shape()))
                }
            };
            let numeric = central_difference(params, path, &t, options.eps, |p| {
                Ok(f(&ParamTensors::constants(p))?.value().clone())
            })?;
            for (a, n) in analytic.iter().zip(&numeric) {
                tangents.compare(*a, *n);
            }
            transposes.compare(dot(&cotangent, &analytic), dot(&transposed.wrt(leaf)?, &t));
        }
        checks.push(tangents.finish_as(path, Derivative::Tangent, CheckMode::Directional));
        if options.reverse {
            checks.push(transposes.finish_as(path, Derivative::Transpose, CheckMode::Directional));
        }
    }
    Ok(checks)
}

/// Hessian-vector products of `⟨c, f⟩` against finite differences of its gradient, per
/// param and per mode asked for.
pub(super) fn second_order(
    params: &Params<f64>,
    f: &Function<'_>,
    options: &GradCheckOptions,
    rng: &mut SplitMix64,
) -> Result<Vec<ParamCheck>> {
    let shape = f(&ParamTensors::constants(params))?.shape().to_vec();
    let cotangent = Tensor::constant(normal_array(rng, &shape));
    let scalar = |p: &ParamTensors<f64>| Ok(f(p)?.mul(&cotangent)?.sum_all());
    let gradient = |p: &Params<f64>| -> Result<ArrayD<f64>> {
        let (_, grads) = value_and_grad(p, scalar)?;
        Ok(concatenated(grads.iter().map(|(_, g)| g)))
    };
    let mut checks = Vec::new();
    for path in params.paths() {
        let (mut forward, mut reverse) = (Tally::new(options), Tally::new(options));
        for _ in 0..options.directions {
            let shape = params.get(path).expect("a param's path").shape().to_vec();
            let direction = normal_array(rng, &shape);
            let mut vector = params.clone();
            for (p, value) in vector.iter_mut() {
                value.fill(0.0);
                if p == path {
                    value.assign(&direction);
                }
            }
            let numeric = central_difference(params, path, &direction, options.eps, gradient)?;
            if options.forward {
                let analytic = hvp(params, &vector, scalar)?;
                compare_all(
                    &mut forward,
                    &concatenated(analytic.iter().map(|(_, g)| g)),
                    &numeric,
                );
            }
            if options.reverse {
                let analytic = hvp_reverse_over_reverse(params, &vector, scalar)?;
                compare_all(
                    &mut reverse,
                    &concatenated(analytic.iter().map(|(_, g)| g)),
                    &numeric,
                );
            }
        }
        if options.forward {
            checks.push(forward.finish_as(
                path,
                Derivative::HvpForwardOverReverse,
                CheckMode::Directional,
            ));
        }
        if options.reverse {
            checks.push(reverse.finish_as(
                path,
                Derivative::HvpReverseOverReverse,
                CheckMode::Directional,
            ));
        }
    }
    Ok(checks)
}

/// `(g(p + eps·d) − g(p − eps·d)) / 2eps`, `d` a direction of the param at `path` alone.
fn central_difference(
    params: &Params<f64>,
    path: &str,
    direction: &ArrayD<f64>,
    eps: f64,
    g: impl Fn(&Params<f64>) -> Result<ArrayD<f64>>,
) -> Result<ArrayD<f64>> {
    let at = |step: f64| {
        let mut p = params.clone();
        *p.get_mut(path).expect("a param's path") += &(direction * step);
        g(&p)
    };
    let (plus, minus) = (at(eps)?, at(-eps)?);
    if plus.shape() != minus.shape() {
        // A function whose shape moves with its params compares as NaN: a failure.
        return Ok(ArrayD::from_elem(plus.shape(), f64::NAN));
    }
    Ok((plus - minus) / (2.0 * eps))
}

fn concatenated<'a>(arrays: impl Iterator<Item = &'a ArrayD<f64>>) -> ArrayD<f64> {
    let flat: Vec<f64> = arrays.flat_map(|a| a.iter().copied()).collect();
    ArrayD::from_shape_vec(vec![flat.len()], flat).expect("one axis")
}

fn compare_all(tally: &mut Tally, analytic: &ArrayD<f64>, numeric: &ArrayD<f64>) {
    if analytic.len() != numeric.len() {
        tally.compare(f64::NAN, 0.0);
    }
    for (a, n) in analytic.iter().zip(numeric) {
        tally.compare(*a, *n);
    }
}
