//! A public gradient checker: reverse-mode gradients against central finite differences,
//! in `f64`, and on request forward mode and second order, as JAX's
//! `check_grads(f, args, order=2, modes=["fwd", "rev"])` checks them
//! ([`GradCheckOptions::second_order`]; the checks are in `higher.rs`).
//!
//! For each param the checker compares the tape's gradient with
//! `(f(p + eps·d) - f(p - eps·d)) / 2eps`:
//!
//! * **full Jacobian** when the param and the output are small (`size × outputs` at most
//!   [`GradCheckOptions::full_jacobian_max`]): every entry `J[o, i]`, the analytic rows from
//!   one backward pass per output, the numeric columns from two evaluations per input;
//! * **random directions** otherwise, as JAX's `check_grads` does: for a random direction
//!   `t` and a random output cotangent `c`, `<t, Jᵀc>` from one backward pass against the
//!   finite-difference JVP `<c, (f(p + eps t) - f(p - eps t)) / 2eps>`, two evaluations.
//!
//! The cotangent is random and non-uniform, never a plain sum: under a sum, errors that
//! cancel across outputs (as in a normalisation layer, whose outputs sum to a constant) go
//! unseen.
//!
//! # Tolerances
//! The defaults are PyTorch's `gradcheck` defaults in `f64`: `eps = 1e-6`, `atol = 1e-5`,
//! `rtol = 1e-3`; an entry passes when `|analytic - numeric| <= atol + rtol·|numeric|`.
//! Why they are safe: central differences have truncation error `O(eps²·f''')`, about
//! `1e-12` for smooth functions of order-one inputs, and rounding error about
//! `ulp(|f|) / eps`, `2e-10·|f|`; both are several orders below `atol`. A wrong VJP, in
//! contrast, is wrong by the size of the gradient itself, so the check separates the two
//! cases with room to spare. Keep inputs away from kinks (`relu` at 0, `abs` at 0, ties of
//! `max`) by more than `eps`, or the finite difference straddles the kink.

use std::fmt;

use ndarray::{ArrayD, Zip};

use crate::autodiff::ParamTensors;
use crate::collection::Params;
use crate::error::{Error, Result};
use crate::module::apply::{ApplyOptions, ModuleExt};
use crate::module::scope::Module;
use crate::rng::SplitMix64;
use crate::tape::Tape;
use crate::tensor::Tensor;
use crate::variables::Variables;

mod higher;

/// How [`check_grads`] checks.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckOptions {
    /// The finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (relative to the numeric value).
    pub rtol: f64,
    /// The largest `param size × output size` checked entry by entry; beyond it, random
    /// directions.
    pub full_jacobian_max: usize,
    /// How many random directions per param in directional mode.
    pub directions: usize,
    /// Seed of the random cotangent and directions.
    pub seed: u64,
    /// The highest order checked: 1 (gradients), or 2 (Hessian-vector products as well).
    pub order: usize,
    /// Whether to check reverse mode: gradients, and at order 2 Hessian-vector products by
    /// reverse-over-reverse.
    pub reverse: bool,
    /// Whether to check forward mode: Jacobian-vector products against finite differences
    /// and, with reverse mode, against the gradients (`⟨c, J t⟩ = ⟨Jᵀ c, t⟩`); at order 2,
    /// Hessian-vector products by forward-over-reverse.
    pub forward: bool,
}

impl GradCheckOptions {
    /// Every check: order 2, forward and reverse modes. JAX:
    /// `check_grads(f, args, order=2, modes=["fwd", "rev"])`.
    #[must_use]
    pub fn second_order() -> Self {
        GradCheckOptions {
            order: 2,
            forward: true,
            ..Self::default()
        }
    }
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        GradCheckOptions {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-3,
            full_jacobian_max: 4096,
            directions: 4,
            seed: 0,
            order: 1,
            reverse: true,
            forward: false,
        }
    }
}

/// How one param was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// Every Jacobian entry.
    FullJacobian,
    /// Random directions.
    Directional,
}

