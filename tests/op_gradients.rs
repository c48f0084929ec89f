//! Every primitive and composite op, one table row each with the domain where it is smooth,
//! checked against central finite differences in f64 (`tapegrad::gradcheck`), and in f32
//! against f64.
//!
//! One proptest per op family draws shapes (0-d scalars, size-1 and broadcast dimensions)
//! and values; each case checks every row of the family, so every op gets every case.

use ndarray::ArrayD;
use proptest::prelude::*;
use tapegrad::gradcheck::{GradCheckOptions, check_grads};
use tapegrad::testing::{arrays, broadcast_pair, distinct_arrays, shape_with_rank};
use tapegrad::{ConvOptions, Float, Padding, Params, Result, Tensor, value_and_grad};

const CASES: u32 = 256;

/// Where an op is smooth, so that central differences are valid. Each case draws unit
/// values `u` in [0, 1) (and a permutation), and each row maps them into its domain, so every
/// row sees every case and a failure shrinks element by element.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Domain {
    /// Anywhere in [-2, 2).
    Any,
    /// In [0.2, 3): log, sqrt, powf.
    Positive,
    /// |x| in [0.2, 2]: relu, abs, recip (the kink or pole is at 0).
    AwayFromZero,
    /// Pairwise at least 0.5 apart, in the drawn order: max (smooth away from ties).
    Distinct,
}

/// A case: unit values and a permutation of their positions.
#[derive(Debug, Clone)]
struct Unit {
    u: ArrayD<f64>,
    order: Vec<usize>,
}

fn unit(shape: Vec<usize>) -> impl Strategy<Value = Unit> {
    let n: usize = shape.iter().product();
    (
        arrays::<f64>(shape, 0.0..1.0),
        Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
    )
        .prop_map(|(u, order)| Unit { u, order })
}

fn in_domain(domain: Domain, case: &Unit) -> ArrayD<f64> {
    let n = case.order.len() as f64;
    match domain {
        Domain::Any => case.u.mapv(|u| 4.0 * u - 2.0),
        Domain::Positive => case.u.mapv(|u| 0.2 + 2.8 * u),
        Domain::AwayFromZero => case.u.mapv(|u| {
            let v = 2.0 * u - 1.0;
            v.signum() * (0.2 + 1.8 * v.abs())
        }),
        Domain::Distinct => {
            let mut x = case.u.clone();
            for (x, &rank) in x.iter_mut().zip(&case.order) {
                *x = (rank as f64 - n / 2.0) * 0.75 + 0.25 * *x;
            }
            x
        }
    }
}

/// One op of one input, in both precisions (the same body, instantiated twice).
struct UnaryRow {
    name: &'static str,
    domain: Domain,
    min_rank: usize,
    f64: fn(&Tensor<f64>) -> Result<Tensor<f64>>,
    f32: fn(&Tensor<f32>) -> Result<Tensor<f32>>,
}

macro_rules! unary {
    ($name:literal, $domain:ident, $min_rank:literal, |$x:ident| $body:expr) => {
        UnaryRow {
            name: $name,
            domain: Domain::$domain,
            min_rank: $min_rank,
            f64: |$x: &Tensor<f64>| $body,
            f32: |$x: &Tensor<f32>| $body,
        }
    };
}

/// The axes an axis-taking op reduces over in a row: the first and the last (one axis for
/// a 1-D input), so that both leading and trailing reductions are exercised.
fn first_and_last(ndim: usize) -> Vec<usize> {
    if ndim == 1 {
        vec![0]
    } else {
        vec![0, ndim - 1]
    }
}

