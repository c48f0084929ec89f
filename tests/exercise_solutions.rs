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

// Exercise 7: BatchNorm's backward as a `custom_op`, over the rows of an `(N, F)` input,
// `dx = (γ/σ)(g − mean g − x̂ mean(g x̂))`. The means are over N rows: a `1/(N − 1)` in their
// place is off by a factor `N/(N − 1)`, about `1/N` relative, which PyTorch's gradcheck
// tolerance (rtol 1e-3) cannot see once N passes a thousand, and 1e-7 can (with a
// finite-difference step large enough that its rounding stays below that).
fn batch_norm_op(x: &Tensor<f64>, rows_in_mean: f64) -> Result<Tensor<f64>> {
    let input = x
        .value()
        .clone()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let centred = &input - &input.mean_axis(Axis(0)).unwrap();
    let inv_std = centred
        .mapv(|v| v * v)
        .mean_axis(Axis(0))
        .unwrap()
        .mapv(|v| 1.0 / (v + 1e-5).sqrt());
    let normalized = &centred * &inv_std;
    let forward = normalized.clone().into_dyn();
    custom_op("batch_norm_by_hand", &[x], forward, move |g, _| {
        let g = g.clone().into_dimensionality::<ndarray::Ix2>().unwrap();
        let mean = |a: &ndarray::Array2<f64>| a.sum_axis(Axis(0)) / rows_in_mean;
        let along = mean(&(&g * &normalized));
        let dx = (&g - &mean(&g) - &normalized * &along) * &inv_std;
        vec![Some(dx.into_dyn())]
    })
}

#[test]
fn exercise_7_only_a_tight_tolerance_tells_n_from_n_minus_1() {
    let (rows, features) = (1500, 1);
    let x = ndarray::Array2::from_shape_fn((rows, features), |(i, j)| {
        ((i * 7 + j * 3) as f64 * 0.37).sin() + 0.1 * j as f64
    });
    let params: Params<f64> = [("x", x.into_dyn())].into_iter().collect();
    // A weighted sum of the output: a plain sum would cancel (each column of x̂ sums to 0).
    let weights = Tensor::constant(ndarray::Array2::from_shape_fn(
        (rows, features),
        |(i, j)| ((i + 3 * j) as f64 * 0.11).cos(),
    ));
    let check = |rows_in_mean: f64, options: &GradCheckOptions| {
        let report = check_grads(
            &params,
            |p| {
                Ok(batch_norm_op(p.get("x")?, rows_in_mean)?
                    .mul(&weights)?
                    .sum_all())
            },
            options,
        )
        .unwrap();
        report.passed()
    };
    let loose = GradCheckOptions::default();
    // A larger step: the check needs the numeric side accurate to 1e-7, and a step of 1e-6
    // leaves rounding of 1e-5 relative in a loss over 1,500 rows.
    let tight = GradCheckOptions {
        eps: 1e-4,
        rtol: 1e-7,
        atol: 1e-9,
        ..GradCheckOptions::default()
    };
    let n = rows as f64;
    assert!(
        check(n, &loose) && check(n, &tight),
        "the right backward passes both"
    );
    assert!(
        check(n - 1.0, &loose),
        "rtol 1e-3 cannot see the factor N/(N-1)"
    );
    assert!(!check(n - 1.0, &tight), "rtol 1e-7 can");
}

