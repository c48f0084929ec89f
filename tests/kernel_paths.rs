//! The kernel paths of `tapegrad::runtime::KernelPath`: whatever path this CPU runs, a
//! computation gives what the portable path gives, within the rounding of a reassociated sum.
//! Each path is forced with `KernelPath::run` (a cap; `TAPEGRAD_KERNELS` does the same for a
//! whole process), so the lower paths stay tested on a CPU that would never choose them.
//!
//! Tolerances. A product's element is a sum of `k` products; two summation orders differ by
//! at most `2 γ_k Σ |a_il| |b_lj|`, with `γ_k = k ε / (1 − k ε)` (Higham, *Accuracy and
//! Stability of Numerical Algorithms*, §3.1): the bound used for products and their VJPs.
//! The elementwise loops (BatchNorm, SGD, the bias, the loss) never reassociate, so a whole
//! step differs only through its products: checked against a bound of 1e-9 relative to the
//! values' scale, which is orders of magnitude above that propagated rounding (f64, values
//! of order one) and orders below any real error.

use ndarray::{Array2, ArrayD, Ix2};
use proptest::prelude::*;
use tapegrad::runtime::KernelPath;
use tapegrad::testing::{arrays, mlp_case};
use tapegrad::{
    ApplyOptions, ModuleExt, Mutable, Tape, softmax_cross_entropy, value_and_grad_with_aux,
};

/// The paths this CPU runs, portable first.
fn paths() -> Vec<KernelPath> {
    let paths: Vec<_> = KernelPath::ALL
        .into_iter()
        .filter(|&path| path <= KernelPath::detected())
        .collect();
    eprintln!("kernel paths on this CPU: {paths:?}");
    paths
}

/// `a · b`, `g bᵀ` and `aᵀ g` by the tape's `matmul` on `path`.
fn products(
    path: KernelPath,
    a: &ArrayD<f64>,
    b: &ArrayD<f64>,
    g: &ArrayD<f64>,
) -> [ArrayD<f64>; 3] {
    path.run(|| {
        let tape = Tape::new();
        let (ta, tb) = (tape.leaf("a", a.clone()), tape.leaf("b", b.clone()));
        let c = ta.matmul(&tb).unwrap();
        let grads = c.backward_with(g.clone()).unwrap();
        [
            c.value().clone(),
            grads.get(&ta).unwrap().clone(),
            grads.get(&tb).unwrap().clone(),
        ]
    })
}

/// `2 γ_k |x| |y|` elementwise: how far two summation orders of `x · y` may be apart.
fn reassociation_bound(x: &Array2<f64>, y: &Array2<f64>) -> Array2<f64> {
    let k = x.ncols() as f64;
    let gamma = k * f64::EPSILON / (1.0 - k * f64::EPSILON);
    x.mapv(f64::abs).dot(&y.mapv(f64::abs)) * (2.0 * gamma)
}

fn matrix(a: &ArrayD<f64>) -> Array2<f64> {
    a.clone().into_dimensionality::<Ix2>().unwrap()
}

/// Shapes on both sides of the size where products split over threads (2^19 multiply-adds).
fn product_case() -> impl Strategy<Value = (ArrayD<f64>, ArrayD<f64>, ArrayD<f64>)> {
    prop_oneof![
        4 => (1..40usize, 1..40usize, 1..40usize),
        1 => (100..140usize, 60..90usize, 60..70usize),
    ]
    .prop_flat_map(|(m, k, n)| {
        (
            arrays::<f64>(vec![m, k], -2.0..2.0),
            arrays::<f64>(vec![k, n], -2.0..2.0),
            arrays::<f64>(vec![m, n], -2.0..2.0),
        )
    })
}