fn unary_table() -> Vec<UnaryRow> {
    vec![
        unary!("neg", Any, 0, |x| Ok(x.neg())),
        unary!("exp", Any, 0, |x| Ok(x.exp())),
        unary!("log", Positive, 0, |x| Ok(x.log())),
        unary!("sqrt", Positive, 0, |x| Ok(x.sqrt())),
        unary!("recip", AwayFromZero, 0, |x| Ok(x.recip())),
        unary!("tanh", Any, 0, |x| Ok(x.tanh())),
        unary!("sigmoid", Any, 0, |x| Ok(x.sigmoid())),
        unary!("relu", AwayFromZero, 0, |x| Ok(x.relu())),
        unary!("abs", AwayFromZero, 0, |x| Ok(x.abs())),
        unary!("square", Any, 0, |x| Ok(x.square())),
        unary!("powi(3)", Any, 0, |x| Ok(x.powi(3))),
        unary!("powf(1.7)", Positive, 0, |x| Ok(x.powf(Float::of(1.7)))),
        unary!("add_scalar", Any, 0, |x| Ok(x.add_scalar(Float::of(0.5)))),
        unary!("mul_scalar", Any, 0, |x| Ok(x.mul_scalar(Float::of(-1.5)))),
        unary!("sum_all", Any, 0, |x| Ok(x.sum_all())),
        unary!("mean_all", Any, 0, |x| Ok(x.mean_all())),
        unary!("sum_axes", Any, 1, |x| x
            .sum_axes(&first_and_last(x.ndim()), false)),
        unary!("sum_axes keep", Any, 1, |x| x
            .sum_axes(&[x.ndim() - 1], true)),
        unary!("mean_axes", Any, 1, |x| x
            .mean_axes(&first_and_last(x.ndim()), true)),
        unary!("max_axes", Distinct, 1, |x| x
            .max_axes(&first_and_last(x.ndim()), false)),
        unary!("max_axes keep", Distinct, 1, |x| x.max_axes(&[0], true)),
        unary!("reshape", Any, 0, |x| x.reshape(&[x.len()])),
        unary!("transpose", Any, 0, |x| x.transpose()),
        unary!("permute", Any, 2, |x| {
            let mut axes: Vec<usize> = (0..x.ndim()).collect();
            axes.rotate_left(1);
            x.permute(&axes)
        }),
        unary!("broadcast_to", Any, 0, |x| {
            let mut target = vec![2];
            target.extend(x.shape().iter().map(|&n| if n == 1 { 3 } else { n }));
            x.broadcast_to(&target)
        }),
        unary!("slice_axis", Any, 1, |x| x.slice_axis(
            0,
            0,
            x.shape()[0].div_ceil(2)
        )),
        unary!("concat self", Any, 1, |x| Tensor::concat(
            &[x, &x.square()],
            0
        )),
        unary!("logsumexp", Any, 1, |x| x.logsumexp(x.ndim() - 1, false)),
        unary!("log_softmax", Any, 1, |x| x.log_softmax(x.ndim() - 1)),
        unary!("softmax", Any, 1, |x| x.softmax(0)),
        unary!("var_axes", Any, 1, |x| x
            .var_axes(&first_and_last(x.ndim()), false)),
        // Used twice: the gradient must accumulate both contributions.
        unary!("x * x", Any, 0, |x| x.mul(x)),
        unary!("x + x", Any, 0, |x| x.add(x)),
        unary!("two branches", Any, 0, |x| x.exp().mul(&x.tanh())),
    ]
}

/// Every derivative of every row: gradients, tangents, the transpose identity between them,
/// and Hessian-vector products both ways (JAX's `check_grads(order=2, modes=["fwd", "rev"])`).
fn options() -> GradCheckOptions {
    GradCheckOptions::second_order()
}

fn check_one(
    name: &str,
    inputs: &[(&str, &ArrayD<f64>)],
    f: impl Fn(&[&Tensor<f64>]) -> Result<Tensor<f64>>,
) -> std::result::Result<(), TestCaseError> {
    let params: Params<f64> = inputs
        .iter()
        .map(|(k, v)| (k.to_string(), (*v).clone()))
        .collect();
    let report = check_grads(
        &params,
        |p| {
            let tensors: Vec<&Tensor<f64>> = inputs
                .iter()
                .map(|(k, _)| p.get(k))
                .collect::<Result<_>>()?;
            f(&tensors)
        },
        &options(),
    )
    .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    prop_assert!(report.passed(), "{name} on {inputs:?}:\n{report}");
    Ok(())
}

