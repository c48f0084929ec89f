//! Higher orders with buffers constant at every order.
//!
//! Every layer passes every check of `check_grads` at order 2 in both modes (tangents and
//! Hessian-vector products against finite differences, tangents against gradients), with
//! fusion on and off, and its buffers are held fixed throughout. Hessians are symmetric and
//! the two ways to a Hessian-vector product agree. Eval-mode running statistics change a
//! Hessian-vector product yet never appear in it; no derivative writes a collection the
//! caller did not make mutable; a gradient-penalty step updates the running statistics once;
//! an op without a rule fails naming the op and the order; recomputed blocks differentiate
//! twice like the others.

use ndarray::{ArrayD, arr1};
use proptest::prelude::*;
use tapegrad::gradcheck::{GradCheckOptions, GradCheckReport, check_model};
use tapegrad::nn::{
    Activation, BatchNorm, Conv, Dense, Dropout, Embed, Flatten, FrozenEmbed, Mlp, Pool, Remat,
    Sequential,
};
use tapegrad::testing::arrays;
use tapegrad::{
    ApplyOptions, Error, Fusion, Module, ModuleExt, Mutable, Params, Result, Scope, Tensor,
    custom_op, grad_of, hessian, hvp, hvp_reverse_over_reverse, jvp, jvp_with_aux, mse,
    softmax_cross_entropy, testing, value_and_grad_with_aux,
};

fn train() -> ApplyOptions {
    ApplyOptions::train()
        .mutable(Mutable::only(["batch_stats"]))
        .rng("dropout", 5)
}

fn passes(report: &GradCheckReport, what: &str) -> std::result::Result<(), TestCaseError> {
    prop_assert!(report.passed(), "{what}:\n{report}");
    Ok(())
}

/// `model` on `x` under every check, with fusion on and off.
fn every_check<M>(
    model: &M,
    x: &M::Input,
    options: &ApplyOptions,
    seed: u64,
    loss: impl Fn(&Tensor<f64>) -> Result<Tensor<f64>> + Copy,
    what: &str,
) -> std::result::Result<(), TestCaseError>
where
    M: Module<f64, Output = Tensor<f64>>,
{
    let variables = model
        .init(seed, x)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for fusion in [Fusion::On, Fusion::Off] {
        let report = fusion
            .run(|| {
                check_model(
                    model,
                    &variables,
                    x,
                    options,
                    loss,
                    &GradCheckOptions::second_order(),
                )
            })
            .map_err(|e| TestCaseError::fail(format!("{what}: {e}")))?;
        passes(&report, what)?;
    }
    Ok(())
}

/// A loss that weighs every output differently, so that no error cancels in a sum.
fn weighted(y: &Tensor<f64>) -> Result<Tensor<f64>> {
    let w: Vec<f64> = (0..y.len())
        .map(|i| 1.0 + (i as f64 * 0.61).sin())
        .collect();
    Ok(y.mul(&Tensor::from_vec(y.shape(), w)?)?.sum_all())
}

/// A smooth loss for layers whose output is piecewise linear in the params: its own
/// curvature makes the Hessian-vector products worth checking.
fn smooth(y: &Tensor<f64>) -> Result<Tensor<f64>> {
    weighted(&y.tanh().square())
}

/// An embedding classifier: ids -> rows of a trainable or frozen table -> Dense.
struct Embedded {
    frozen: bool,
}

impl Module<f64> for Embedded {
    type Input = ArrayD<usize>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "Embedded"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, ids: &ArrayD<usize>) -> Result<Tensor<f64>> {
        let rows = match self.frozen {
            true => scope.call(&FrozenEmbed::new(4, 3), ids)?,
            false => scope.call(&Embed::new(4, 3), ids)?,
        };
        let flat = rows.reshape(&[ids.shape()[0], ids.shape()[1] * 3])?;
        scope.call(&Dense::new(2), &flat.tanh())
    }
}