/// What a check compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derivative {
    /// Reverse-mode gradients (VJPs) against finite differences.
    Gradient,
    /// Forward-mode tangents (JVPs) against finite differences.
    Tangent,
    /// Forward against reverse mode: `⟨c, J t⟩` against `⟨Jᵀ c, t⟩`.
    Transpose,
    /// Hessian-vector products by forward-over-reverse against finite differences of the
    /// gradient.
    HvpForwardOverReverse,
    /// Hessian-vector products by reverse-over-reverse against the same.
    HvpReverseOverReverse,
}

/// The result for one param.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamCheck {
    /// The param's path.
    pub path: String,
    /// What was compared.
    pub derivative: Derivative,
    /// How it was checked.
    pub mode: CheckMode,
    /// How many comparisons were made.
    pub compared: usize,
    /// The worst `|analytic - numeric|`.
    pub max_abs_error: f64,
    /// The worst `|analytic - numeric| / max(|analytic|, |numeric|)` over the comparisons
    /// whose values reach `atol` (0 if none does): the relative error of two values near 0,
    /// a bias's gradient under BatchNorm say, is rounding over rounding and says nothing;
    /// those comparisons are judged by `atol` alone.
    pub max_rel_error: f64,
    /// Whether every comparison was within `atol + rtol·|numeric|`.
    pub passed: bool,
}

/// What [`check_grads`] found, one entry per param in path order.
#[derive(Debug, Clone, PartialEq)]
pub struct GradCheckReport {
    /// One entry per param.
    pub params: Vec<ParamCheck>,
    /// For [`check_model`]: each non-params collection, and whether it was bit-identical
    /// after the check (it was held fixed while the params were perturbed).
    pub held_fixed: Vec<(String, bool)>,
}

impl GradCheckReport {
    /// Whether every param passed and every held-fixed collection stayed unchanged.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.params.iter().all(|p| p.passed) && self.held_fixed.iter().all(|(_, same)| *same)
    }

    /// The entry for `path`.
    #[must_use]
    pub fn get(&self, path: &str) -> Option<&ParamCheck> {
        self.params.iter().find(|p| p.path == path)
    }
}

impl fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32} {:<10} {:<9} {:>8} {:>12} {:>12}  result",
            "param", "derivative", "mode", "compared", "max abs err", "max rel err"
        )?;
        for p in &self.params {
            let mode = match p.mode {
                CheckMode::FullJacobian => "jacobian",
                CheckMode::Directional => "direction",
            };
            let derivative = match p.derivative {
                Derivative::Gradient => "gradient",
                Derivative::Tangent => "tangent",
                Derivative::Transpose => "transpose",
                Derivative::HvpForwardOverReverse => "hvp (f/r)",
                Derivative::HvpReverseOverReverse => "hvp (r/r)",
            };
            writeln!(
                f,
                "{:<32} {:<10} {:<9} {:>8} {:>12.3e} {:>12.3e}  {}",
                p.path,
                derivative,
                mode,
                p.compared,
                p.max_abs_error,
                p.max_rel_error,
                if p.passed { "ok" } else { "FAILED" }
            )?;
        }
        for (collection, unchanged) in &self.held_fixed {
            let verdict = if *unchanged { "unchanged" } else { "CHANGED" };
            writeln!(f, "{collection:<32} held fixed: {verdict}")?;
        }
        Ok(())
    }
}

/// Accumulates comparisons of analytic against numeric values for one param.
struct Tally {
    atol: f64,
    rtol: f64,
    compared: usize,
    max_abs: f64,
    max_rel: f64,
    passed: bool,
}

impl Tally {
    fn new(options: &GradCheckOptions) -> Self {
        Tally {
            atol: options.atol,
            rtol: options.rtol,
            compared: 0,
            max_abs: 0.0,
            max_rel: 0.0,
            passed: true,
        }
    }

    fn compare(&mut self, analytic: f64, numeric: f64) {
        let err = (analytic - numeric).abs();
        let scale = analytic.abs().max(numeric.abs());
        let rel = if scale > self.atol { err / scale } else { 0.0 };
        self.compared += 1;
        // NaN fails every comparison and poisons the maxima, as it should.
        self.max_abs = if err.is_nan() {
            err
        } else {
            self.max_abs.max(err)
        };
        self.max_rel = if rel.is_nan() {
            rel
        } else {
            self.max_rel.max(rel)
        };
        let within = err <= self.atol + self.rtol * numeric.abs();
        // A NaN error is never within tolerance.
        self.passed &= within;
    }

