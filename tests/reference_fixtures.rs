//! Two training steps matched against float64 reference runs computed by PyTorch and by
//! JAX/Flax (which agree to ~1e-15): an MLP with two BatchNorms, and the same MLP fed by a
//! frozen embedding table held in the `state` collection (a PyTorch `register_buffer`).
//! The format is described in the benchmark workload (section 9); every recorded array is
//! matched to `1e-10 · max(1, max|value|)`.

use ndarray::ArrayD;
use tapegrad::nn::{Activation, BatchNorm, Conv, Dense, GlobalAvgPool, Mlp, Pool, Sequential};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{
    ApplyOptions, Fusion, Module, ModuleExt, Mutable, Params, Result, Scope, Tensor, Variables,
    softmax_cross_entropy, value_and_grad, value_and_grad_with_aux,
};

#[allow(dead_code)] // shared with the second-order replay, which uses the rest
mod fixture_file;
use fixture_file::{Fixture, load};

fn mlp() -> Mlp {
    Mlp::new(&[7, 7], 3).with_batch_norm(BatchNorm::new().momentum(0.9).epsilon(1e-5))
}

/// The embed variant: ids (B, T) -> rows of the frozen `state/embedding` -> flatten to
/// (B, T·E) -> the same MLP, its layers at the root (`Dense_0`, …) as in the reference.
struct EmbedMlp {
    vocab: usize,
    width: usize,
}

impl Module<f64> for EmbedMlp {
    type Input = ArrayD<usize>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "EmbedMlp"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, ids: &ArrayD<usize>) -> Result<Tensor<f64>> {
        let table = scope.variable(
            "state",
            "embedding",
            &[self.vocab, self.width],
            tapegrad::nn::init::normal(1.0),
        )?;
        let rows = table.value().gather_rows(ids)?;
        let x = rows.reshape(&[ids.shape()[0], ids.shape()[1] * self.width])?;
        mlp().forward(scope, &x)
    }
}

/// Runs the recorded training steps of `model` on `input` and checks every array.
fn replay<M: Module<f64, Output = Tensor<f64>>>(fixture: &Fixture, model: &M, input: &M::Input) {
    let labels = fixture.labels();
    let mut vars = fixture.variables();
    let initial_state = vars.collection("state").cloned();
    let mut sgd = Sgd::new(0.1).momentum(0.9);
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    for step in 1..=fixture.steps() {
        let key = |name: &str| format!("step_{step}/{name}");
        let (loss, (logits, updates), grads) = value_and_grad_with_aux(vars.params(), |p| {
            let (logits, updates) = model.apply_tracked(p, &vars, input, &train)?;
            Ok((softmax_cross_entropy(&logits, &labels)?, (logits, updates)))
        })
        .unwrap();
        fixture.check(&key("train_logits"), logits.value());
        fixture.check(&key("loss"), &ArrayD::from_elem(vec![], loss));
        // Only params have gradients: exactly the recorded `grads/params/*` keys.
        assert_eq!(
            grads.paths().collect::<Vec<_>>(),
            vars.params().paths().collect::<Vec<_>>()
        );
        for (path, g) in grads.iter() {
            fixture.check(&key(&format!("grads/params/{path}")), g);
        }
        for (path, value) in updates.collection("batch_stats").unwrap().iter() {
            fixture.check(&key(&format!("batch_stats/{path}")), value);
        }

        let params_before = vars.params().clone();
        sgd.update(vars.params_mut(), &grads).unwrap();
        vars.merge(updates).unwrap();
        for (path, p) in vars.params().iter() {
            fixture.check(&key(&format!("params/{path}")), p);
            fixture.check(
                &key(&format!("momentum/params/{path}")),
                sgd.velocity(path).unwrap(),
            );
        }

        let (eval_logits, _) = model.apply(&vars, input, &ApplyOptions::eval()).unwrap();
        fixture.check(&key("eval_logits"), eval_logits.value());
        let pre_update = vars.clone().with_params(params_before);
        let (eval_logits, _) = model
            .apply(&pre_update, input, &ApplyOptions::eval())
            .unwrap();
        fixture.check(&key("eval_logits_pre_update_params"), eval_logits.value());

        if let Some(initial) = &initial_state {
            // The frozen table is bit-identical after every step.
            assert_eq!(vars.collection("state"), Some(initial));
            fixture.check(
                &key("state/embedding"),
                vars.get("state/embedding").unwrap(),
            );
        }
    }
}

#[test]
fn mlp_with_batch_norm_matches_pytorch_and_jax() {
    let fixture = load("mlp_tiny_seed0.json");
    let x = Tensor::constant(fixture.get("inputs/x").clone());
    replay(&fixture, &mlp(), &x);
}

#[test]
fn frozen_embedding_mlp_matches_pytorch_and_jax() {
    let fixture = load("embed_tiny_seed0.json");
    let ids = fixture.get("inputs/ids").mapv(|v| v as usize);
    let table = fixture.get("state/embedding");
    replay(
        &fixture,
        &EmbedMlp {
            vocab: table.shape()[0],
            width: table.shape()[1],
        },
        &ids,
    );
}

#[test]
fn the_frozen_table_would_get_the_recorded_scatter_add_gradient_if_trainable() {
    // Counterfactual: treat the table as a param for one gradient evaluation.
    let fixture = load("embed_tiny_seed0.json");
    let ids = fixture.get("inputs/ids").mapv(|v| v as usize);
    let vars = fixture.variables();
    let table = fixture.get("state/embedding").clone();
    let params = vars
        .params()
        .merged(
            &[("table".to_string(), table.clone())]
                .into_iter()
                .collect::<Params<f64>>(),
        )
        .unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let (_, grads) = value_and_grad(&params, |p| {
        let rows = p.get("table")?.gather_rows(&ids)?;
        let x = rows.reshape(&[ids.shape()[0], ids.shape()[1] * table.shape()[1]])?;
        let (logits, _) = mlp().apply_tracked(p, &vars, &x, &train)?;
        softmax_cross_entropy(&logits, &fixture.labels())
    })
    .unwrap();
    fixture.check(
        "counterfactual/grads/state/embedding",
        grads.get("table").unwrap(),
    );
}

/// The CNN of workload section 10, built from the public layers as a user would: Conv →
/// BatchNorm → ReLU → max pool, Conv → BatchNorm → ReLU → global average, Dense. BatchNorm on
/// `(B, H, W, C)` normalises each channel over the batch and every pixel.
fn cnn() -> Sequential<f64> {
    let bn = || BatchNorm::new().momentum(0.9).epsilon(1e-5);
    Sequential::new()
        .push(Conv::new(3, [3, 3]))
        .push(bn())
        .push(Activation::Relu)
        .push(Pool::max([2, 2]))
        .push(Conv::new(4, [3, 3]))
        .push(bn())
        .push(Activation::Relu)
        .push(GlobalAvgPool)
        .push(Dense::new(3))
}

#[test]
fn cnn_with_batch_norm_matches_pytorch_and_flax() {
    let fixture = load("cnn_tiny_seed0.json");
    let x = Tensor::constant(fixture.get("inputs/x").clone());
    let model = cnn();
    // The layers' variables are exactly the fixture's.
    let initialised = model.init(0, &x).unwrap();
    let names = |v: &Variables<f64>| {
        v.iter()
            .map(|(n, a)| (n, a.shape().to_vec()))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&initialised), names(&fixture.variables()));
    for fusion in [Fusion::On, Fusion::Off] {
        fusion.run(|| replay(&fixture, &model, &x));
    }
}