proptest! {
    #![proptest_config(testing::config(16))]

    #[test]
    fn dense_batch_norm_and_dropout_pass_every_check(
        x in arrays::<f64>(vec![5, 3], -2.0..2.0),
        labels in prop::collection::vec(0..3usize, 5),
        seed in any::<u64>(),
    ) {
        let mlp = Mlp::new(&[4], 3).with_batch_norm(BatchNorm::new().momentum(0.8));
        let x = Tensor::constant(&x);
        let ce = |y: &Tensor<f64>| softmax_cross_entropy(y, &labels);
        every_check(&mlp, &x, &train(), seed, ce, "Dense + BatchNorm (train)")?;
        every_check(&mlp, &x, &ApplyOptions::eval(), seed, ce, "Dense + BatchNorm (eval)")?;
        let dropout = Sequential::new().push(Dense::new(4)).push(Activation::Tanh).push(Dropout::new(0.5)).push(Dense::new(2));
        every_check(&dropout, &x, &train(), seed, smooth, "Dropout with a fixed mask")?;
        let target = Tensor::constant(ArrayD::from_elem(vec![5, 2], 0.3));
        let dense = Sequential::new().push(Dense::new(2)).push(Activation::Tanh);
        every_check(&dense, &x, &ApplyOptions::eval(), seed, |y| mse(y, &target), "mse")?;
    }

    #[test]
    fn convolution_and_both_poolings_pass_every_check(
        x in arrays::<f64>(vec![2, 5, 5, 2], -2.0..2.0),
        seed in any::<u64>(),
    ) {
        let x = Tensor::constant(&x);
        // Two convolutions, so that one differentiates its input too.
        let cnn = |pool: Pool| Sequential::new()
            .push(Conv::new(3, [3, 3]))
            .push(BatchNorm::new().momentum(0.8))
            .push(Activation::Tanh)
            .push(Conv::new(2, [2, 2]))
            .push(pool)
            .push(Flatten::new())
            .push(Dense::new(2));
        every_check(&cnn(Pool::max([2, 2])), &x, &train(), seed, weighted, "Conv + BatchNorm + max pool")?;
        every_check(&cnn(Pool::average([2, 2])), &x, &train(), seed, weighted, "Conv + BatchNorm + avg pool")?;
    }

    #[test]
    fn embeddings_pass_every_check(
        ids in prop::collection::vec(0..4usize, 6),
        seed in any::<u64>(),
    ) {
        let ids = ArrayD::from_shape_vec(vec![3, 2], ids).unwrap();
        for frozen in [false, true] {
            let what = if frozen { "FrozenEmbed" } else { "Embed" };
            every_check(&Embedded { frozen }, &ids, &ApplyOptions::eval(), seed, smooth, what)?;
        }
    }

    #[test]
    fn hessians_are_symmetric_and_both_hvp_modes_agree(
        x in arrays::<f64>(vec![6, 3], -2.0..2.0),
        labels in prop::collection::vec(0..3usize, 6),
        v_seed in any::<u64>(),
    ) {
        let model = Mlp::new(&[4], 3).with_batch_norm(BatchNorm::new().momentum(0.8));
        let x = Tensor::constant(&x);
        let variables = model.init(1, &x).unwrap();
        let loss = |p: &tapegrad::ParamTensors<f64>| {
            softmax_cross_entropy(&model.apply_tracked(p, &variables, &x, &train())?.0, &labels)
        };
        let h = hessian(variables.params(), loss).unwrap();
        let largest = h.matrix.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let asymmetry = (&h.matrix - &h.matrix.t()).iter().fold(0.0f64, |m, v| m.max(v.abs()));
        prop_assert!(asymmetry <= 1e-12 * largest, "asymmetry {asymmetry:e}");

        let mut rng = tapegrad::SplitMix64::new(v_seed);
        let v: Params<f64> = variables.params().iter().map(|(p, a)| (p.to_string(), a.mapv(|_| rng.normal()))).collect();
        let forward = hvp(variables.params(), &v, loss).unwrap();
        let reverse = hvp_reverse_over_reverse(variables.params(), &v, loss).unwrap();
        // The fused nodes' closed forms against their definitions, at second order.
        let composite = Fusion::Off.run(|| hvp(variables.params(), &v, loss)).unwrap();
        // The Hessian times v, a third way.
        let flat_v: Vec<f64> = v.iter().flat_map(|(_, a)| a.iter().copied().collect::<Vec<_>>()).collect();
        let hv = h.matrix.dot(&ndarray::Array1::from(flat_v));
        let flat = |g: &tapegrad::Grads<f64>| g.iter().flat_map(|(_, a)| a.iter().copied().collect::<Vec<_>>()).collect::<Vec<_>>();
        let together = flat(&forward).into_iter().zip(flat(&reverse)).zip(flat(&composite));
        for (((f, r), c), m) in together.zip(hv.iter()) {
            prop_assert!((f - r).abs() <= 1e-12 * largest, "forward {f} reverse {r}");
            prop_assert!((f - c).abs() <= 1e-12 * largest, "fused {f} composite {c}");
            prop_assert!((f - m).abs() <= 1e-12 * largest * 10.0, "forward {f} matrix {m}");
        }
    }
}

