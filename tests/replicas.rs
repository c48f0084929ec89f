//! Design invariant 10, replicas agree: R in-process replicas with cross-replica BatchNorm
//! compute what one replica computes on the concatenated batch (loss, gradients, new
//! batch_stats, params and optimizer state after an SGD-momentum step, f64, within 1e-12),
//! and their buffers, params and optimizer state are bit-identical after every step. Without
//! cross-replica statistics, each replica normalises with its own shard, and averaging the
//! running statistics keeps the replicas identical. Replicas that disagree all get an error,
//! and nothing is applied.

use std::rc::Rc;

use ndarray::{ArrayD, Axis};
use proptest::prelude::*;
use tapegrad::nn::Mlp;
use tapegrad::replicas::{Communicator, InProcess, ReplicaAxis, mean_collection, mean_grads};
use tapegrad::{ApplyOptions, Error, Grads, ModuleExt, Mutable, Tensor, Variables, testing};

mod support;
use support::{CLASSES, Outcome, close, model, model_of, step, worst};

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
    on_replicas(replicas, |r, communicator| {
        let shard = x
            .slice_axis(Axis(0), (r * rows..(r + 1) * rows).into())
            .to_owned();
        let axis = cross_replica.then(|| ReplicaAxis::new("batch", Rc::clone(&communicator)));
        step(
            model,
            variables,
            &shard,
            &labels[r * rows..(r + 1) * rows],
            &communicator,
            axis,
        )
    })
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
    fn cross_replica_batch_norm_computes_what_one_replica_computes(
        (replicas, x, labels, seed) in case(),
        hidden in proptest::collection::vec(2usize..=6, 1..=2),
    ) {
        let model = model_of(&hidden, true);
        let variables = model.init(seed, &Tensor::constant(&x)).unwrap();
        let single: Rc<dyn Communicator> = Rc::new(InProcess::group(1).remove(0));
        let axis = ReplicaAxis::new("batch", Rc::clone(&single));
        let alone = step(&model, &variables, &x, &labels, &single, Some(axis)).unwrap();
        // And the same without any axis: the plain single-replica BatchNorm.
        let plain = step(&model_of(&hidden, false), &variables, &x, &labels, &single, None).unwrap();
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
        let averaged = on_replicas(replicas, |r, communicator| {
            let mut mine = outcomes[r].variables.clone();
            mean_collection(&*communicator, &mut mine, "batch_stats").map(|()| mine)
        });
        let averaged: Vec<Variables<f64>> = averaged.into_iter().map(Result::unwrap).collect();
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
    let results = on_replicas(2, |r, communicator| {
        let model = if r == 0 {
            model(false)
        } else {
            Mlp::new(&[6], CLASSES)
        };
        let variables = model.init(0, &Tensor::constant(&x)).unwrap();
        step(&model, &variables, &x, &labels, &communicator, None)
    });
    assert_every_replica_refused(&results, "begin_step");
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
    let results = on_replicas(3, |r, communicator| {
        let steps = if r == 2 { 8 } else { 7 };
        mean_grads(&*communicator, &Grads::<f64>::default(), steps).map(|_| ())
    });
    for result in results {
        let err = result.unwrap_err();
        assert!(err.to_string().contains("step counts from 7 to 8"), "{err}");
    }
}

/// Every replica's result is [`Error::ReplicasDisagree`] from `op`.
fn assert_every_replica_refused<T: std::fmt::Debug>(results: &[tapegrad::Result<T>], op: &str) {
    for result in results {
        assert!(
            matches!(result, Err(Error::ReplicasDisagree { op: found, .. }) if *found == op),
            "{result:?}"
        );
    }
}

