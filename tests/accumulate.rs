//! Gradient accumulation updates the running statistics exactly as its policy says (design.md,
//! invariant 12): merged per step, they are those of one batch of `kB` (to 1e-12, under
//! Flax's and PyTorch's conventions, with fusion on and off); per micro-batch, those of `k`
//! steps in turn, bit for bit. The gradient is the mean of the micro-batches' gradients.

use ndarray::{ArrayD, s};
use tapegrad::accumulate::{StatsPolicy, accumulate};
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::{
    ApplyOptions, Fusion, ModuleExt, Mutable, Tensor, Variables, softmax_cross_entropy,
    value_and_grad_with_aux,
};

const LABELS: [usize; 12] = [0, 1, 2, 0, 2, 1, 1, 0, 2, 2, 0, 1];

/// A batch of 12 rows whose micro-batches differ in mean and spread (so that merging by
/// count, not averaging variances, is what matches the whole batch).
fn batch() -> ArrayD<f64> {
    ArrayD::from_shape_fn(vec![12, 3], |i| {
        let (r, c) = (i[0] as f64, i[1] as f64);
        (r * 0.7 + c).sin() * (1.0 + r / 4.0) + r / 3.0
    })
}

/// An MLP with one hidden layer and its BatchNorm: the layer whose input no normalisation
/// has touched, so that one batch of `kB` and `k` ghost batches feed it the same values.
fn model(batch_norm: BatchNorm) -> Mlp {
    Mlp::new(&[5], 3).with_batch_norm(batch_norm)
}

/// Rows `i·n .. (i+1)·n` of `x`.
fn micro(x: &ArrayD<f64>, i: usize, n: usize) -> Tensor<f64> {
    Tensor::constant(x.slice(s![i * n..(i + 1) * n, ..]).to_owned())
}

/// One accumulated step of `k` micro-batches: the step's outcome.
fn accumulated(
    model: &Mlp,
    variables: &Variables<f64>,
    x: &ArrayD<f64>,
    k: usize,
    policy: StatsPolicy,
) -> tapegrad::accumulate::Accumulated<f64> {
    let n = x.shape()[0] / k;
    accumulate(variables, k, policy, |i, p, vars, options| {
        let (logits, updates) = model.apply_tracked(p, vars, &micro(x, i, n), options)?;
        Ok((
            softmax_cross_entropy(&logits, &LABELS[i * n..(i + 1) * n])?,
            updates,
        ))
    })
    .unwrap()
}

/// The largest difference between the running statistics of two variables.
fn stats_gap(a: &Variables<f64>, b: &Variables<f64>) -> f64 {
    let (a, b) = (
        a.collection("batch_stats").unwrap(),
        b.collection("batch_stats").unwrap(),
    );
    assert!(a.paths().eq(b.paths()));
    a.iter()
        .map(|(path, x)| {
            let y = b.get(path).unwrap();
            x.iter()
                .zip(y)
                .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        })
        .fold(0.0, f64::max)
}

#[test]
fn merged_per_step_the_running_statistics_are_those_of_the_whole_batch() {
    let x = batch();
    for batch_norm in [
        BatchNorm::new().momentum(0.8),
        BatchNorm::pytorch(Some(0.1)),
        BatchNorm::pytorch(None),
    ] {
        for fusion in [Fusion::On, Fusion::Off] {
            fusion.run(|| {
                let model = model(batch_norm.clone());
                let variables = model.init(0, &Tensor::constant(&x)).unwrap();
                let expected = after_one_whole_batch_step(&model, &variables, &x);
                for k in [2, 3, 4] {
                    let step = accumulated(&model, &variables, &x, k, StatsPolicy::MergedPerStep);
                    let mut got = variables.clone();
                    got.merge(step.updates).unwrap();
                    let gap = stats_gap(&got, &expected);
                    assert!(gap < 1e-12, "{batch_norm:?}, {fusion:?}, k = {k}: {gap:e}");
                    // Moments are reported, never kept.
                    assert!(got.collection(tapegrad::nn::BATCH_MOMENTS).is_none());
                }
            });
        }
    }
}

