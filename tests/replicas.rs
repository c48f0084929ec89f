//! Design invariant 10, replicas agree: R in-process replicas with cross-replica BatchNorm
//! compute what one replica computes on the concatenated batch (loss, gradients, new
//! batch_stats, params and optimizer state after an SGD-momentum step, f64, within 1e-12),
//! and their buffers, params and optimizer state are bit-identical after every step. Without
//! cross-replica statistics, each replica normalises with its own shard, and averaging the
//! running statistics keeps the replicas identical. Replicas that disagree all get an error,
//! and nothing is applied.

use std::sync::Arc;

use ndarray::{ArrayD, Axis};
use proptest::prelude::*;
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::replicas::{
    Communicator, InProcess, ReduceOp, ReplicaAxis, mean_collection, mean_grads,
};
use tapegrad::{
    ApplyOptions, Error, Grads, ModuleExt, Mutable, Tensor, Variables, softmax_cross_entropy,
    testing, value_and_grad_with_aux,
};

const CLASSES: usize = 3;

fn model(cross_replica: bool) -> Mlp {
    let norm = BatchNorm::new().momentum(0.8);
    let norm = if cross_replica {
        norm.axis_name("batch")
    } else {
        norm
    };
    Mlp::new(&[5], CLASSES).with_batch_norm(norm)
}

/// What one replica ends a step with.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    loss: f64,
    grads: Grads<f64>,
    variables: Variables<f64>,
    velocities: Vec<ArrayD<f64>>,
}

/// One SGD-momentum step of `model` on rows `x` with `labels`, as a replica of `axis` (or
/// alone), with gradients averaged over the replicas.
fn step(
    model: &Mlp,
    variables: &Variables<f64>,
    x: &ArrayD<f64>,
    labels: &[usize],
    communicator: &Arc<dyn Communicator>,
    axis: Option<ReplicaAxis>,
) -> tapegrad::Result<Outcome> {
    let mut options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    if let Some(axis) = axis {
        options = options.replica_axis(axis);
    }
    let x = Tensor::constant(x);
    let (loss, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
        let (logits, updates) = model.apply_tracked(p, variables, &x, &options)?;
        Ok((softmax_cross_entropy(&logits, labels)?, updates))
    })?;
    let mut optimizer = Sgd::new(0.1).momentum(0.9);
    let grads = mean_grads(&**communicator, &grads, optimizer.steps())?;
    let mut loss_mean = [loss / communicator.size() as f64];
    communicator.all_reduce(&mut loss_mean, ReduceOp::Sum)?;
    let mut after = variables.clone();
    optimizer.update(after.params_mut(), &grads)?;
    after.merge(updates)?;
    let velocities = grads
        .paths()
        .map(|p| optimizer.velocity(p).unwrap().clone())
        .collect();
    Ok(Outcome {
        loss: loss_mean[0],
        grads,
        variables: after,
        velocities,
    })
}

