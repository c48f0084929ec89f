//! The three Flax examples users arrive with (from an article on porting PyTorch's
//! `register_buffer` to Flax), ported to tapegrad, with the article's mistakes corrected:
//!
//! * its BatchNorm passes `mutable=True` to `self.variable`, which takes no such argument
//!   (mutability is decided by `apply`), updates the statistics during `init`, and calls
//!   `apply` in training mode without `mutable=['batch_stats']`, which Flax rejects;
//! * its "fixed" embedding is declared in `params`, so Flax differentiates and trains it;
//! * its stateful layer applies twice to the *original* variables, so the state does not
//!   accumulate; merging the first update before the second call is what accumulates.

use ndarray::{ArrayD, Axis, arr2};
use tapegrad::nn::{Accumulator, Dense, Embed, FrozenEmbed, init};
use tapegrad::{
    ApplyOptions, Error, Module, ModuleExt, Mutable, Result, Scope, Tensor, Variables,
    softmax_cross_entropy, value_and_grad,
};

// ---------------------------------------------------------------- 1. simplified BatchNorm

/// The article's `BatchNormSimplified`, written against the public module API: running
/// statistics in `batch_stats`, `gamma`/`beta` the only params.
struct BatchNormSimplified {
    momentum: f64,
}

impl Module<f64> for BatchNormSimplified {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "BatchNormSimplified"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let f = x.shape()[1];
        let running_mean = scope.variable("batch_stats", "running_mean", &[f], init::zeros())?;
        let running_var = scope.variable("batch_stats", "running_variance", &[f], init::ones())?;
        let normalized = if scope.is_training() {
            let mean = x.mean_axes(&[0], false)?;
            let var = x.var_axes(&[0], false)?;
            if !scope.is_initializing() {
                let m = self.momentum;
                running_mean.set(running_mean.value().value() * m + &(mean.value() * (1.0 - m)))?;
                running_var.set(running_var.value().value() * m + &(var.value() * (1.0 - m)))?;
            }
            x.sub(&mean)?.div(&var.add_scalar(1e-5).sqrt())?
        } else {
            x.sub(&running_mean.value())?
                .div(&running_var.value().add_scalar(1e-5).sqrt())?
        };
        let gamma = scope.param("gamma", &[f], init::ones())?;
        let beta = scope.param("beta", &[f], init::zeros())?;
        normalized.mul(&gamma)?.add(&beta)
    }
}

fn batch() -> Tensor<f64> {
    Tensor::constant(arr2(&[[1.0, 10.0], [3.0, 14.0], [5.0, 9.0], [7.0, 11.0]]).into_dyn())
}

#[test]
fn simplified_batch_norm_keeps_a_moving_average_in_batch_stats() {
    let model = BatchNormSimplified { momentum: 0.9 };
    let mut vars = model
        .init_with(0, &batch(), &ApplyOptions::train())
        .unwrap();
    assert_eq!(vars.params().paths().collect::<Vec<_>>(), ["beta", "gamma"]);
    // init did not move the statistics.
    assert_eq!(
        vars.get("batch_stats/running_mean")
            .unwrap()
            .as_slice()
            .unwrap(),
        &[0.0, 0.0]
    );

    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let (_, updates) = model.apply(&vars, &batch(), &train).unwrap();
    vars.merge(updates).unwrap();
    // Batch means are 4 and 11: 0.9 * 0 + 0.1 * mean. Biased variances are 5 and 3.5:
    // 0.9 * 1 + 0.1 * var.
    let mean = vars.get("batch_stats/running_mean").unwrap();
    let var = vars.get("batch_stats/running_variance").unwrap();
    assert!(
        (mean[[0]] - 0.4).abs() < 1e-12 && (mean[[1]] - 1.1).abs() < 1e-12,
        "{mean}"
    );
    assert!(
        (var[[0]] - 1.4).abs() < 1e-12 && (var[[1]] - 1.25).abs() < 1e-12,
        "{var}"
    );

    // The article's `model.apply(variables, x)` in training mode, without mutable: an error.
    assert!(matches!(
        model.apply(&vars, &batch(), &ApplyOptions::train()),
        Err(Error::ImmutableCollection { .. })
    ));
    // Evaluation mode reads the running statistics and writes nothing.
    let (y, updates) = model.apply(&vars, &batch(), &ApplyOptions::eval()).unwrap();
    assert!(updates.is_empty());
    assert!((y.value()[[0, 0]] - (1.0 - 0.4) / (1.4f64 + 1e-5).sqrt()).abs() < 1e-12);
}

