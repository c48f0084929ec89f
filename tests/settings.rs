//! Settings are validated as PyTorch validates them (its `ValueError`s: lr ≥ 0, momentum ≥ 0,
//! 0 ≤ β < 1, eps ≥ 0 (here > 0), weight decay ≥ 0, all finite), before anything moves, with
//! an error naming the setting and its value.

use ndarray::arr1;
use tapegrad::nn::BatchNorm;
use tapegrad::optim::{Adam, LearningRate, Optimizer, Sgd};
use tapegrad::{ApplyOptions, Error, ModuleExt, Mutable, Params, Tensor, value_and_grad};

fn params() -> Params<f64> {
    [("w".to_string(), arr1(&[1.0, -2.0]).into_dyn())]
        .into_iter()
        .collect()
}

/// Runs one update of `optimizer` with a zero gradient (Adam's 0/0 case) and a non-zero
/// one, and returns the error of the first; asserts nothing moved.
fn refused(mut optimizer: Box<dyn Optimizer<f64>>) -> Error {
    let mut p = params();
    let before = p.clone();
    let (_, grads) = value_and_grad(&p, |t| Ok(t.get("w")?.mul_scalar(0.0).sum_all())).unwrap();
    let err = optimizer
        .update(&mut p, &grads)
        .expect_err("a bad setting must be refused");
    assert_eq!(p, before, "nothing moves");
    assert_eq!(optimizer.steps(), 0);
    err
}

fn names(err: &Error, expected_setting: &str, expected_value: f64) {
    match err {
        Error::InvalidSetting { setting, value, .. } => {
            assert_eq!(*setting, expected_setting, "{err}");
            assert!(
                value.to_bits() == expected_value.to_bits() || value == &expected_value,
                "{err}"
            );
        }
        other => panic!("expected InvalidSetting for {expected_setting}, got {other}"),
    }
}

#[test]
fn sgd_settings_out_of_range_are_refused() {
    names(
        &refused(Box::new(Sgd::new(0.1).momentum(-0.5))),
        "momentum",
        -0.5,
    );
    names(
        &refused(Box::new(Sgd::new(0.1).momentum(f64::NAN))),
        "momentum",
        f64::NAN,
    );
    names(
        &refused(Box::new(Sgd::new(0.1).weight_decay(-1.0))),
        "weight decay",
        -1.0,
    );
    names(
        &refused(Box::new(Sgd::new(f64::NAN))),
        "learning rate",
        f64::NAN,
    );
    names(&refused(Box::new(Sgd::new(-0.1))), "learning rate", -0.1);
    names(
        &refused(Box::new(Sgd::new(0.1).nesterov(true))),
        "momentum",
        0.0,
    );
    let message = refused(Box::new(Sgd::new(0.1).momentum(-0.5))).to_string();
    assert!(
        message.contains("Sgd") && message.contains("momentum") && message.contains("-0.5"),
        "{message}"
    );
}

#[test]
fn adam_settings_out_of_range_are_refused() {
    // β₁ = 1 makes the bias correction 1 − β₁ᵗ zero: params would be NaN after one step.
    names(
        &refused(Box::new(Adam::new(0.1).betas(1.0, 0.0))),
        "beta1",
        1.0,
    );
    names(
        &refused(Box::new(Adam::new(0.1).betas(0.9, -0.1))),
        "beta2",
        -0.1,
    );
    // eps 0 with a zero gradient is 0 / 0.
    names(&refused(Box::new(Adam::new(0.1).eps(0.0))), "eps", 0.0);
    names(
        &refused(Box::new(Adam::adamw(0.1).weight_decay(-1.0))),
        "weight decay",
        -1.0,
    );
    names(
        &refused(Box::new(Adam::new(f64::INFINITY))),
        "learning rate",
        f64::INFINITY,
    );
}

#[test]
fn schedule_settings_out_of_range_are_refused() {
    let cosine = LearningRate::Cosine {
        initial: 0.1,
        final_value: -0.01,
        steps: 10,
    };
    names(
        &refused(Box::new(Sgd::new(cosine))),
        "final learning rate",
        -0.01,
    );
    let step = LearningRate::Step {
        initial: 0.1,
        gamma: f64::NAN,
        every: 2,
    };
    names(&refused(Box::new(Sgd::new(step))), "gamma", f64::NAN);
    let warm = LearningRate::WarmupCosine {
        peak: 0.1,
        warmup: 20,
        steps: 10,
        final_value: 0.0,
    };
    names(&refused(Box::new(Adam::new(warm))), "warm-up steps", 20.0);
}

#[test]
fn batch_norm_settings_out_of_range_are_refused_before_anything_is_read() {
    let x = Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0]).unwrap();
    let variables = BatchNorm::new().init(0, &x).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    for (layer, setting, value) in [
        (BatchNorm::new().momentum(f64::NAN), "momentum", f64::NAN),
        (BatchNorm::new().momentum(1.5), "momentum", 1.5),
        (BatchNorm::new().epsilon(-1.0), "epsilon", -1.0),
        (BatchNorm::new().epsilon(0.0), "epsilon", 0.0),
    ] {
        for options in [&train, &ApplyOptions::eval()] {
            names(
                &layer.apply(&variables, &x, options).unwrap_err(),
                setting,
                value,
            );
        }
    }
}
