//! Recomputation: a training step with blocks recomputed during backward (`nn::Remat`,
//! `Sequential::remat_segments`, `Mlp::with_remat_segments`, the tensor-level `remat`) gives
//! the same loss, gradients, params, optimizer state and running statistics as without, bit
//! for bit: with fusion on and off, with dropout, over replicas, for every segmentation. The
//! recomputation writes nothing, a layer that writes anyway is an error naming it, and the
//! tape keeps one node per recomputed block.

use std::rc::Rc;

use ndarray::{ArrayD, Axis};
use proptest::prelude::*;
use tapegrad::nn::{Activation, BatchNorm, Conv, Dense, Flatten, Mlp, Pool, Remat, Sequential};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::replicas::{Communicator, InProcess, ReplicaAxis};
use tapegrad::{
    ApplyOptions, Error, Fusion, Module, ModuleExt, Mutable, ParamTensors, Result, Scope, Tape,
    Tensor, Variables, remat, softmax_cross_entropy, testing, value_and_grad_with_aux,
};

#[allow(dead_code)] // shared with the replica tests, which use the rest
mod support;
use support::{CLASSES, Outcome};

type Model = dyn Module<f64, Input = Tensor<f64>, Output = Tensor<f64>>;

/// One SGD-momentum step in training mode, dropout drawn from a fixed seed.
fn step(model: &Model, variables: &Variables<f64>, x: &ArrayD<f64>, labels: &[usize]) -> Outcome {
    let options = ApplyOptions::train()
        .mutable(Mutable::only(["batch_stats"]))
        .rng("dropout", 7);
    let x = Tensor::constant(x);
    let (loss, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
        let (logits, updates) = model.apply_tracked(p, variables, &x, &options)?;
        Ok((softmax_cross_entropy(&logits, labels)?, updates))
    })
    .unwrap();
    let mut optimizer = Sgd::new(0.1).momentum(0.9);
    let mut after = variables.clone();
    optimizer.update(after.params_mut(), &grads).unwrap();
    after.merge(updates).unwrap();
    let velocities = grads
        .paths()
        .map(|p| optimizer.velocity(p).unwrap().clone())
        .collect();
    Outcome {
        loss,
        grads,
        variables: after,
        velocities,
    }
}

/// Bit-for-bit equality, with the first difference named.
fn identical(plain: &Outcome, recomputed: &Outcome) -> std::result::Result<(), TestCaseError> {
    prop_assert_eq!(plain.loss.to_bits(), recomputed.loss.to_bits(), "loss");
    for ((path, a), (_, b)) in plain.grads.iter().zip(recomputed.grads.iter()) {
        prop_assert_eq!(a, b, "gradient of {}", path);
    }
    prop_assert_eq!(plain.grads.len(), recomputed.grads.len());
    for ((path, a), (_, b)) in plain.variables.iter().zip(recomputed.variables.iter()) {
        prop_assert_eq!(a, b, "{} after the step", path);
    }
    prop_assert_eq!(&plain.velocities, &recomputed.velocities, "velocities");
    Ok(())
}

fn rows(n: usize, features: usize) -> impl Strategy<Value = ArrayD<f64>> {
    proptest::collection::vec(-2.0..2.0f64, n * features)
        .prop_map(move |v| ArrayD::from_shape_vec(vec![n, features], v).unwrap())
}

/// A batch of rows of 3 features with labels, hidden widths, and a segment count.
fn mlp_case() -> impl Strategy<Value = (ArrayD<f64>, Vec<usize>, Vec<usize>, usize)> {
    (2usize..=6, proptest::collection::vec(2usize..=5, 1..=5)).prop_flat_map(|(n, hidden)| {
        let layers = hidden.len();
        (
            rows(n, 3),
            proptest::collection::vec(0..CLASSES, n),
            Just(hidden),
            1..=layers + 1,
        )
    })
}