/// The MLP of the reference runs, its variables, a batch and labels.
fn mlp_case() -> (Mlp, tapegrad::Variables<f64>, Tensor<f64>, Vec<usize>) {
    let model = Mlp::new(&[5, 4], 3).with_batch_norm(BatchNorm::new().momentum(0.8));
    let x = Tensor::constant(ArrayD::from_shape_fn(vec![6, 3], |i| {
        ((i[0] * 3 + i[1]) as f64 * 0.7).sin()
    }));
    let variables = model.init(3, &x).unwrap();
    (model, variables, x, vec![0, 1, 2, 2, 1, 0])
}

fn unit_tangents(params: &Params<f64>) -> Params<f64> {
    params
        .iter()
        .map(|(p, a)| (p.to_string(), a.mapv(|_| 0.5)))
        .collect()
}

#[test]
fn eval_mode_running_statistics_change_the_hvp_but_never_appear_in_it() {
    let (model, variables, x, labels) = mlp_case();
    let v = unit_tangents(variables.params());
    let hvp_with = |vars: &tapegrad::Variables<f64>| {
        hvp(vars.params(), &v, |p| {
            let (logits, _) = model.apply_tracked(p, vars, &x, &ApplyOptions::eval())?;
            softmax_cross_entropy(&logits, &labels)
        })
        .unwrap()
    };
    let mut shifted = variables.clone();
    for (_, value) in shifted.collection("batch_stats").cloned().unwrap().iter() {
        assert!(!value.is_empty());
    }
    let mut stats = shifted.collection("batch_stats").cloned().unwrap();
    for (path, value) in stats.iter_mut() {
        if path.ends_with("mean") {
            value.mapv_inplace(|m| m + 0.7);
        }
    }
    for (path, value) in stats.iter() {
        shifted.insert("batch_stats", path, value.clone()).unwrap();
    }
    let (before, after) = (hvp_with(&variables), hvp_with(&shifted));
    assert_ne!(before, after, "the running statistics enter the value");
    for hv in [&before, &after] {
        assert_eq!(
            hv.paths().collect::<Vec<_>>(),
            variables.params().paths().collect::<Vec<_>>()
        );
    }
}

#[test]
fn no_derivative_writes_a_collection_unless_it_is_mutable() {
    let (model, variables, x, labels) = mlp_case();
    let v = unit_tangents(variables.params());
    let immutable = ApplyOptions::train(); // training mode, nothing mutable
    let loss = |options: &ApplyOptions| {
        let options = options.clone();
        let (model, variables, x, labels) = (&model, &variables, &x, &labels);
        move |p: &tapegrad::ParamTensors<f64>| {
            let (logits, _) = model.apply_tracked(p, variables, x, &options)?;
            softmax_cross_entropy(&logits, labels)
        }
    };
    // BatchNorm in training mode must write its statistics: refused, as at first order.
    for result in [
        hvp(variables.params(), &v, loss(&immutable)).map(|_| ()),
        hessian(variables.params(), loss(&immutable)).map(|_| ()),
        jvp(variables.params(), &v, loss(&immutable)).map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(Error::ImmutableCollection { .. })),
            "{result:?}"
        );
    }
    // Made mutable, the updates come back to the caller, and the variables are untouched.
    let before = variables.clone();
    let (_, _, updates) = jvp_with_aux(variables.params(), &v, |p| {
        let (logits, updates) = model.apply_tracked(p, &variables, &x, &train())?;
        Ok((softmax_cross_entropy(&logits, &labels)?, updates))
    })
    .unwrap();
    assert!(updates.get("batch_stats/BatchNorm_0/mean").is_some());
    assert_eq!(variables, before);
}