proptest! {
    #![proptest_config(tapegrad::testing::config(CASES))]

    /// Unary ops, reductions, shape ops and composites of one input.
    #[test]
    fn unary_family_matches_finite_differences(case in shape_with_rank(0, 3, 3).prop_flat_map(unit)) {
        for row in unary_table() {
            if case.u.ndim() < row.min_rank {
                continue;
            }
            let x = in_domain(row.domain, &case);
            check_one(row.name, &[("x", &x)], |t| (row.f64)(t[0]))?;
        }
    }

    /// Binary elementwise ops on every kind of broadcast pair.
    #[test]
    fn binary_family_matches_finite_differences(
        (ua, ub) in broadcast_pair(3, 3).prop_flat_map(|(sa, sb)| (unit(sa), unit(sb))),
    ) {
        let (a, b) = (in_domain(Domain::Any, &ua), in_domain(Domain::Any, &ub));
        let denominator = in_domain(Domain::AwayFromZero, &ub);
        check_one("add", &[("a", &a), ("b", &b)], |t| t[0].add(t[1]))?;
        check_one("sub", &[("a", &a), ("b", &b)], |t| t[0].sub(t[1]))?;
        check_one("mul", &[("a", &a), ("b", &b)], |t| t[0].mul(t[1]))?;
        check_one("div", &[("a", &a), ("b", &denominator)], |t| t[0].div(t[1]))?;
        // mse takes two tensors of one shape (a broadcast pair is an error there).
        let target = a.mapv(|v| 0.3 - 0.7 * v);
        check_one("mse", &[("a", &a), ("b", &target)], |t| tapegrad::mse(t[0], t[1]))?;
        // Interleaved bands keep a and b at least 0.1 apart, so max/min never tie: a lies in
        // [2k, 2k + 0.9), b in [2k + 1, 2k + 1.9), with the band k from the element's rank.
        let band = |case: &Unit, offset: f64| {
            let mut x = case.u.mapv(|u| offset + 0.9 * u);
            for (x, &rank) in x.iter_mut().zip(&case.order) {
                *x += 2.0 * (rank % 3) as f64;
            }
            x
        };
        let (low, high) = (band(&ua, 0.0), band(&ub, 1.0));
        check_one("maximum", &[("a", &low), ("b", &high)], |t| t[0].maximum(t[1]))?;
        check_one("minimum", &[("a", &low), ("b", &high)], |t| t[0].minimum(t[1]))?;
        let mask = Tensor::constant(a.mapv(|v| if v > 0.0 { 1.0 } else { 0.0 }));
        check_one("select", &[("a", &a), ("b", &b)], |t| Tensor::select(&mask, t[0], t[1]))?;
    }

    /// Matrix products of every small size, including 1 x 1.
    #[test]
    fn matmul_matches_finite_differences(
        (a, b) in (1..4usize, 1..4usize, 1..4usize).prop_flat_map(|(m, k, n)| {
            (arrays::<f64>(vec![m, k], -2.0..2.0), arrays::<f64>(vec![k, n], -2.0..2.0))
        }),
    ) {
        check_one("matmul", &[("a", &a), ("b", &b)], |t| t[0].matmul(t[1]))?;
    }

    /// Concatenation of two tensors along a drawn axis.
    #[test]
    fn concat_matches_finite_differences(
        (a, b, axis) in (shape_with_rank(1, 3, 3), 1..4usize, any::<prop::sample::Index>()).prop_flat_map(|(s, extra, axis)| {
            let axis = axis.index(s.len());
            let mut sb = s.clone();
            sb[axis] = extra;
            (arrays::<f64>(s, -2.0..2.0), arrays::<f64>(sb, -2.0..2.0), Just(axis))
        }),
    ) {
        check_one("concat", &[("a", &a), ("b", &b)], |t| Tensor::concat(&[t[0], t[1]], axis))?;
    }

    /// Gathering rows by id, ids repeated and some rows never used.
    #[test]
    fn gather_rows_matches_finite_differences(
        (table, ids) in (1..5usize, 1..4usize, shape_with_rank(1, 2, 3)).prop_flat_map(|(rows, width, id_shape)| {
            let n: usize = id_shape.iter().product();
            (
                arrays::<f64>(vec![rows, width], -2.0..2.0),
                prop::collection::vec(0..rows, n).prop_map(move |v| ArrayD::from_shape_vec(id_shape.clone(), v).unwrap()),
            )
        }),
    ) {
        check_one("gather_rows", &[("table", &table)], |t| t[0].gather_rows(&ids))?;
    }

    /// 2-D convolution: odd and even sizes, strides 1–2, dilation 1–2, 1×1 and 3×3 kernels,
    /// SAME, VALID and explicit padding, one group or depthwise; input and kernel both
    /// differentiated.
    #[test]
    fn conv2d_matches_finite_differences(
        (x, kernel, options) in conv_case(),
    ) {
        check_one("conv2d", &[("x", &x), ("kernel", &kernel)], |t| t[0].conv2d(t[1], &options))?;
    }

    /// Max pooling on values that never tie (every pair at least 0.05 apart, far more than
    /// the finite-difference step) and average pooling on any values.
    #[test]
    fn pooling_matches_finite_differences(
        (x, window, strides, padding) in (1..3usize, 1..7usize, 1..7usize, 1..4usize)
            .prop_flat_map(|(b, h, w, c)| (
                distinct_arrays::<f64>(vec![b, h, w, c], 0.05),
                [1..4usize, 1..4usize], [1..3usize, 1..3usize],
                prop_oneof![Just(Padding::Same), Just(Padding::Valid)],
            ))
            .prop_filter("the window fits a VALID input", |(x, window, _, padding)| {
                *padding == Padding::Same || (window[0] <= x.shape()[1] && window[1] <= x.shape()[2])
            }),
    ) {
        check_one("max_pool", &[("x", &x)], |t| t[0].max_pool(window, strides, padding))?;
        check_one("avg_pool", &[("x", &x)], |t| t[0].avg_pool(window, strides, padding))?;
    }

    /// Mean softmax cross-entropy with integer labels.
    #[test]
    fn cross_entropy_matches_finite_differences(
        (logits, labels) in (1..5usize, 1..5usize).prop_flat_map(|(batch, classes)| {
            (arrays::<f64>(vec![batch, classes], -3.0..3.0), prop::collection::vec(0..classes, batch))
        }),
    ) {
        check_one("softmax_cross_entropy", &[("logits", &logits)], |t| tapegrad::softmax_cross_entropy(t[0], &labels))?;
    }

    /// f32 forward values and gradients agree with f64 to 1e-4 relative (f32 has 24 bits,
    /// about 6e-8 per rounding; a handful of chained roundings and the amplification of
    /// `exp` on [-2, 2] stay well below 1e-4).
    #[test]
    fn f32_agrees_with_f64(case in shape_with_rank(0, 3, 3).prop_flat_map(unit)) {
        for row in unary_table() {
            if case.u.ndim() < row.min_rank {
                continue;
            }
            let x = in_domain(row.domain, &case);
            let (v64, g64) = value_and_gradient(&x, row.f64).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let (v32, g32) = value_and_gradient(&x.mapv(|v| v as f32), row.f32).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (a, b) in v32.iter().zip(&v64).chain(g32.iter().zip(&g64)) {
                prop_assert!((a.as_f64() - b).abs() <= 1e-4 * b.abs().max(1.0), "{}: f32 {a} vs f64 {b}", row.name);
            }
        }
    }
}