// ---------------------------------------------------------------- 2. fixed embedding

/// ids -> a lookup table (trainable or frozen) -> flatten -> Dense -> logits.
struct Lookup {
    frozen: bool,
}

impl Module<f64> for Lookup {
    type Input = ArrayD<usize>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "Lookup"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, ids: &ArrayD<usize>) -> Result<Tensor<f64>> {
        let rows = if self.frozen {
            scope.call(&FrozenEmbed::new(6, 3), ids)? // in the `state` collection
        } else {
            scope.call(&Embed::new(6, 3), ids)? // the article's version: in `params`
        };
        let rows = rows.reshape(&[ids.shape()[0], ids.shape()[1] * 3])?;
        scope.call(&Dense::new(2), &rows)
    }
}

/// Plain gradient descent for a few steps; returns the final variables.
fn train_lookup(
    model: &Lookup,
    steps: usize,
) -> (Variables<f64>, Variables<f64>, Vec<tapegrad::Grads<f64>>) {
    let ids = arr2(&[[0usize, 1], [2, 3], [1, 4]]).into_dyn();
    let labels = [0, 1, 1];
    let initial = model.init(3, &ids).unwrap();
    let mut vars = initial.clone();
    let mut all_grads = Vec::new();
    for _ in 0..steps {
        let (_, grads) = value_and_grad(vars.params(), |p| {
            let (logits, _) = model.apply_tracked(p, &vars, &ids, &ApplyOptions::train())?;
            softmax_cross_entropy(&logits, &labels)
        })
        .unwrap();
        for (path, param) in vars.params_mut().iter_mut() {
            param.scaled_add(-0.5, grads.get(path).unwrap());
        }
        all_grads.push(grads);
    }
    (initial, vars, all_grads)
}

#[test]
fn a_frozen_embedding_gets_no_gradient_and_stays_bit_identical() {
    let (initial, trained, grads) = train_lookup(&Lookup { frozen: true }, 5);
    for g in &grads {
        assert_eq!(
            g.paths().collect::<Vec<_>>(),
            ["Dense_0/bias", "Dense_0/kernel"]
        );
    }
    assert_eq!(trained.collection("state"), initial.collection("state"));
    assert_ne!(trained.params(), initial.params()); // the rest did train
}

#[test]
fn the_same_table_declared_as_a_param_is_trained() {
    let (initial, trained, grads) = train_lookup(&Lookup { frozen: false }, 5);
    let table_grad = grads[0]
        .get("Embed_0/embedding")
        .expect("a param gets a gradient");
    // Row 5 is never looked up: its gradient is exactly zero, the others' are not.
    assert!(table_grad.index_axis(Axis(0), 5).iter().all(|&g| g == 0.0));
    assert!(table_grad.index_axis(Axis(0), 1).iter().any(|&g| g != 0.0));
    assert_ne!(
        trained.get("params/Embed_0/embedding"),
        initial.get("params/Embed_0/embedding")
    );
}

// ---------------------------------------------------------------- 3. stateful layer

#[test]
fn a_stateful_layer_accumulates_only_through_merged_mutable_applies() {
    let x = batch();
    let batch_mean = x.value().mean_axis(Axis(0)).unwrap();
    let mut vars = ModuleExt::<f64>::init(&Accumulator, 0, &x).unwrap();
    let mutable = ApplyOptions::eval().mutable(Mutable::only(["state"]));

    let (y1, updates) = Accumulator.apply(&vars, &x, &mutable).unwrap();
    vars.merge(updates).unwrap();
    let (_, updates) = Accumulator.apply(&vars, &x, &mutable).unwrap();
    vars.merge(updates).unwrap();
    assert_eq!(vars.get("state/sum").unwrap(), &(&batch_mean * 2.0));
    // The first call returned x + (0 + mean).
    assert_eq!(y1.value(), &(x.value() + &batch_mean));

    // With `state` immutable the write is an error, and nothing changes.
    let before = vars.clone();
    let err = Accumulator
        .apply(&vars, &x, &ApplyOptions::eval())
        .unwrap_err();
    assert_eq!(
        err,
        Error::ImmutableCollection {
            collection: "state".into(),
            path: "sum".into()
        }
    );
    assert_eq!(vars, before);
}