/// A small CNN as a flat `Sequential` of 9 layers.
fn cnn() -> Sequential<f64> {
    Sequential::new()
        .push(Conv::new(3, [3, 3]))
        .push(BatchNorm::new().momentum(0.8).with_relu())
        .push(Pool::max([2, 2]))
        .push(Conv::new(4, [2, 2]))
        .push(BatchNorm::new().momentum(0.8))
        .push(Activation::Relu)
        .push(Pool::average([2, 2]))
        .push(Flatten::new())
        .push(Dense::new(CLASSES))
}

proptest! {
    #![proptest_config(testing::config(32))]

    #[test]
    fn an_mlp_with_recomputed_segments_steps_exactly_as_without(
        (x, labels, hidden, segments) in mlp_case(),
        dropout in proptest::bool::ANY,
        seed in any::<u64>(),
    ) {
        let mut model = Mlp::new(&hidden, CLASSES).with_batch_norm(BatchNorm::new().momentum(0.8));
        if dropout {
            model = model.with_dropout(0.3);
        }
        let variables = model.init(seed, &Tensor::constant(&x)).unwrap();
        let recomputed = model.clone().with_remat_segments(segments).unwrap();
        for fusion in [Fusion::On, Fusion::Off] {
            let plain = fusion.run(|| step(&model, &variables, &x, &labels));
            let again = fusion.run(|| step(&recomputed, &variables, &x, &labels));
            identical(&plain, &again)?;
        }
    }

    #[test]
    fn a_cnn_with_recomputed_segments_steps_exactly_as_without(
        images in proptest::collection::vec(-2.0..2.0f64, 2 * 6 * 6 * 2),
        labels in proptest::collection::vec(0..CLASSES, 2),
        segments in 1usize..=10,
        seed in any::<u64>(),
    ) {
        let x = ArrayD::from_shape_vec(vec![2, 6, 6, 2], images).unwrap();
        let variables = cnn().init(seed, &Tensor::constant(&x)).unwrap();
        let recomputed = cnn().remat_segments(segments).unwrap();
        for fusion in [Fusion::On, Fusion::Off] {
            let plain = fusion.run(|| step(&cnn(), &variables, &x, &labels));
            let again = fusion.run(|| step(&recomputed, &variables, &x, &labels));
            identical(&plain, &again)?;
        }
    }

    #[test]
    fn remat_of_a_closure_gives_the_gradients_of_the_closure(
        x in rows(3, 4),
        w in rows(4, 2),
        track_x in proptest::bool::ANY,
    ) {
        let block = |t: &[Tensor<f64>]| -> Result<Tensor<f64>> {
            let h = t[0].matmul(&t[1])?.tanh();
            h.mul(&h.sigmoid())
        };
        let run = |recompute: bool| {
            let tape = Tape::new();
            let tx = if track_x { tape.leaf("x", &x) } else { Tensor::constant(&x) };
            let tw = tape.leaf("w", &w);
            let y = if recompute {
                remat(block, &[&tx, &tw]).unwrap()
            } else {
                block(&[tx.clone(), tw.clone()]).unwrap()
            };
            let grads = y.square().sum_all().backward().unwrap();
            (y.value().clone(), grads.get(&tx).cloned(), grads.wrt(&tw).unwrap())
        };
        let (plain, again) = (run(false), run(true));
        prop_assert_eq!(&plain, &again);
        prop_assert_eq!(again.1.is_some(), track_x);
    }
}

#[test]
fn recomputed_blocks_nest_and_wrap_any_module() {
    let block = |width| {
        Sequential::new()
            .push(Dense::new(width))
            .push(BatchNorm::new().momentum(0.8).with_relu())
    };
    let plain = Sequential::new()
        .push(block(5))
        .push(block(4))
        .push(Dense::new(CLASSES));
    let nested = Sequential::new()
        .push(Remat::new(block(5)))
        .push(Remat::new(block(4).remat_segments(2).unwrap()))
        .push(Dense::new(CLASSES))
        .remat_segments(2)
        .unwrap();
    let x = ArrayD::from_shape_fn(vec![5, 3], |i| ((i[0] * 3 + i[1]) as f64).sin());
    let labels = [0, 1, 2, 1, 0];
    let variables = plain.init(3, &Tensor::constant(&x)).unwrap();
    let a = step(&plain, &variables, &x, &labels);
    let b = step(&nested, &variables, &x, &labels);
    identical(&a, &b).unwrap();
    assert_eq!(
        nested.kinds().collect::<Vec<_>>(),
        plain.kinds().collect::<Vec<_>>()
    );
}

