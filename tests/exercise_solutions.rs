//! Solutions to the guide's exercises (docs/12-exercises.md), as tests. Kept out of the
//! guide so that a reader tries first.

use ndarray::{Array1, Axis, arr1};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use tapegrad::gradcheck::{GradCheckOptions, check_grads, check_model};
use tapegrad::nn::{BatchNorm, Dense, init};
use tapegrad::{
    ApplyOptions, Module, ModuleExt, Mutable, Params, Result, Scope, Tensor, custom_op,
    value_and_grad,
};

// Exercise 1: `sin` with `custom_op`; d sin(x) / dx = cos(x).
fn sin(x: &Tensor<f64>) -> Result<Tensor<f64>> {
    let input = x.value().clone();
    custom_op("sin", &[x], input.mapv(f64::sin), move |g, _| {
        vec![Some(g * &input.mapv(f64::cos))]
    })
}

#[test]
fn exercise_1_sin_passes_gradcheck() {
    let params: Params<f64> = [("x", Array1::linspace(-3.5, 3.5, 15))]
        .into_iter()
        .collect();
    let report = check_grads(&params, |p| sin(p.get("x")?), &GradCheckOptions::default()).unwrap();
    assert!(report.passed(), "{report}");
    // And it is not vacuous: a VJP with the wrong sign fails.
    let wrong = |x: &Tensor<f64>| {
        let input = x.value().clone();
        custom_op("sin", &[x], input.mapv(f64::sin), move |g, _| {
            vec![Some(g * &input.mapv(|v| -v.cos()))]
        })
    };
    let report = check_grads(
        &params,
        |p| wrong(p.get("x")?),
        &GradCheckOptions::default(),
    );
    assert!(!report.unwrap().passed());
}

// Exercise 2: the logistic's derivative is y (1 − y), not y (1 + y).
fn logistic(x: &Tensor<f64>, derivative: fn(f64) -> f64) -> Result<Tensor<f64>> {
    let y = x.value().mapv(|v| 1.0 / (1.0 + (-v).exp()));
    let out = y.clone();
    custom_op("logistic", &[x], y, move |g, _| {
        vec![Some(g * &out.mapv(derivative))]
    })
}

#[test]
fn exercise_2_the_logistic_bug_is_found_and_fixed() {
    let params: Params<f64> = [("x", arr1(&[-2.0, 0.0, 2.0]))].into_iter().collect();
    let options = GradCheckOptions::default();
    let broken = check_grads(
        &params,
        |p| logistic(p.get("x")?, |y| y * (1.0 + y)),
        &options,
    );
    assert!(!broken.unwrap().passed());
    let fixed = check_grads(
        &params,
        |p| logistic(p.get("x")?, |y| y * (1.0 - y)),
        &options,
    );
    let fixed = fixed.unwrap();
    assert!(fixed.passed(), "{fixed}");
}

// Exercise 3: `Gate`, x · tanh(slope · x), whose slope gradient misses a factor x.
struct Gate {
    fixed: bool,
}

impl Module<f64> for Gate {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "Gate"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let slope = scope.param("slope", &[x.shape()[1]], init::constant(0.7))?;
        let (xv, sv) = (x.value().clone(), slope.value().clone());
        let value = &xv * &(&xv * &sv).mapv(f64::tanh);
        let fixed = self.fixed;
        custom_op("gate", &[x, &slope], value, move |g, _| {
            let t = (&xv * &sv).mapv(f64::tanh);
            let dt = t.mapv(|t| 1.0 - t * t);
            let dx = &t + &(&xv * &sv * &dt);
            // d/ds [x tanh(s x)] = x · x · (1 − tanh²): the planted bug drops one x.
            let ds = if fixed { &xv * &xv * &dt } else { &xv * &dt };
            let ds = (g * &ds).sum_axis(Axis(0));
            vec![Some(g * &dx), Some(ds)]
        })
    }
}

/// Dense → Gate → BatchNorm → Dense.
struct GatedModel {
    fixed: bool,
}

impl Module<f64> for GatedModel {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "GatedModel"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let h = scope.call(&Dense::new(4), x)?;
        let h = scope.call(&Gate { fixed: self.fixed }, &h)?;
        let h = scope.call(&BatchNorm::new(), &h)?;
        scope.call(&Dense::new(3), &h)
    }
}

#[test]
fn exercise_3_check_model_names_the_param_with_the_wrong_gradient() {
    let x = Tensor::from_vec(&[6, 2], (0..12).map(|i| (i as f64 * 0.9).sin()).collect()).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let check = |fixed| {
        let model = GatedModel { fixed };
        let variables = model.init(0, &x).unwrap();
        check_model(
            &model,
            &variables,
            &x,
            &train,
            |logits| tapegrad::softmax_cross_entropy(logits, &[0, 1, 2, 0, 1, 2]),
            &GradCheckOptions::default(),
        )
        .unwrap()
    };
    let broken = check(false);
    assert!(!broken.get("Gate_0/slope").unwrap().passed, "{broken}");
    // The gradient flowing *through* the gate to x (and on to Dense_0) is right, and the
    // BatchNorm's own params are downstream of the bug: they pass.
    for path in ["Dense_0/kernel", "BatchNorm_0/scale", "Dense_1/kernel"] {
        assert!(broken.get(path).unwrap().passed, "{path}: {broken}");
    }
    assert_eq!(broken.held_fixed, vec![("batch_stats".to_string(), true)]);
    let fixed = check(true);
    assert!(fixed.passed(), "{fixed}");
}