/// Runs `local(rank, communicator)` on `replicas` in-process replicas.
fn on_replicas<T: Send>(
    replicas: usize,
    local: impl Fn(usize, Rc<dyn Communicator>) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let local = &local;
        let handles: Vec<_> = InProcess::group(replicas)
            .into_iter()
            .enumerate()
            .map(|(r, replica)| s.spawn(move || local(r, Rc::new(replica))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_replica_with_another_shard_shape_fails_them_all_before_the_forward_pass() {
    let model = model(true);
    let x = ArrayD::from_shape_fn(vec![6, 4], |i| (i[0] + 2 * i[1]) as f64 * 0.3 - 1.0);
    let variables = model.init(0, &Tensor::constant(&x)).unwrap();
    let results = on_replicas(2, |r, communicator| {
        let rows = if r == 0 { 2 } else { 4 }; // unequal shards
        let shard = x.slice_axis(Axis(0), (0..rows).into()).to_owned();
        let axis = ReplicaAxis::new("batch", Rc::clone(&communicator));
        step(
            &model,
            &variables,
            &shard,
            &[0, 1, 2, 0][..rows],
            &communicator,
            Some(axis),
        )
    });
    assert_every_replica_refused(&results, "begin_step");
}

#[test]
fn a_replica_whose_loss_fails_fails_them_all_before_the_backward_pass() {
    let model = model(true);
    let x = ArrayD::from_shape_fn(vec![4, 4], |i| (i[0] * 3 + i[1]) as f64 * 0.2 - 1.0);
    let variables = model.init(0, &Tensor::constant(&x)).unwrap();
    let results = on_replicas(2, |r, communicator| {
        let shard = x.slice_axis(Axis(0), (2 * r..2 * r + 2).into()).to_owned();
        let labels = if r == 1 { [0, CLASSES] } else { [0, 1] }; // replica 1: a label out of range
        let axis = ReplicaAxis::new("batch", Rc::clone(&communicator));
        step(
            &model,
            &variables,
            &shard,
            &labels,
            &communicator,
            Some(axis),
        )
    });
    // Replica 1 gets its own error; replica 0 learns that another failed. Nobody hangs in
    // the cross-replica BatchNorm's backward reductions.
    assert!(
        matches!(results[0], Err(Error::ReplicasDisagree { op: "loss", .. })),
        "{:?}",
        results[0]
    );
    assert!(
        matches!(results[1], Err(Error::IndexOutOfRange { .. })),
        "{:?}",
        results[1]
    );
}

/// A replica that is gone before a reduction (it returned an error, or panicked) fails that
/// reduction on every other replica, naming it, instead of leaving them waiting for ever.
#[test]
fn a_replica_that_is_gone_fails_the_reductions_of_the_others() {
    use std::sync::mpsc;
    use std::time::Duration;
    for panics in [false, true] {
        let mut group = InProcess::group(3);
        let leaver = group.pop().unwrap();
        let (sender, receiver) = mpsc::channel();
        let stayers: Vec<_> = group
            .into_iter()
            .map(|replica| {
                let sender = sender.clone();
                std::thread::spawn(move || {
                    let mut values = [1.0, 2.0];
                    let first = replica.all_reduce(&mut values, tapegrad::replicas::ReduceOp::Sum);
                    let second = replica.all_reduce(&mut values, tapegrad::replicas::ReduceOp::Sum);
                    sender.send((first, second)).unwrap();
                })
            })
            .collect();
        let leaving = std::thread::spawn(move || {
            let mut values = [1.0, 2.0];
            leaver
                .all_reduce(&mut values, tapegrad::replicas::ReduceOp::Sum)
                .unwrap();
            assert_eq!(values, [3.0, 6.0], "the first reduction is a whole one");
            if panics {
                panic!("replica 2 panics before the second reduction");
            }
            drop(leaver); // returns, with an error of its own say
        });
        for _ in 0..2 {
            let (first, second) = receiver
                .recv_timeout(Duration::from_secs(10))
                .expect("a replica waited for ever");
            assert!(first.is_ok());
            // Replica 2, and perhaps a stayer that has finished by then.
            let err = second.unwrap_err().to_string();
            assert!(err.contains("2] of 3 is gone"), "{err}");
        }
        assert_eq!(leaving.join().is_err(), panics);
        stayers.into_iter().for_each(|t| t.join().unwrap());
    }
}