/// The same block, with dropout, applied twice under one name: its second call draws the
/// stream's second mask, which its recomputation must draw again.
struct Twice<M>(M);

impl<M: Module<f64, Input = Tensor<f64>, Output = Tensor<f64>>> Module<f64> for Twice<M> {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "Twice"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let once = scope.call_named("Shared", &self.0, x)?;
        scope.call_named("Shared", &self.0, &once)
    }
}

#[test]
fn a_recomputation_draws_the_random_masks_of_its_first_run() {
    let block = || {
        Sequential::new()
            .push(Dense::new(4))
            .push(Activation::Relu)
            .push(tapegrad::nn::Dropout::new(0.5))
    };
    let model = |remat: bool| {
        let twice: Box<Model> = match remat {
            true => Box::new(Twice(Remat::new(block()))),
            false => Box::new(Twice(block())),
        };
        Sequential::new()
            .push(Boxed(twice))
            .push(Dense::new(CLASSES))
    };
    let x = ArrayD::from_shape_fn(vec![6, 4], |i| ((i[0] * 4 + i[1]) as f64 * 0.3).sin());
    let labels = [0, 1, 2, 2, 1, 0];
    let variables = model(false).init(5, &Tensor::constant(&x)).unwrap();
    let a = step(&model(false), &variables, &x, &labels);
    let b = step(&model(true), &variables, &x, &labels);
    identical(&a, &b).unwrap();
}

/// A boxed module as a module.
struct Boxed(Box<Model>);

impl Module<f64> for Boxed {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        self.0.forward(scope, x)
    }
}

