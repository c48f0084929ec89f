//! Averaged weights as a collection (`tapegrad::average`): the moving average of the params,
//! each buffer collection averaged or copied as declared, never differentiated, saved and
//! resumed with the rest; bad settings and stale averages are errors that change nothing.

use ndarray::{ArrayD, arr1};
use tapegrad::average::{BufferPolicy, EMA, Ema};
use tapegrad::checkpoint::{LoadMode, load_into, save};
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{
    ApplyOptions, ModuleExt, Mutable, Tensor, Variables, softmax_cross_entropy,
    value_and_grad_with_aux,
};

fn model() -> Mlp {
    Mlp::new(&[4], 3).with_batch_norm(BatchNorm::new().momentum(0.9))
}

fn input() -> Tensor<f64> {
    Tensor::from_vec(&[6, 2], (0..12).map(|i| (i as f64 * 0.61).sin()).collect()).unwrap()
}

/// `steps` training steps, the average updated after each.
fn train(variables: &mut Variables<f64>, ema: &Ema, steps: usize) {
    let (model, x) = (model(), input());
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let mut sgd = Sgd::new(0.3).momentum(0.9);
    for _ in 0..steps {
        let (_, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
            let (logits, updates) = model.apply_tracked(p, variables, &x, &train)?;
            Ok((
                softmax_cross_entropy(&logits, &[0, 1, 2, 0, 1, 2])?,
                updates,
            ))
        })
        .unwrap();
        // The gradients name the params and nothing else: the averages are constants.
        assert!(grads.paths().eq(variables.params().paths()));
        sgd.update(variables.params_mut(), &grads).unwrap();
        variables.merge(updates).unwrap();
        ema.update(variables).unwrap();
    }
}

#[test]
fn the_average_follows_its_formula_and_each_buffer_its_policy() {
    let decay = 0.8;
    let ema = Ema::new(decay)
        .unwrap()
        .buffers("batch_stats", BufferPolicy::Average);
    let mut variables = model().init(0, &input()).unwrap();
    let mut expected: Vec<(String, ArrayD<f64>)> = Vec::new();
    let (model, x) = (model(), input());
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    for step in 0..4 {
        let (_, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
            let (logits, updates) = model.apply_tracked(p, &variables, &x, &train)?;
            Ok((
                softmax_cross_entropy(&logits, &[0, 1, 2, 0, 1, 2])?,
                updates,
            ))
        })
        .unwrap();
        Sgd::new(0.3)
            .update(variables.params_mut(), &grads)
            .unwrap();
        variables.merge(updates).unwrap();
        ema.update(&mut variables).unwrap();
        let live: Vec<(String, ArrayD<f64>)> = variables
            .iter()
            .filter(|(name, _)| name.starts_with("params/") || name.starts_with("batch_stats/"))
            .map(|(name, value)| (name, value.clone()))
            .collect();
        expected = if step == 0 {
            live // the first update copies
        } else {
            expected
                .iter()
                .zip(&live)
                .map(|((name, old), (_, new))| {
                    let mut blended = new.clone();
                    blended.zip_mut_with(old, |v, &o| *v = decay * o + (1.0 - decay) * *v);
                    (name.clone(), blended)
                })
                .collect()
        };
        for (name, value) in &expected {
            assert_eq!(
                variables.get(&format!("{EMA}/{name}")),
                Some(value),
                "{name}"
            );
        }
    }
    // The averaged model's variables are the averages; a copied buffer is the live one.
    let averaged = ema.averaged(&variables).unwrap();
    for (name, value) in &expected {
        assert_eq!(averaged.get(name), Some(value), "{name}");
    }
    let copying = Ema::new(decay)
        .unwrap()
        .buffers("batch_stats", BufferPolicy::Copy);
    let mut copied = variables.clone();
    copying.update(&mut copied).unwrap();
    assert_eq!(
        copied.get("ema/batch_stats/BatchNorm_0/mean"),
        copied.get("batch_stats/BatchNorm_0/mean")
    );
    // Undeclared buffers are not averaged: the averaged model uses the live ones.
    let params_only = Ema::new(decay).unwrap();
    let averaged = params_only.averaged(&variables).unwrap();
    assert_eq!(
        averaged.get("batch_stats/BatchNorm_0/var"),
        variables.get("batch_stats/BatchNorm_0/var")
    );
}

#[test]
fn the_averages_are_saved_and_resumed_with_the_rest() {
    let ema = Ema::new(0.9)
        .unwrap()
        .buffers("batch_stats", BufferPolicy::Average);
    let mut variables = model().init(0, &input()).unwrap();
    train(&mut variables, &ema, 3);
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("run.safetensors");
    save(&variables, &path).unwrap();
    let mut resumed = model().init(1, &input()).unwrap();
    ema.update(&mut resumed).unwrap(); // a model with averages, as the saved one
    load_into(&mut resumed, &path, LoadMode::Strict).unwrap();
    assert_eq!(resumed, variables);
    // And the averaged model evaluates.
    let (logits, _) = model()
        .apply(
            &ema.averaged(&resumed).unwrap(),
            &input(),
            &ApplyOptions::eval(),
        )
        .unwrap();
    assert!(logits.value().iter().all(|v| v.is_finite()));
}