// Exercise 4: a call counter in `state`, silent during init and in evaluation.
struct CallCounter;

impl Module<f64> for CallCounter {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "CallCounter"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let calls = scope.variable("state", "calls", &[1], init::zeros())?;
        if scope.is_training() && !scope.is_initializing() {
            calls.set(calls.value().value() + 1.0)?;
        }
        Ok(x.clone())
    }
}

#[test]
fn exercise_4_the_counter_counts_training_calls_only() {
    let x = Tensor::from_vec(&[1, 1], vec![5.0]).unwrap();
    let mut variables = CallCounter.init(0, &x).unwrap();
    assert_eq!(variables.get("state/calls").unwrap()[[0]], 0.0);
    let train = ApplyOptions::train().mutable(Mutable::only(["state"]));
    for _ in 0..3 {
        let (_, updates) = CallCounter.apply(&variables, &x, &train).unwrap();
        variables.merge(updates).unwrap();
    }
    let (_, updates) = CallCounter
        .apply(&variables, &x, &ApplyOptions::eval())
        .unwrap();
    assert!(updates.is_empty());
    assert_eq!(variables.get("state/calls").unwrap()[[0]], 3.0);
}

// Exercise 5: a BatchNorm whose running mean is a param. (Writing the batch mean tensor
// with `Variable::set` does not compile: chapter 5's compile_fail test shows the error.)
struct LeakyBatchNorm;

impl Module<f64> for LeakyBatchNorm {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "BatchNorm"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let features = x.shape()[1];
        // The leak: running statistics declared where gradients reach them.
        let running_mean = scope.param("mean", &[features], init::zeros())?;
        let centred = (x - &running_mean)?;
        let var = centred.square().mean_axes(&[0], false)?;
        centred / (var + 1e-5).sqrt()
    }
}

/// The property: no gradient of a loss through `model` names a running statistic.
fn no_gradient_names_a_running_statistic<M>(
    model: M,
) -> std::result::Result<(), TestError<Vec<f64>>>
where
    M: Module<f64, Input = Tensor<f64>, Output = Tensor<f64>>,
{
    let batches = proptest::collection::vec(-10.0..10.0f64, 8);
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    runner.run(&batches, |values| {
        let x = Tensor::from_vec(&[4, 2], values).unwrap();
        let variables = model.init(0, &x).unwrap();
        let (_, grads) = value_and_grad(variables.params(), |p| {
            let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
            Ok(model
                .apply_tracked(p, &variables, &x, &train)?
                .0
                .square()
                .sum_all())
        })
        .unwrap();
        for path in grads.paths() {
            prop_assert!(
                !path.ends_with("/mean") && !path.ends_with("/var") && path != "mean",
                "the gradient names the running statistic {path}"
            );
        }
        Ok(())
    })
}

#[test]
fn exercise_5_the_property_catches_the_leak_and_passes_the_real_batch_norm() {
    no_gradient_names_a_running_statistic(BatchNorm::new()).unwrap();
    match no_gradient_names_a_running_statistic(LeakyBatchNorm) {
        Err(TestError::Fail(reason, minimal)) => {
            assert!(reason.to_string().contains("mean"), "{reason}");
            // Shrunk to the most readable counter-example: any batch leaks, so all zeros.
            assert_eq!(minimal, vec![0.0; 8]);
        }
        other => panic!("the leaky layer should fail the property, got {other:?}"),
    }
}

// Exercise 6: broadcasting's adjoint. Each element of the input was copied to every position
// of the axes it was broadcast along; the adjoint of a copy is a sum of the copies'
// gradients.
fn sum_to_shape(gradient: &ndarray::ArrayD<f64>, shape: &[usize]) -> ndarray::ArrayD<f64> {
    let mut summed = gradient.clone();
    // The leading axes the input did not have.
    while summed.ndim() > shape.len() {
        summed = summed.sum_axis(Axis(0));
    }
    // The axes where it had length 1, kept.
    for (axis, &len) in shape.iter().enumerate() {
        if len == 1 && summed.shape()[axis] != 1 {
            summed = summed.sum_axis(Axis(axis)).insert_axis(Axis(axis));
        }
    }
    summed
}

#[test]
fn exercise_6_sum_to_shape_is_the_gradient_of_a_broadcast() {
    let tape = tapegrad::Tape::<f64>::new();
    let bias = tape.leaf("bias", arr1(&[0.1, 0.2, 0.3]));
    let column = tape.leaf("column", ndarray::Array2::from_elem((4, 1), 0.5));
    let batch =
        ndarray::ArrayD::from_shape_fn(vec![2, 4, 3], |i| (i[0] * 12 + i[1] * 3 + i[2]) as f64);
    let cotangent = batch.mapv(|v| (v * 0.7).sin());
    let y = Tensor::constant(batch)
        .add(&bias)
        .unwrap()
        .add(&column)
        .unwrap();
    let loss = y
        .mul(&Tensor::constant(cotangent.clone()))
        .unwrap()
        .sum_all();
    let gradients = loss.backward().unwrap();
    for (leaf, shape) in [(&bias, vec![3]), (&column, vec![4, 1])] {
        let expected = gradients.wrt(leaf).unwrap();
        let got = sum_to_shape(&cotangent, &shape);
        assert_eq!(got.shape(), expected.shape());
        let gap = (&got - &expected)
            .mapv(f64::abs)
            .fold(0.0, |m: f64, v| m.max(*v));
        assert!(gap < 1e-12, "{shape:?}: {gap:e}");
    }
}
