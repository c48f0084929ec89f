//! Gradients can be transformed (accumulated, scaled, clipped) without leaving `Grads`'
//! invariant, and the learning-rate schedules PyTorch and optax users expect.

use approx::assert_abs_diff_eq;
use ndarray::{ArrayD, arr1};
use proptest::prelude::*;
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::LearningRate;
use tapegrad::testing::{arrays, mlp_case};
use tapegrad::{
    ApplyOptions, Grads, ModuleExt, Mutable, Params, Tensor, softmax_cross_entropy, value_and_grad,
};

fn rows(x: &ArrayD<f64>, from: usize, to: usize) -> Tensor<f64> {
    Tensor::constant(x.slice_axis(ndarray::Axis(0), (from..to).into()).to_owned())
}

proptest! {
    #![proptest_config(tapegrad::testing::config(64))]

    /// K micro-batches of b rows, their gradients added and scaled by 1/K, equal the
    /// gradient of the K·b rows at once (a mean loss is a mean of means of equal parts), to
    /// 1e-12 in f64. Without BatchNorm only: with it, each micro-batch is normalised with its
    /// own statistics, a different function of the data (as in PyTorch, where gradient
    /// accumulation with BatchNorm is not equivalent to a larger batch either).
    #[test]
    fn accumulated_micro_batches_equal_one_batch_without_batch_norm(
        (case, k) in (mlp_case().prop_filter("no BatchNorm", |c| c.batch_norm.is_none()), 1..=3usize),
    ) {
        let model = case.model();
        let variables = case.variables();
        // The case's rows repeated k times with a small shift per copy: k · b distinct rows.
        let b = case.x.shape()[0];
        let copies: Vec<ArrayD<f64>> = (0..k).map(|i| &case.x + 0.01 * i as f64).collect();
        let views: Vec<_> = copies.iter().map(|a| a.view()).collect();
        let x = ndarray::concatenate(ndarray::Axis(0), &views).unwrap();
        let labels: Vec<usize> = (0..k).flat_map(|_| case.labels.iter().copied()).collect();
        let loss = |x: &Tensor<f64>, labels: &[usize]| {
            value_and_grad(variables.params(), |p| {
                let (logits, _) = model.apply_tracked(p, &variables, x, &ApplyOptions::eval())?;
                softmax_cross_entropy(&logits, labels)
            }).unwrap().1
        };
        let whole = loss(&Tensor::constant(x.clone()), &labels);
        let mut total = Grads::zeros_like(variables.params());
        for i in 0..k {
            total = total.add(&loss(&rows(&x, i * b, (i + 1) * b), &labels[i * b..(i + 1) * b]))?;
        }
        let mean = total.scale(1.0 / k as f64);
        prop_assert_eq!(mean.paths().collect::<Vec<_>>(), whole.paths().collect::<Vec<_>>());
        for (path, g) in mean.iter() {
            let reference = whole.get(path).unwrap();
            for (a, r) in g.iter().zip(reference) {
                prop_assert!((a - r).abs() <= 1e-12 * r.abs().max(1.0), "{path}: {a} vs {r}");
            }
        }
    }

    /// Clipping by global norm: the result's norm is min(norm, max_norm), and the direction
    /// is kept; clipping by value bounds every element.
    #[test]
    fn clipping_bounds_the_norm_and_the_values(
        a in arrays::<f64>(vec![3], -5.0..5.0),
        b in arrays::<f64>(vec![2, 2], -5.0..5.0),
        max_norm in 0.1..10.0f64,
        limit in 0.1..3.0f64,
    ) {
        let params: Params<f64> = [("a".to_string(), a.clone()), ("b".to_string(), b.clone())].into_iter().collect();
        let grads = Grads::zeros_like(&params).map(|path, _| params.get(path).unwrap().clone())?;
        let norm = grads.global_norm();
        let clipped = grads.clip_by_global_norm(max_norm)?;
        assert_abs_diff_eq!(clipped.global_norm(), norm.min(max_norm), epsilon = 1e-12);
        let ratio = clipped.get("a").unwrap()[[0]] / a[[0]];
        for (x, y) in clipped.get("b").unwrap().iter().zip(&b) {
            prop_assert!((x - ratio * y).abs() < 1e-12);
        }
        let capped = grads.clip_by_value(limit)?;
        prop_assert!(capped.iter().all(|(_, g)| g.iter().all(|x| x.abs() <= limit)));
        prop_assert_eq!(capped.paths().collect::<Vec<_>>(), vec!["a", "b"]);
    }
}