#[test]
fn per_micro_batch_the_running_statistics_are_k_steps_in_turn() {
    let x = batch();
    let model = model(BatchNorm::new().momentum(0.8));
    let variables = model.init(0, &Tensor::constant(&x)).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let mut in_turn = variables.clone();
    for i in 0..3 {
        let (_, updates) = model.apply(&in_turn, &micro(&x, i, 4), &train).unwrap();
        in_turn.merge(updates).unwrap();
    }
    let step = accumulated(&model, &variables, &x, 3, StatsPolicy::PerMicroBatch);
    let mut got = variables.clone();
    got.merge(step.updates).unwrap();
    assert_eq!(got, in_turn, "bit for bit");
    // And they are not the whole batch's: that is the other policy.
    let (_, whole) = model
        .apply(&variables, &Tensor::constant(&x), &train)
        .unwrap();
    let mut expected = variables.clone();
    expected.merge(whole).unwrap();
    assert!(stats_gap(&got, &expected) > 1e-3);
}

/// The gradient is the mean of the micro-batches' gradients (each normalised with its own
/// statistics: ghost batch normalisation), and so not the whole batch's.
#[test]
fn the_gradient_is_the_mean_of_the_micro_batches_gradients() {
    let x = batch();
    let model = model(BatchNorm::new().momentum(0.8));
    let variables = model.init(0, &Tensor::constant(&x)).unwrap();
    let step = accumulated(&model, &variables, &x, 2, StatsPolicy::MergedPerStep);
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let gradient_of = |rows: Tensor<f64>, labels: &[usize]| {
        value_and_grad_with_aux(variables.params(), |p| {
            let (logits, updates) = model.apply_tracked(p, &variables, &rows, &train)?;
            Ok((softmax_cross_entropy(&logits, labels)?, updates))
        })
        .unwrap()
    };
    let (first, _, g0) = gradient_of(micro(&x, 0, 6), &LABELS[..6]);
    let (second, _, g1) = gradient_of(micro(&x, 1, 6), &LABELS[6..]);
    assert!((step.loss - (first + second) / 2.0).abs() < 1e-12);
    let mean = g0.add(&g1).unwrap().scale(0.5);
    for (path, g) in step.grads.iter() {
        let expected = mean.get(path).unwrap();
        let gap = g
            .iter()
            .zip(expected)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(gap < 1e-12, "{path}: {gap:e}");
    }
    let (_, _, whole) = gradient_of(Tensor::constant(&x), &LABELS);
    let kernel = |g: &tapegrad::Grads<f64>| g.get("Dense_0/kernel").unwrap().clone();
    let gap = (kernel(&step.grads) - kernel(&whole))
        .mapv(f64::abs)
        .fold(0.0, |m: f64, v| m.max(*v));
    assert!(gap > 1e-6, "ghost batches normalise apart: {gap:e}");
    assert_eq!(
        step.grads.paths().count(),
        variables.params().paths().count()
    );
}