#[test]
fn a_gradient_penalty_step_updates_the_running_statistics_once() {
    let (model, variables, x, labels) = mlp_case();
    let plain = model.apply(&variables, &x, &train()).unwrap().1;
    let (_, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
        let x = p.track("x", x.value());
        let (logits, updates) = model.apply_tracked(p, &variables, &x, &train())?;
        let loss = softmax_cross_entropy(&logits, &labels)?;
        let dx = grad_of(&loss, &[&x])?.remove(0);
        Ok((loss.add(&dx.square().sum_all().mul_scalar(0.1))?, updates))
    })
    .unwrap();
    assert_eq!(updates, plain, "one forward's statistics, bit for bit");
    assert_eq!(
        grads.paths().collect::<Vec<_>>(),
        variables.params().paths().collect::<Vec<_>>()
    );
}

#[test]
fn an_op_without_a_rule_is_an_error_naming_it_and_the_order() {
    let params: Params<f64> = [("x", arr1(&[0.3, 0.9]))].into_iter().collect();
    let sin = |p: &tapegrad::ParamTensors<f64>| {
        let x = p.get("x")?;
        let input = x.value().clone();
        let y = custom_op("my_sin", &[x], x.value().mapv(f64::sin), move |g, _| {
            vec![Some(g * &input.mapv(f64::cos))]
        })?;
        Ok(y.sum_all())
    };
    // Once, in reverse mode, it is fine.
    assert!(tapegrad::value_and_grad(&params, sin).is_ok());
    match hvp(&params, &params, sin) {
        Err(Error::MissingRule {
            op: "my_sin",
            order: "second-order",
            ..
        }) => {}
        other => panic!("expected MissingRule, got {other:?}"),
    }
    match jvp(&params, &params, sin) {
        Err(Error::MissingRule {
            op: "my_sin",
            order: "forward-mode",
            ..
        }) => {}
        other => panic!("expected MissingRule, got {other:?}"),
    }
}

#[test]
fn recomputed_blocks_differentiate_twice_like_the_others() {
    let block = || {
        Sequential::new()
            .push(Dense::new(4))
            .push(BatchNorm::new().momentum(0.8))
            .push(Activation::Tanh)
    };
    let plain = Sequential::new()
        .push(block())
        .push(block())
        .push(Dense::new(3));
    let recomputed = Sequential::new()
        .push(Remat::new(block()))
        .push(Remat::new(block()))
        .push(Dense::new(3));
    let (_, _, x, labels) = mlp_case();
    let variables = plain.init(4, &x).unwrap();
    let v = unit_tangents(variables.params());
    let product = |model: &Sequential<f64>| {
        let (hv, updates) = tapegrad::hvp_with_aux(variables.params(), &v, |p| {
            let (logits, updates) = model.apply_tracked(p, &variables, &x, &train())?;
            Ok((softmax_cross_entropy(&logits, &labels)?, updates))
        })
        .unwrap();
        let (_, tangent) = jvp(variables.params(), &v, |p| {
            Ok(model.apply_tracked(p, &variables, &x, &train())?.0)
        })
        .unwrap();
        (hv, updates, tangent)
    };
    let (a, b) = (product(&plain), product(&recomputed));
    assert_eq!(a.1, b.1, "the same updates, once");
    for ((path, x), (_, y)) in a.0.iter().zip(b.0.iter()) {
        let worst = x
            .iter()
            .zip(y)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 1e-12, "{path}: {worst:e}");
    }
    let worst =
        a.2.iter()
            .zip(&b.2)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
    assert!(worst <= 1e-12, "tangents: {worst:e}");
}