/// Every replica's outcome, replica `r` given rows `r·k .. (r+1)·k`.
fn replicated(
    model: &Mlp,
    variables: &Variables<f64>,
    x: &ArrayD<f64>,
    labels: &[usize],
    replicas: usize,
    cross_replica: bool,
) -> Vec<tapegrad::Result<Outcome>> {
    let rows = x.shape()[0] / replicas;
    std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group(replicas)
            .into_iter()
            .enumerate()
            .map(|(r, communicator)| {
                let shard = x
                    .slice_axis(Axis(0), (r * rows..(r + 1) * rows).into())
                    .to_owned();
                let shard_labels = &labels[r * rows..(r + 1) * rows];
                s.spawn(move || {
                    let axis =
                        cross_replica.then(|| ReplicaAxis::new("batch", Arc::clone(&communicator)));
                    step(model, variables, &shard, shard_labels, &communicator, axis)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn worst(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

fn close(a: &Outcome, b: &Outcome) -> Result<(), String> {
    let mut worst_seen = ((a.loss - b.loss) / b.loss.abs().max(1.0)).abs();
    for ((_, x), (_, y)) in a.grads.iter().zip(b.grads.iter()) {
        worst_seen = worst_seen.max(worst(x, y));
    }
    for ((_, x), (_, y)) in a.variables.iter().zip(b.variables.iter()) {
        worst_seen = worst_seen.max(worst(x, y));
    }
    for (x, y) in a.velocities.iter().zip(&b.velocities) {
        worst_seen = worst_seen.max(worst(x, y));
    }
    if worst_seen <= 1e-12 {
        Ok(())
    } else {
        Err(format!("worst scaled difference {worst_seen:e}"))
    }
}

/// A batch of `replicas · rows` rows of 4 features, labels, and initial variables.
fn case() -> impl Strategy<Value = (usize, ArrayD<f64>, Vec<usize>, u64)> {
    (1usize..=4, 2usize..=3).prop_flat_map(|(replicas, rows)| {
        let n = replicas * rows;
        (
            Just(replicas),
            proptest::collection::vec(-3.0..3.0f64, n * 4)
                .prop_map(move |v| ArrayD::from_shape_vec(vec![n, 4], v).unwrap()),
            proptest::collection::vec(0..CLASSES, n),
            any::<u64>(),
        )
    })
}

proptest! {
    #![proptest_config(testing::config(24))]

    #[test]
    fn cross_replica_batch_norm_computes_what_one_replica_computes((replicas, x, labels, seed) in case()) {
        let model = model(true);
        let variables = model.init(seed, &Tensor::constant(&x)).unwrap();
        let single = InProcess::group(1).remove(0);
        let axis = ReplicaAxis::new("batch", Arc::clone(&single));
        let alone = step(&model, &variables, &x, &labels, &single, Some(axis)).unwrap();
        // And the same without any axis: the plain single-replica BatchNorm.
        let plain = step(&self::model(false), &variables, &x, &labels, &single, None).unwrap();
        prop_assert!(close(&alone, &plain).is_ok(), "{:?}", close(&alone, &plain));

        let outcomes: Vec<Outcome> = replicated(&model, &variables, &x, &labels, replicas, true)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for outcome in &outcomes {
            prop_assert!(close(outcome, &plain).is_ok(), "R = {}: {:?}", replicas, close(outcome, &plain));
            // Bit-identical across replicas: the same reductions, the same update.
            prop_assert_eq!(outcome, &outcomes[0]);
        }
    }

    #[test]
    fn per_replica_statistics_are_each_shards_and_averaging_keeps_replicas_identical(
        (replicas, x, labels, seed) in case()
    ) {
        let model = model(false);
        let variables = model.init(seed, &Tensor::constant(&x)).unwrap();
        let rows = x.shape()[0] / replicas;
        let outcomes: Vec<Outcome> = replicated(&model, &variables, &x, &labels, replicas, false)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // Each replica's running statistics are those of its own shard alone.
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        let mut expected_mean = ArrayD::<f64>::zeros(vec![5]);
        for (r, outcome) in outcomes.iter().enumerate() {
            let shard = Tensor::constant(x.slice_axis(Axis(0), (r * rows..(r + 1) * rows).into()));
            let (_, own) = model.apply(&variables, &shard, &train).unwrap();
            let own_mean = own.get("batch_stats/BatchNorm_0/mean").unwrap();
            let got = outcome.variables.get("batch_stats/BatchNorm_0/mean").unwrap();
            prop_assert!(worst(got, own_mean) <= 1e-12);
            expected_mean = expected_mean + own_mean / replicas as f64;
        }
        // Averaged over the replicas, the running statistics become bit-identical.
        let averaged: Vec<Variables<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = InProcess::group(replicas)
                .into_iter()
                .zip(&outcomes)
                .map(|(communicator, outcome)| {
                    let mut mine = outcome.variables.clone();
                    s.spawn(move || {
                        mean_collection(&*communicator, &mut mine, "batch_stats").map(|()| mine)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        for replica in &averaged {
            prop_assert_eq!(replica, &averaged[0]);
            let mean = replica.get("batch_stats/BatchNorm_0/mean").unwrap();
            prop_assert!(worst(mean, &expected_mean) <= 1e-12);
        }
    }
}

#[test]
fn replicas_that_disagree_all_get_the_error_and_nothing_is_applied() {
    let x = ArrayD::from_shape_fn(vec![4, 4], |i| (i[0] * 4 + i[1]) as f64 * 0.1 - 0.7);
    let labels = [0, 1, 2, 0];
    let variables = model(true).init(0, &Tensor::constant(&x)).unwrap();
    // Replica 1 has a wider hidden layer: other param shapes.
    let results: Vec<tapegrad::Result<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group(2)
            .into_iter()
            .enumerate()
            .map(|(r, communicator)| {
                let (x, labels) = (&x, &labels);
                s.spawn(move || {
                    let model = if r == 0 {
                        model(false)
                    } else {
                        Mlp::new(&[6], CLASSES)
                    };
                    let variables = model.init(0, &Tensor::constant(x)).unwrap();
                    step(&model, &variables, x, labels, &communicator, None)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in &results {
        assert!(
            matches!(
                result,
                Err(Error::ReplicasDisagree {
                    op: "mean_grads",
                    ..
                })
            ),
            "{result:?}"
        );
    }
    // A cross-replica BatchNorm without the axis it names is an error naming both.
    let err = model(true)
        .apply(
            &variables,
            &Tensor::constant(&x),
            &ApplyOptions::train().mutable(Mutable::all()),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingReplicaAxis { axis, path } if axis == "batch" && path == "BatchNorm_0"),
        "{err}"
    );
}

#[test]
fn step_counts_that_differ_are_refused_on_every_replica() {
    let results: Vec<tapegrad::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group(3)
            .into_iter()
            .map(|communicator| {
                s.spawn(move || {
                    let steps = if communicator.rank() == 2 { 8 } else { 7 };
                    let grads = Grads::<f64>::default();
                    mean_grads(&*communicator, &grads, steps).map(|_| ())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        let err = result.unwrap_err();
        assert!(err.to_string().contains("step counts from 7 to 8"), "{err}");
    }
}