// Exercise 8: keep an embedding table fixed, as a frozen param or as a buffer. Both leave it
// unchanged and give it no gradient entry; the difference is where it lives: among the
// params (saved there, trainable again by dropping it from the frozen set) or in `state`
// (a constant by construction, as PyTorch's `register_buffer`).
#[test]
fn exercise_8_a_frozen_param_and_a_buffer_both_stay_put_in_their_own_collections() {
    use tapegrad::nn::{Embed, FrozenEmbed};
    use tapegrad::optim::{Optimizer, Sgd};
    use tapegrad::{ParamTensors, softmax_cross_entropy};

    struct Classifier {
        frozen_as_buffer: bool,
    }
    impl Module<f64> for Classifier {
        type Input = ndarray::ArrayD<usize>;
        type Output = Tensor<f64>;
        fn kind(&self) -> &'static str {
            "Classifier"
        }
        fn forward(
            &self,
            scope: &mut Scope<'_, f64>,
            ids: &ndarray::ArrayD<usize>,
        ) -> Result<Tensor<f64>> {
            let rows = match self.frozen_as_buffer {
                true => scope.call(&FrozenEmbed::new(5, 3), ids)?,
                false => scope.call(&Embed::new(5, 3), ids)?,
            };
            scope.call(&Dense::new(2), &rows.reshape(&[ids.len(), 3])?)
        }
    }
    let ids = ndarray::ArrayD::from_shape_vec(vec![4], vec![0, 3, 1, 3]).unwrap();
    let labels = [0, 1, 1, 0];
    for frozen_as_buffer in [false, true] {
        let model = Classifier { frozen_as_buffer };
        let mut variables = model.init(0, &ids).unwrap();
        let table_path = match frozen_as_buffer {
            true => "state/FrozenEmbed_0/embedding",
            false => "params/Embed_0/embedding",
        };
        let table = variables.get(table_path).unwrap().clone();
        let mut sgd = Sgd::new(0.5);
        for _ in 0..3 {
            // The frozen param is split off and read as a constant.
            let (frozen, trainable) = variables
                .params()
                .partition(|path| path.starts_with("Embed_0"));
            let (_, grads) = value_and_grad(&trainable, |p: &ParamTensors<f64>| {
                let all = p.with_frozen(&frozen)?;
                let (logits, _) =
                    model.apply_tracked(&all, &variables, &ids, &ApplyOptions::eval())?;
                softmax_cross_entropy(&logits, &labels)
            })
            .unwrap();
            assert!(
                grads.paths().all(|p| !p.contains("mbed")),
                "no entry for the table"
            );
            let mut updated = trainable.clone();
            sgd.update(&mut updated, &grads).unwrap();
            variables = variables
                .clone()
                .with_params(updated.merged(&frozen).unwrap());
        }
        assert_eq!(
            variables.get(table_path).unwrap(),
            &table,
            "the table did not move"
        );
        assert_ne!(variables.get("params/Dense_0/kernel"), None);
    }
}

// Exercise 9: a convolution by im2col, with tapegrad's ops: each output position's window
// (a VALID 2×2 window, stride 1) gathered into a row of patches by slicing, then one matrix
// product with the kernel as a `(kh·kw·C, O)` matrix. Its gradients are the convolution's.
fn conv_by_im2col(x: &Tensor<f64>, kernel: &Tensor<f64>) -> Result<Tensor<f64>> {
    let (b, h, w, c) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (kh, kw, o) = (kernel.shape()[0], kernel.shape()[1], kernel.shape()[3]);
    let (oh, ow) = (h - kh + 1, w - kw + 1);
    let mut taps = Vec::new();
    for i in 0..kh {
        for j in 0..kw {
            // The input shifted by the tap (i, j): every output position's value of that tap.
            let tap = x.slice_axis(1, i, i + oh)?.slice_axis(2, j, j + ow)?;
            taps.push(tap.reshape(&[b * oh * ow, c])?);
        }
    }
    let patches = Tensor::concat(&taps.iter().collect::<Vec<_>>(), 1)?; // (B·OH·OW, kh·kw·C)
    let matrix = kernel.reshape(&[kh * kw * c, o])?;
    patches.matmul(&matrix)?.reshape(&[b, oh, ow, o])
}

#[test]
fn exercise_9_a_convolution_by_im2col_has_the_convolutions_gradients() {
    let x = ndarray::ArrayD::from_shape_fn(vec![2, 4, 5, 3], |i| {
        ((i[0] * 60 + i[1] * 15 + i[2] * 3 + i[3]) as f64 * 0.3).sin()
    });
    let k = ndarray::ArrayD::from_shape_fn(vec![2, 2, 3, 4], |i| {
        ((i[0] * 24 + i[1] * 12 + i[2] * 4 + i[3]) as f64 * 0.7).cos()
    });
    let valid = tapegrad::ConvOptions {
        padding: tapegrad::Padding::Valid,
        ..Default::default()
    };
    let weights = ndarray::ArrayD::from_shape_fn(vec![2, 3, 4, 4], |i| {
        (i[1] * 16 + i[2] * 4 + i[3] + i[0]) as f64 * 0.05
    });
    let run = |by_hand: bool| {
        let tape = tapegrad::Tape::<f64>::new();
        let (tx, tk) = (tape.leaf("x", &x), tape.leaf("k", &k));
        let y = match by_hand {
            true => conv_by_im2col(&tx, &tk).unwrap(),
            false => tx.conv2d(&tk, &valid).unwrap(),
        };
        let loss = y.mul(&Tensor::constant(&weights)).unwrap().sum_all();
        let grads = loss.backward().unwrap();
        [
            y.value().clone(),
            grads.wrt(&tx).unwrap(),
            grads.wrt(&tk).unwrap(),
        ]
    };
    let (mine, theirs) = (run(true), run(false));
    for (a, b) in mine.iter().zip(&theirs) {
        assert_eq!(a.shape(), b.shape());
        let gap = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(gap < 1e-12, "{gap:e}");
    }
}