    fn finish(self, path: &str, mode: CheckMode) -> ParamCheck {
        self.finish_as(path, Derivative::Gradient, mode)
    }

    fn finish_as(self, path: &str, derivative: Derivative, mode: CheckMode) -> ParamCheck {
        ParamCheck {
            path: path.to_string(),
            derivative,
            mode,
            compared: self.compared,
            max_abs_error: self.max_abs,
            max_rel_error: self.max_rel,
            passed: self.passed,
        }
    }
}

fn normal_array(rng: &mut SplitMix64, shape: &[usize]) -> ArrayD<f64> {
    ArrayD::from_shape_simple_fn(shape, || rng.normal())
}

fn flat(a: &ArrayD<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

fn dot(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    Zip::from(a).and(b).fold(0.0, |acc, &x, &y| acc + x * y)
}

/// Checks the gradients of `f` with respect to every param against central finite
/// differences, in `f64`. `f` may return a tensor of any shape.
///
/// Errors (never panics) if `f` fails at the given params or returns a tensor from another
/// tape; a wrong gradient is not an error but a failed entry of the report.
///
/// ```
/// use tapegrad::gradcheck::{check_grads, GradCheckOptions};
/// use tapegrad::Params;
/// use ndarray::arr1;
///
/// let mut params = Params::new();
/// params.insert("x", arr1(&[0.5, 1.5, 2.5]));
/// let report = check_grads(&params, |p| Ok(p.get("x")?.log().tanh()), &GradCheckOptions::default())?;
/// assert!(report.passed(), "{report}");
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// What `f` returns, and [`Error::NotScalar`] if its result is not a single element. A gradient
/// that disagrees is not an error: it is reported in the returned [`GradCheckReport`].
pub fn check_grads<F>(
    params: &Params<f64>,
    f: F,
    options: &GradCheckOptions,
) -> Result<GradCheckReport>
where
    F: Fn(&ParamTensors<f64>) -> Result<Tensor<f64>>,
{
    // Analytic side: one tape, the params as leaves.
    let tape = Tape::new();
    let leaves = ParamTensors::leaves(params, &tape);
    let output = f(&leaves)?;
    if output.tape().is_some_and(|t| !t.same_as(&tape)) {
        return Err(Error::DifferentTapes { op: "check_grads" });
    }
    let mut rng = SplitMix64::new(options.seed);
    let cotangent = normal_array(&mut rng, output.shape());
    let jt_c = output.backward_retaining(&cotangent)?;

    // Numeric side: the function at perturbed params, with no tape.
    let evaluate = |perturbed: &Params<f64>| -> Result<ArrayD<f64>> {
        let out = f(&ParamTensors::constants(perturbed))?;
        Ok(out.value().clone())
    };
    let perturbed = |path: &str, step: &ArrayD<f64>| -> Params<f64> {
        let mut p = params.clone();
        *p.get_mut(path).expect("path comes from params") += step;
        p
    };
    let eps = options.eps;

    let mut report = Vec::new();
    for path in params.paths().filter(|_| options.reverse) {
        let leaf = leaves.get(path)?;
        let size = leaf.len();
        let mut tally = Tally::new(options);
        let mode = if size * output.len() <= options.full_jacobian_max {
            // Analytic Jacobian rows: one backward pass per output element.
            let mut rows: Vec<Vec<f64>> = Vec::with_capacity(output.len());
            for o in 0..output.len() {
                let mut e_o = vec![0.0; output.len()];
                e_o[o] = 1.0;
                let e_o = ArrayD::from_shape_vec(output.shape(), e_o).expect("same length");
                rows.push(flat(&output.backward_retaining(&e_o)?.wrt(leaf)?));
            }
            // Numeric Jacobian columns: two evaluations per input element.
            for i in 0..size {
                let mut step = vec![0.0; size];
                step[i] = eps;
                let step = ArrayD::from_shape_vec(leaf.shape(), step).expect("same length");
                let plus = flat(&evaluate(&perturbed(path, &step))?);
                let minus = flat(&evaluate(&perturbed(path, &-&step))?);
                for (o, row) in rows.iter().enumerate() {
                    // A perturbed output of another length compares as NaN: a failure.
                    let p = plus.get(o).copied().unwrap_or(f64::NAN);
                    let m = minus.get(o).copied().unwrap_or(f64::NAN);
                    tally.compare(row[i], (p - m) / (2.0 * eps));
                }
            }
            CheckMode::FullJacobian
        } else {
            let analytic_vjp = jt_c.wrt(leaf)?;
            for _ in 0..options.directions {
                let t = normal_array(&mut rng, leaf.shape());
                let plus = evaluate(&perturbed(path, &(&t * eps)))?;
                let minus = evaluate(&perturbed(path, &(&t * -eps)))?;
                let numeric = (dot(&cotangent, &plus) - dot(&cotangent, &minus)) / (2.0 * eps);
                tally.compare(dot(&t, &analytic_vjp), numeric);
            }
            CheckMode::Directional
        };
        report.push(tally.finish(path, mode));
    }
    if options.forward {
        report.extend(higher::forward_mode(params, &f, options, &mut rng)?);
    }
    if options.order >= 2 {
        report.extend(higher::second_order(params, &f, options, &mut rng)?);
    }
    Ok(GradCheckReport {
        params: report,
        held_fixed: Vec::new(),
    })
}

/// The collection-aware check of a whole model: gradients of `loss(model(x))` with respect
/// to every param against finite differences, perturbing params only. Every other
/// collection (`batch_stats`, `state`, …) is read from `variables` as a constant and held
/// fixed; updates a mutable apply returns are discarded, so perturbed evaluations cannot
/// leak into running statistics. The report also records that each of those collections
/// is bit-identical afterwards.
///
/// ```
/// use tapegrad::gradcheck::{check_model, GradCheckOptions};
/// use tapegrad::nn::{BatchNorm, Mlp};
/// use tapegrad::{ApplyOptions, ModuleExt, Mutable, Tensor};
///
/// let model = Mlp::new(&[4], 3).with_batch_norm(BatchNorm::new());
/// let x = Tensor::from_vec(&[5, 2], (0..10).map(|i| (i as f64 * 0.7).sin()).collect())?;
/// let variables = model.init(0, &x)?;
/// let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
/// let report = check_model(&model, &variables, &x, &train,
///     |logits| tapegrad::softmax_cross_entropy(logits, &[0, 1, 2, 0, 1]),
///     &GradCheckOptions::default())?;
/// assert!(report.passed(), "{report}");
/// assert_eq!(report.held_fixed, vec![("batch_stats".to_string(), true)]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// What the model or `loss` returns (a shape error, say). Disagreeing gradients and buffer leaks
/// are reported in the returned [`GradCheckReport`], not as errors.
pub fn check_model<M, L>(
    model: &M,
    variables: &Variables<f64>,
    input: &M::Input,
    options: &ApplyOptions,
    loss: L,
    check: &GradCheckOptions,
) -> Result<GradCheckReport>
where
    M: Module<f64> + ?Sized,
    L: Fn(&M::Output) -> Result<Tensor<f64>>,
{
    let before = variables.clone();
    let mut report = check_grads(
        variables.params(),
        |p| loss(&model.apply_tracked(p, variables, input, options)?.0),
        check,
    )?;
    report.held_fixed = before
        .buffers()
        .map(|(name, collection)| {
            let unchanged = variables.collection(name) == Some(collection);
            (name.to_string(), unchanged)
        })
        .collect();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{CheckMode, GradCheckOptions, Tally};

    /// Two values near 0 (below `atol`) are judged by `atol` alone and report no relative
    /// error (it would be rounding over rounding); values that reach `atol` report theirs.
    #[test]
    fn relative_errors_are_reported_only_where_the_values_reach_atol() {
        let mut tally = Tally::new(&GradCheckOptions::default());
        tally.compare(2.8e-17, 0.0);
        let near_zero = tally.finish("bias", CheckMode::FullJacobian);
        assert_eq!(near_zero.max_rel_error, 0.0);
        assert!(near_zero.passed);
        let mut tally = Tally::new(&GradCheckOptions::default());
        tally.compare(1.0, 1.1);
        let wrong = tally.finish("w", CheckMode::FullJacobian);
        assert!((wrong.max_rel_error - 0.1 / 1.1).abs() < 1e-12);
        assert!(!wrong.passed);
    }
}