#[test]
fn bad_settings_and_stale_averages_are_errors_that_change_nothing() {
    for decay in [1.0, -0.1, f64::NAN] {
        let err = Ema::new(decay).unwrap_err().to_string();
        assert!(err.contains("Ema::new") && err.contains("decay"), "{err}");
    }
    let mut variables = model().init(0, &input()).unwrap();
    let before = variables.clone();
    let declared = Ema::new(0.9).unwrap().buffers("state", BufferPolicy::Copy);
    let err = declared.update(&mut variables).unwrap_err().to_string();
    assert!(
        err.contains("\"state\"") && err.contains("Ema::buffers"),
        "{err}"
    );
    assert_eq!(variables, before);
    let ema = Ema::new(0.9).unwrap();
    let err = ema.averaged(&variables).unwrap_err().to_string();
    assert!(err.contains("ema/params/"), "{err}");
    ema.update(&mut variables).unwrap();
    // A param replaced by one of another shape: its average no longer fits.
    variables
        .insert("params", "Dense_1/bias", arr1(&[0.0, 0.0]).into_dyn())
        .unwrap();
    let before = variables.clone();
    let err = ema.update(&mut variables).unwrap_err().to_string();
    assert!(
        err.contains("params/Dense_1/bias") && err.contains("[3]"),
        "{err}"
    );
    assert_eq!(variables, before);
    assert!(ema.averaged(&variables).is_err());
}

/// Stochastic weight averaging: the equal-weight mean of the params at each update, to
/// rounding.
#[test]
fn swa_is_the_mean_of_the_params_it_was_given() {
    use tapegrad::average::Swa;
    let mut variables = model().init(0, &input()).unwrap();
    let mut snapshots: Vec<Variables<f64>> = Vec::new();
    let ema = Ema::new(0.5).unwrap(); // only to move the params between snapshots
    for _ in 0..3 {
        train(&mut variables, &ema, 2);
        Swa.update(&mut variables).unwrap();
        snapshots.push(variables.clone());
    }
    let averaged = Swa.averaged(&variables).unwrap();
    for (path, value) in averaged.params().iter() {
        let mean = snapshots
            .iter()
            .map(|s| s.params().get(path).unwrap().clone())
            .reduce(|a, b| a + b)
            .unwrap()
            / 3.0;
        let gap = (value - &mean)
            .mapv(f64::abs)
            .fold(0.0, |m: f64, v| m.max(*v));
        assert!(gap < 1e-12, "{path}: {gap:e}");
    }
    assert_eq!(variables.get("swa/count").unwrap()[[]], 3.0);
}

/// The running statistics recomputed over a data set are the exact mean and variance of the
/// first BatchNorm's input over all of it (biased under Flax's convention, unbiased under
/// PyTorch's), whatever they were before.
#[test]
fn recomputed_statistics_are_those_of_the_whole_data_set() {
    use tapegrad::average::recompute_batch_stats;
    use tapegrad::nn::Dense;
    let data = ArrayD::from_shape_fn(vec![12, 2], |i| {
        (i[0] as f64 * 0.9 + i[1] as f64).sin() + i[0] as f64 / 5.0
    });
    for (batch_norm, unbiased) in [
        (BatchNorm::new(), false),
        (BatchNorm::pytorch(Some(0.1)), true),
    ] {
        let model = Mlp::new(&[4], 3).with_batch_norm(batch_norm);
        let x = Tensor::constant(&data);
        let mut variables = model.init(0, &x).unwrap();
        variables
            .insert(
                "batch_stats",
                "BatchNorm_0/mean",
                arr1(&[9.0; 4]).into_dyn(),
            )
            .unwrap(); // statistics of other weights, say
        let updates = recompute_batch_stats(&variables, 3, |i, vars, options| {
            let rows = Tensor::constant(data.slice(ndarray::s![4 * i..4 * i + 4, ..]).to_owned());
            Ok(model.apply(vars, &rows, options)?.1)
        })
        .unwrap();
        let mut recomputed = variables.clone();
        recomputed.merge(updates).unwrap();
        let (z, _) = Dense::new(4)
            .apply(&variables.subtree("Dense_0"), &x, &ApplyOptions::eval())
            .unwrap();
        let mean = z.value().mean_axis(ndarray::Axis(0)).unwrap();
        let var = z
            .value()
            .var_axis(ndarray::Axis(0), if unbiased { 1.0 } else { 0.0 });
        let close = |name: &str, expected: &ndarray::ArrayD<f64>| {
            let got = recomputed.get(name).unwrap();
            let gap = (got - expected)
                .mapv(f64::abs)
                .fold(0.0, |m: f64, v| m.max(*v));
            assert!(gap < 1e-12, "{name}: {gap:e}");
        };
        close("batch_stats/BatchNorm_0/mean", &mean.into_dyn());
        close("batch_stats/BatchNorm_0/var", &var.into_dyn());
    }
}