#[test]
fn cross_replica_statistics_are_recomputed_exactly_on_every_replica() {
    let model = support::model_of(&[5, 4, 3], true);
    let recomputed = model.clone().with_remat_segments(3).unwrap();
    let x = ArrayD::from_shape_fn(vec![6, 4], |i| ((i[0] * 4 + i[1]) as f64 * 0.7).cos());
    let labels = [0, 1, 2, 2, 1, 0];
    let variables = model.init(11, &Tensor::constant(&x)).unwrap();
    let replicated = |model: &Mlp| -> Vec<Outcome> {
        std::thread::scope(|threads| {
            let handles: Vec<_> = InProcess::group(2)
                .into_iter()
                .enumerate()
                .map(|(r, communicator)| {
                    let (model, variables, x) = (model.clone(), variables.clone(), x.clone());
                    threads.spawn(move || {
                        let communicator: Rc<dyn Communicator> = Rc::new(communicator);
                        let shard = x.slice_axis(Axis(0), (r * 3..r * 3 + 3).into()).to_owned();
                        let axis = ReplicaAxis::new("batch", Rc::clone(&communicator));
                        let shard_labels = &labels[r * 3..r * 3 + 3];
                        support::step(
                            &model,
                            &variables,
                            &shard,
                            shard_labels,
                            &communicator,
                            Some(axis),
                        )
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    let plain = replicated(&model);
    let again = replicated(&recomputed);
    for (a, b) in plain.iter().zip(&again) {
        identical(a, b).unwrap();
    }
}

#[test]
fn the_tape_keeps_one_node_per_recomputed_segment() {
    let model = Mlp::new(&[4; 6], CLASSES).with_batch_norm(BatchNorm::new());
    let x = Tensor::constant(ArrayD::from_shape_fn(vec![4, 3], |i| {
        (i[0] + 2 * i[1]) as f64
    }));
    let variables = model.init(0, &x).unwrap();
    let options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let ops_recorded = |model: &Mlp| {
        let tape = Tape::new();
        let params = ParamTensors::leaves(variables.params(), &tape);
        model
            .apply_tracked(&params, &variables, &x, &options)
            .unwrap();
        tape.entries()
            .iter()
            .filter(|e| e.op != "leaf")
            .map(|e| e.op)
            .collect::<Vec<_>>()
    };
    // The fused nodes, whatever TAPEGRAD_FUSION says: the count below is theirs.
    let plain = Fusion::On.run(|| ops_recorded(&model));
    let segmented = Fusion::On.run(|| ops_recorded(&model.clone().with_remat_segments(3).unwrap()));
    // Six blocks of Dense and BatchNorm-ReLU, two of which, the last segment, stay on the
    // tape; the four others are two "remat" nodes; then the output Dense.
    assert_eq!(plain.len(), 6 * 2 + 1, "{plain:?}");
    assert_eq!(
        segmented,
        [
            "remat",
            "remat",
            "linear",
            "batch_norm_relu",
            "linear",
            "batch_norm_relu",
            "linear"
        ]
    );
}

/// Adds 1 to a `state` counter on every call, whether or not it may.
struct Counter;

impl Module<f64> for Counter {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "Counter"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let calls = scope.variable("state", "calls", &[], |_: &mut _, _: &[usize]| {
            ArrayD::zeros(vec![])
        })?;
        if !scope.is_initializing() {
            calls.set(calls.value().value() + 1.0)?;
        }
        scope.call(&Dense::new(2), x)
    }
}

#[test]
fn a_layer_that_writes_while_recomputed_is_an_error_naming_it() {
    let model = Sequential::new()
        .push(Remat::new(Counter))
        .push(Dense::new(1));
    let x = Tensor::constant(ArrayD::from_elem(vec![2, 3], 0.5));
    let variables = model.init(0, &x).unwrap();
    let before = variables.clone();
    let options = ApplyOptions::train().mutable(Mutable::only(["state"]));
    // Without a tape nothing is recomputed: the counter counts once.
    let (_, updates) = model.apply(&variables, &x, &options).unwrap();
    assert_eq!(updates.get("state/Counter_0/calls").unwrap()[[]], 1.0);
    // With one, the backward pass runs the block again, and its write is refused.
    let result = value_and_grad_with_aux(variables.params(), |p| {
        let (y, updates) = model.apply_tracked(p, &variables, &x, &options)?;
        Ok((y.sum_all(), updates))
    });
    match result {
        Err(Error::WriteWhileRecomputing { collection, path }) => {
            assert_eq!(
                (collection.as_str(), path.as_str()),
                ("state", "Counter_0/calls")
            );
        }
        other => panic!("expected WriteWhileRecomputing, got {other:?}"),
    }
    assert_eq!(variables, before);
}

#[test]
fn bad_recomputation_settings_are_errors() {
    assert!(matches!(
        Sequential::<f64>::new()
            .push(Dense::new(2))
            .remat_segments(0),
        Err(Error::InvalidArgument {
            op: "Sequential::remat_segments",
            ..
        })
    ));
    assert!(matches!(
        Mlp::new(&[2], 2).with_remat_segments(0),
        Err(Error::InvalidArgument {
            op: "Mlp::with_remat_segments",
            ..
        })
    ));
    // A closure that uses a tracked tensor it was not given cannot be recomputed.
    let tape = Tape::<f64>::new();
    let w = tape.leaf("w", ArrayD::from_elem(vec![2], 2.0));
    let x = tape.leaf("x", ArrayD::from_elem(vec![2], 3.0));
    let captured = w.clone();
    let error = remat(move |t: &[Tensor<f64>]| t[0].mul(&captured), &[&x]).unwrap_err();
    assert!(error.to_string().contains("remat"), "{error}");
}