#[test]
fn with_batch_norm_micro_batches_differ_from_the_whole_batch() {
    // The documented difference, shown: two halves normalised apart are another function.
    let model = Mlp::new(&[4], 2).with_batch_norm(BatchNorm::new());
    let x = Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0]).unwrap();
    let variables = model.init(0, &x).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let grads = |x: &Tensor<f64>, labels: &[usize]| {
        value_and_grad(variables.params(), |p| {
            let (logits, _) = model.apply_tracked(p, &variables, x, &train)?;
            softmax_cross_entropy(&logits, labels)
        })
        .unwrap()
        .1
    };
    let whole = grads(&x, &[0, 1, 1, 0]);
    let halves = grads(&rows(x.value(), 0, 2), &[0, 1])
        .add(&grads(&rows(x.value(), 2, 4), &[1, 0]))
        .unwrap()
        .scale(0.5);
    let kernel = |g: &Grads<f64>| g.get("Dense_0/kernel").unwrap().clone();
    assert!(
        (kernel(&whole) - kernel(&halves))
            .iter()
            .any(|d| d.abs() > 1e-6)
    );
}

#[test]
fn a_transform_that_changes_a_shape_is_an_error() {
    let params: Params<f64> = [("w".to_string(), arr1(&[1.0, 2.0]).into_dyn())]
        .into_iter()
        .collect();
    let grads = Grads::zeros_like(&params);
    let err = grads
        .map(|_, g| g.slice(ndarray::s![..1]).to_owned().into_dyn())
        .unwrap_err();
    assert!(
        err.to_string().contains("Grads::map") && err.to_string().contains("\"w\""),
        "{err}"
    );
    let other: Params<f64> = [("v".to_string(), arr1(&[1.0]).into_dyn())]
        .into_iter()
        .collect();
    assert!(grads.add(&Grads::zeros_like(&other)).is_err());
}

#[test]
fn schedules_follow_their_formulas() {
    let exponential = LearningRate::Exponential {
        initial: 0.5,
        gamma: 0.9,
    };
    assert_abs_diff_eq!(exponential.at(3), 0.5 * 0.9f64.powi(3), epsilon = 1e-15);
    let multi = LearningRate::MultiStep {
        initial: 1.0,
        gamma: 0.5,
        milestones: vec![2, 4, 4],
    };
    let rates: Vec<f64> = (0..6).map(|s| multi.at(s)).collect();
    // A repeated milestone applies gamma twice (PyTorch's MultiStepLR counts them too).
    assert_eq!(rates, [1.0, 1.0, 0.5, 0.5, 0.125, 0.125]);
    let warm = LearningRate::WarmupCosine {
        peak: 2.0,
        warmup: 4,
        steps: 14,
        final_value: 0.2,
    };
    assert_eq!(warm.at(0), 0.0);
    assert_eq!(warm.at(2), 1.0);
    assert_eq!(warm.at(4), 2.0);
    assert_abs_diff_eq!(warm.at(9), 0.2 + 1.8 * 0.5, epsilon = 1e-12); // half way down
    assert_abs_diff_eq!(warm.at(14), 0.2, epsilon = 1e-15);
    assert_abs_diff_eq!(warm.at(1000), 0.2, epsilon = 1e-15);
    // Past its steps the cosine stays at its final value (optax), where PyTorch's
    // CosineAnnealingLR would climb back: at 1.5 T it would be half way up again.
    let cosine = LearningRate::Cosine {
        initial: 1.0,
        final_value: 0.0,
        steps: 10,
    };
    assert_eq!(cosine.at(15), 0.0);
    assert_eq!(cosine.at(20), 0.0);
}

#[test]
fn a_clipping_bound_that_means_nothing_is_refused_naming_it() {
    let params: Params<f64> = [("a".to_string(), arr1(&[3.0, -4.0]).into_dyn())]
        .into_iter()
        .collect();
    let grads = Grads::zeros_like(&params)
        .map(|path, _| params.get(path).unwrap().clone())
        .unwrap();
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let err = grads.clip_by_global_norm(bad).unwrap_err().to_string();
        assert!(
            err.contains("clip_by_global_norm") && err.contains("max_norm"),
            "{err}"
        );
        let err = grads.clip_by_value(bad).unwrap_err().to_string();
        assert!(
            err.contains("clip_by_value") && err.contains("limit"),
            "{err}"
        );
    }
    // A bound of 0 is a setting that means something: every gradient becomes 0.
    assert_eq!(grads.clip_by_global_norm(0.0).unwrap().global_norm(), 0.0);
}