/// Bad input is an error naming what, and nothing changes: no micro-batch at all, and a
/// micro-batch of one row, which has no batch variance.
#[test]
fn no_micro_batch_or_a_micro_batch_of_one_is_an_error() {
    let x = batch();
    let model = model(BatchNorm::new());
    let variables = model.init(0, &Tensor::constant(&x)).unwrap();
    let before = variables.clone();
    let err = accumulate(&variables, 0, StatsPolicy::MergedPerStep, |_, _, _, _| {
        unreachable!("no micro-batch runs")
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("accumulate") && err.contains("micro-batches"),
        "{err}"
    );
    for policy in [StatsPolicy::PerMicroBatch, StatsPolicy::MergedPerStep] {
        let err = accumulate(&variables, 12, policy, |i, p, vars, options| {
            let (logits, updates) = model.apply_tracked(p, vars, &micro(&x, i, 1), options)?;
            Ok((softmax_cross_entropy(&logits, &LABELS[i..i + 1])?, updates))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("BatchNorm") && err.contains("more than 1 value"),
            "{err}"
        );
    }
    assert_eq!(variables, before);
}

/// The largest difference between the running statistics of the layers under `prefix`.
fn stats_gap_of(a: &Variables<f64>, b: &Variables<f64>, prefix: &str) -> f64 {
    let subtree = |v: &Variables<f64>| v.subtree(prefix);
    stats_gap(&subtree(a), &subtree(b))
}

/// With BatchNorms one after another, the first's statistics are the whole batch's; a later
/// one's input depends on how the earlier one normalised (each micro-batch with its own
/// statistics), so its merged statistics are those of what it saw, not the whole batch's.
#[test]
fn merged_per_step_a_first_batch_norm_matches_the_whole_batch_in_a_deeper_model() {
    let x = batch();
    let model = Mlp::new(&[5, 4], 3).with_batch_norm(BatchNorm::new().momentum(0.8));
    let variables = model.init(0, &Tensor::constant(&x)).unwrap();
    let expected = after_one_whole_batch_step(&model, &variables, &x);
    let n = 4;
    let step = accumulate(
        &variables,
        3,
        StatsPolicy::MergedPerStep,
        |i, p, vars, options| {
            let (logits, updates) = model.apply_tracked(p, vars, &micro(&x, i, n), options)?;
            Ok((
                softmax_cross_entropy(&logits, &LABELS[i * n..(i + 1) * n])?,
                updates,
            ))
        },
    )
    .unwrap();
    let mut got = variables.clone();
    got.merge(step.updates).unwrap();
    assert!(stats_gap_of(&got, &expected, "BatchNorm_0") < 1e-12);
    assert!(stats_gap_of(&got, &expected, "BatchNorm_1") > 1e-6);
}

/// Two forwards, one update: a step that runs the model twice (SAM's forward at perturbed
/// weights, a gradient penalty's extra forward) merges the statistics of the forward it
/// names and drops the other's: the running statistics are those of one forward at the
/// step's weights, bit for bit.
#[test]
fn a_step_with_two_forwards_merges_the_statistics_of_the_one_it_names() {
    let x = Tensor::constant(batch());
    let model = model(BatchNorm::new().momentum(0.8));
    let variables = model.init(0, &x).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let loss_at = |params: &tapegrad::Params<f64>| {
        value_and_grad_with_aux(params, |p| {
            let (logits, updates) = model.apply_tracked(p, &variables, &x, &train)?;
            Ok((softmax_cross_entropy(&logits, &LABELS)?, updates))
        })
        .unwrap()
    };
    // SAM: the gradient at w, then the gradient at w + ρ g/|g|, which the step uses.
    let (_, first_updates, g) = loss_at(variables.params());
    let rho = 0.05 / g.global_norm();
    let mut perturbed = variables.params().clone();
    for (path, gradient) in g.iter() {
        let w = perturbed.get(path).unwrap() + &(gradient * rho);
        perturbed.insert(path, w);
    }
    let (_, second_updates, sharp) = loss_at(&perturbed);
    let mut stepped = variables.clone();
    tapegrad::optim::Optimizer::update(
        &mut tapegrad::optim::Sgd::new(0.1),
        stepped.params_mut(),
        &sharp,
    )
    .unwrap();
    stepped.merge(first_updates.clone()).unwrap(); // the forward at w, named; not the other
    let mut once = variables.clone();
    once.merge(first_updates).unwrap();
    assert_eq!(
        stepped.collection("batch_stats"),
        once.collection("batch_stats")
    );
    let mut wrong = variables.clone();
    wrong.merge(second_updates).unwrap();
    assert_ne!(
        wrong.collection("batch_stats"),
        once.collection("batch_stats")
    );
}

/// The variables after one training forward on the whole batch `x`, its statistics merged:
/// what an accumulated step's merged statistics must reproduce.
fn after_one_whole_batch_step(
    model: &Mlp,
    variables: &Variables<f64>,
    x: &ArrayD<f64>,
) -> Variables<f64> {
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let (_, whole) = model
        .apply(variables, &Tensor::constant(x), &train)
        .unwrap();
    let mut expected = variables.clone();
    expected.merge(whole).unwrap();
    expected
}