proptest! {
    #![proptest_config(tapegrad::testing::config(64))]

    /// `matmul` and both of its VJP products on every path, against the portable path.
    #[test]
    fn products_on_every_path_equal_the_portable_ones((a, b, g) in product_case()) {
        let reference = products(KernelPath::Portable, &a, &b, &g);
        let (am, bm, gm) = (matrix(&a), matrix(&b), matrix(&g));
        let bounds = [
            reassociation_bound(&am, &bm),
            reassociation_bound(&gm, &bm.t().to_owned()),
            reassociation_bound(&am.t().to_owned(), &gm),
        ];
        for path in paths() {
            let got = products(path, &a, &b, &g);
            for (what, ((got, want), bound)) in ["a·b", "g·bᵀ", "aᵀ·g"].iter().zip(got.iter().zip(&reference).zip(&bounds)) {
                for ((x, y), e) in got.iter().zip(want.iter()).zip(bound.iter()) {
                    prop_assert!((x - y).abs() <= *e, "{path:?} {what}: {x} against portable {y} (bound {e})");
                }
            }
        }
    }

    /// A training step of an MLP with BatchNorm (fused: BatchNorm + ReLU, `linear`, the fused
    /// loss): logits, the loss's gradients and the new statistics on every path, against the
    /// portable path.
    #[test]
    fn a_training_step_on_every_path_equals_the_portable_one(
        case in mlp_case().prop_filter("with BatchNorm", |case| case.batch_norm.is_some()),
    ) {
        let (model, variables, x) = (case.model(), case.variables(), case.input::<f64>());
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        let step = |path: KernelPath| path.run(|| {
            value_and_grad_with_aux(variables.params(), |p| {
                let (logits, updates) = model.apply_tracked(p, &variables, &x, &train)?;
                Ok((softmax_cross_entropy(&logits, &case.labels)?, updates))
            }).unwrap()
        });
        let (loss, updates, grads) = step(KernelPath::Portable);
        let scale = grads.iter().flat_map(|(_, g)| g.iter()).fold(1.0f64, |m, v| m.max(v.abs()));
        for path in paths() {
            let (other_loss, other_updates, other_grads) = step(path);
            prop_assert!((other_loss - loss).abs() <= 1e-9 * loss.abs().max(1.0), "{path:?}: loss {other_loss} against {loss}");
            for (name, g) in grads.iter() {
                let other = other_grads.get(name).unwrap();
                prop_assert!(g.iter().zip(other).all(|(u, v)| (u - v).abs() <= 1e-9 * scale), "{path:?}: gradient of {name}");
            }
            for name in updates.collection_names() {
                for (var, value) in updates.collection(name).unwrap().iter() {
                    let other = other_updates.get(&format!("{name}/{var}")).unwrap();
                    prop_assert!(value.iter().zip(other).all(|(u, v)| (u - v).abs() <= 1e-9 * u.abs().max(1.0)), "{path:?}: {name}/{var}");
                }
            }
        }
    }
}

/// f32 products on the fastest path against the same products in f64: the error of a
/// float32 product, not of the path (the f32 kernels are the speed; f64 is the reference).
#[test]
fn f32_products_on_the_detected_path_are_f64_products_rounded() {
    let (m, k, n) = (130, 200, 70);
    let a64 = ArrayD::from_shape_fn(vec![m, k], |i| ((i[0] * 7 + i[1] * 3) as f64 * 0.37).sin());
    let b64 = ArrayD::from_shape_fn(vec![k, n], |i| ((i[0] * 5 + i[1]) as f64 * 0.61).cos());
    let c64 = matrix(&a64).dot(&matrix(&b64));
    // |a| |b|: the scale of each element's rounding.
    let magnitude = matrix(&a64)
        .mapv(f64::abs)
        .dot(&matrix(&b64).mapv(f64::abs));
    let tape = Tape::<f32>::new();
    let a32 = tape.leaf("a", a64.mapv(|v| v as f32));
    let b32 = tape.leaf("b", b64.mapv(|v| v as f32));
    let c32 = KernelPath::detected().run(|| a32.matmul(&b32).unwrap());
    // The inputs rounded to f32 (ε₃₂/2 relative each, so ε₃₂ on each term) and an f32 sum of
    // k terms (γ_k in ε₃₂): together at most (γ_k + ε₃₂) |a| |b| from the exact product, of
    // which the f64 product is a far closer copy.
    let eps = f64::from(f32::EPSILON);
    let allowed_factor = k as f64 * eps / (1.0 - k as f64 * eps) + eps;
    for ((x, y), size) in c32.value().iter().zip(c64.iter()).zip(magnitude.iter()) {
        let allowed = allowed_factor * size;
        assert!(
            (f64::from(*x) - y).abs() <= allowed,
            "{x} against {y} (allowed {allowed})"
        );
    }
}