/// The forward value and the gradient of `sum(f(x) * w)` for fixed weights `w`.
fn value_and_gradient<A: Float>(
    x: &ArrayD<A>,
    f: fn(&Tensor<A>) -> Result<Tensor<A>>,
) -> Result<(ArrayD<A>, ArrayD<A>)> {
    let params: Params<A> = [("x".to_string(), x.clone())].into_iter().collect();
    let value = f(&Tensor::constant(x.clone()))?.value().clone();
    // Distinct weights, so that errors cannot cancel as they could under a plain sum.
    let weights: Vec<A> = (0..value.len())
        .map(|i| A::of(1.0 + 0.1 * i as f64))
        .collect();
    let weights = Tensor::from_vec(value.shape(), weights)?;
    let (_, grads) = value_and_grad(&params, |p| Ok(f(p.get("x")?)?.mul(&weights)?.sum_all()))?;
    Ok((value, grads.get("x").unwrap().clone()))
}

#[test]
fn detach_stops_the_gradient() {
    // f(x) = x * detach(x): the detached factor is a constant, so df/dx = detach(x) = x,
    // not 2x as it would be without detach.
    let params: Params<f64> = [("x".to_string(), ndarray::arr1(&[3.0]).into_dyn())]
        .into_iter()
        .collect();
    let (_, grads) = value_and_grad(&params, |p| {
        let x = p.get("x")?;
        Ok(x.mul(&x.detach())?.sum_all())
    })
    .unwrap();
    assert_eq!(grads.get("x").unwrap()[[0]], 3.0);
}

/// An input, a kernel and options for `conv2d`, the kernel fitting the padded input.
fn conv_case() -> impl Strategy<Value = (ArrayD<f64>, ArrayD<f64>, ConvOptions)> {
    let padding = prop_oneof![
        Just(Padding::Same),
        Just(Padding::Valid),
        (0..3usize, 0..3usize).prop_map(|(a, b)| Padding::Explicit([(a, b), (b, a)])),
    ];
    (
        (1..3usize, 1..7usize, 1..7usize),
        (1..3usize, 1..3usize, any::<bool>()),
        (
            prop_oneof![Just(1usize), Just(3)],
            1..3usize,
            1..3usize,
            padding,
        ),
    )
        .prop_flat_map(
            |((batch, h, w), (per_group, outputs, depthwise), (k, stride, dilation, padding))| {
                let groups = if depthwise { 2 } else { 1 };
                let channels = per_group * groups;
                let options = ConvOptions {
                    strides: [stride, stride],
                    padding,
                    dilation: [dilation, dilation],
                    groups,
                };
                (
                    arrays::<f64>(vec![batch, h, w, channels], -2.0..2.0),
                    arrays::<f64>(vec![k, k, per_group, outputs * groups], -1.0..1.0),
                    Just(options),
                )
            },
        )
        .prop_filter(
            "the kernel fits the padded input",
            |(x, kernel, options)| {
                Tensor::constant(x.clone())
                    .conv2d(&Tensor::constant(kernel.clone()), options)
                    .is_ok()
            },
        )
}