// The capstone: in evaluation mode the running statistics change the loss, yet the gradients
// have an entry for every param and none for them. A property over random batches and
// random shifts of the running mean, which fails for a layer that lets them through.
proptest! {
    #![proptest_config(tapegrad::testing::config(32))]

    #[test]
    fn capstone_running_statistics_move_the_loss_but_never_get_a_gradient(
        x in tapegrad::testing::arrays::<f64>(vec![6, 3], -2.0..2.0),
        shift in 0.1..2.0f64,
    ) {
        let model = tapegrad::nn::Mlp::new(&[4], 3).with_batch_norm(BatchNorm::new());
        let x = Tensor::constant(&x);
        let variables = model.init(0, &x).unwrap();
        let mut shifted = variables.clone();
        let mean = shifted.get("batch_stats/BatchNorm_0/mean").unwrap().mapv(|m| m + shift);
        shifted.insert("batch_stats", "BatchNorm_0/mean", mean).unwrap();
        let loss = |vars: &tapegrad::Variables<f64>| {
            value_and_grad(vars.params(), |p| {
                let (logits, _) = model.apply_tracked(p, vars, &x, &ApplyOptions::eval())?;
                tapegrad::softmax_cross_entropy(&logits, &[0, 1, 2, 0, 1, 2])
            })
            .unwrap()
        };
        let ((before, grads), (after, _)) = (loss(&variables), loss(&shifted));
        prop_assert_ne!(before, after, "the statistics are in the loss");
        let keys: Vec<&str> = grads.paths().collect();
        prop_assert_eq!(keys, variables.params().paths().collect::<Vec<_>>());
    }
}

// Exercise 10: `psum`'s VJP, checked by finite differences over two replicas. Replica `r`
// holds `x_r` and computes `⟨c_r, psum(x)⟩`; the loss is the sum over replicas. Moving `x_0`
// moves every replica's `psum`, so `∂L/∂x_0 = Σ_r c_r`: the VJP must all-reduce the gradient,
// which a VJP returning `c_0` alone would not.
#[test]
fn exercise_10_psums_vjp_is_the_sum_of_every_replicas_cotangent() {
    use std::rc::Rc;
    use tapegrad::replicas::{Communicator, InProcess, ReduceOp, ReplicaAxis};

    let xs = [arr1(&[0.5, -1.0, 2.0]), arr1(&[1.5, 0.25, -0.75])];
    let cs = [arr1(&[1.0, 2.0, 3.0]), arr1(&[-0.5, 0.5, 4.0])];
    // Every replica's loss summed, and replica 0's gradient, for the inputs `xs`.
    let run = |xs: [Array1<f64>; 2]| -> (f64, Array1<f64>) {
        std::thread::scope(|threads| {
            let handles: Vec<_> = InProcess::group(2)
                .into_iter()
                .enumerate()
                .map(|(r, communicator)| {
                    let (x, c) = (xs[r].clone(), cs[r].clone());
                    threads.spawn(move || {
                        let communicator: Rc<dyn Communicator> = Rc::new(communicator);
                        let axis = ReplicaAxis::new("replicas", Rc::clone(&communicator));
                        let tape = tapegrad::Tape::new();
                        let leaf = tape.leaf("x", x);
                        let loss = leaf
                            .psum(&axis)
                            .unwrap()
                            .mul(&Tensor::constant(c))
                            .unwrap()
                            .sum_all();
                        let mut total = [loss.item().unwrap()];
                        communicator.all_reduce(&mut total, ReduceOp::Sum).unwrap();
                        let gradient = loss.backward().unwrap().wrt(&leaf).unwrap();
                        (
                            total[0],
                            gradient.into_dimensionality::<ndarray::Ix1>().unwrap(),
                        )
                    })
                })
                .collect();
            let mut results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            results.swap_remove(0)
        })
    };
    let (_, analytic) = run(xs.clone());
    let h = 1e-6;
    for i in 0..3 {
        let mut plus = xs.clone();
        plus[0][i] += h;
        let mut minus = xs.clone();
        minus[0][i] -= h;
        let numeric = (run(plus).0 - run(minus).0) / (2.0 * h);
        assert!(
            (analytic[i] - numeric).abs() < 1e-8,
            "{i}: {} vs {numeric}",
            analytic[i]
        );
        assert!((analytic[i] - (cs[0][i] + cs[1][i])).abs() < 1e-12);
    }
}
