//! The second-order reference run (benchmark workload, section 11), replayed to 1e-10: the
//! MLP with two BatchNorms of `mlp_tiny_seed0.json` at its first step, in float64, against
//! JAX (`jax.jvp`, forward-over-reverse, `jax.hessian`) and PyTorch (double backward,
//! `torch.func.jvp`), which agree to about 1e-14. Hessian-vector products of the training
//! loss (BatchNorm differentiated through its batch statistics) and of the evaluation loss
//! (running statistics constants), tangents of the logits in both modes, a gradient penalty
//! with respect to the input batch, and the whole Hessian; with fusion on and off. None of it
//! writes a running statistic.

use ndarray::ArrayD;
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::{
    ApplyOptions, Fusion, ModuleExt, Mutable, ParamTensors, Params, Result, Tensor, Variables,
    grad_of, hessian, hvp, hvp_reverse_over_reverse, jvp, softmax_cross_entropy, value_and_grad,
};

#[allow(dead_code)] // shared with the first-order replays, which use the rest
mod fixture_file;
use fixture_file::{Fixture, load};

const PARAMS: [&str; 10] = [
    "BatchNorm_0/bias",
    "BatchNorm_0/scale",
    "BatchNorm_1/bias",
    "BatchNorm_1/scale",
    "Dense_0/bias",
    "Dense_0/kernel",
    "Dense_1/bias",
    "Dense_1/kernel",
    "Dense_2/bias",
    "Dense_2/kernel",
];

struct Case {
    fixture: Fixture,
    model: Mlp,
    variables: Variables<f64>,
    x: ArrayD<f64>,
    labels: Vec<usize>,
    tangent: Params<f64>,
}

fn case() -> Case {
    let fixture = load("second_order_mlp_tiny_seed0.json");
    let model = Mlp::new(&[7, 7], 3).with_batch_norm(BatchNorm::new().momentum(0.9).epsilon(1e-5));
    let variables = fixture.variables();
    let x = fixture.get("inputs/x").clone();
    let labels = fixture.labels();
    let tangent = PARAMS
        .iter()
        .map(|path| {
            (
                path.to_string(),
                fixture.get(&format!("tangent/params/{path}")).clone(),
            )
        })
        .collect();
    Case {
        fixture,
        model,
        variables,
        x,
        labels,
        tangent,
    }
}

/// In training mode the statistics a forward computes are returned and dropped, as Flax's
/// functional convention does inside a derivative: `batch_stats` must be mutable for the
/// layer to run, and nothing is merged.
fn options(training: bool) -> ApplyOptions {
    match training {
        true => ApplyOptions::train().mutable(Mutable::only(["batch_stats"])),
        false => ApplyOptions::eval(),
    }
}

impl Case {
    fn logits(
        &self,
        p: &ParamTensors<f64>,
        x: &Tensor<f64>,
        training: bool,
    ) -> Result<Tensor<f64>> {
        Ok(self
            .model
            .apply_tracked(p, &self.variables, x, &options(training))?
            .0)
    }

    fn loss(&self, p: &ParamTensors<f64>, training: bool) -> Result<Tensor<f64>> {
        softmax_cross_entropy(
            &self.logits(p, &Tensor::constant(&self.x), training)?,
            &self.labels,
        )
    }

    fn check_keyed(&self, prefix: &str, values: impl Fn(&str) -> ArrayD<f64>) {
        for path in PARAMS {
            self.fixture
                .check(&format!("{prefix}/{path}"), &values(path));
        }
    }

    /// Nothing above wrote a running statistic.
    fn check_buffers_unchanged(&self) {
        for key in [
            "BatchNorm_0/mean",
            "BatchNorm_0/var",
            "BatchNorm_1/mean",
            "BatchNorm_1/var",
        ] {
            let now = self.variables.get(&format!("batch_stats/{key}")).unwrap();
            assert_eq!(
                now,
                self.fixture.get(&format!("after/batch_stats/{key}")),
                "{key}"
            );
        }
    }
}

fn both_fusions(check: impl Fn()) {
    for fusion in [Fusion::On, Fusion::Off] {
        fusion.run(&check);
    }
}

#[test]
fn hessian_vector_products_match_in_both_modes_of_batch_norm() {
    let case = case();
    both_fusions(|| {
        for (training, key) in [(true, "hvp_train/params"), (false, "hvp_eval/params")] {
            let f = |p: &ParamTensors<f64>| case.loss(p, training);
            let forward = hvp(case.variables.params(), &case.tangent, f).unwrap();
            case.check_keyed(key, |path| forward.get(path).unwrap().clone());
            let reverse =
                hvp_reverse_over_reverse(case.variables.params(), &case.tangent, f).unwrap();
            case.check_keyed(key, |path| reverse.get(path).unwrap().clone());
            assert_eq!(forward.paths().collect::<Vec<_>>(), PARAMS, "params only");
        }
        case.check_buffers_unchanged();
    });
}

#[test]
fn tangents_of_the_logits_match_in_both_modes() {
    let case = case();
    both_fusions(|| {
        for (training, key) in [(true, "jvp_train"), (false, "jvp_eval")] {
            let (logits, tangent) = jvp(case.variables.params(), &case.tangent, |p| {
                case.logits(p, &Tensor::constant(&case.x), training)
            })
            .unwrap();
            case.fixture.check(&format!("{key}/logits"), &logits);
            case.fixture
                .check(&format!("{key}/tangent_logits"), &tangent);
        }
        case.check_buffers_unchanged();
    });
}

#[test]
fn a_gradient_penalty_on_the_input_batch_matches() {
    let case = case();
    let lam = case.fixture.meta_number("lam");
    both_fusions(|| {
        let mut seen = None;
        let (value, grads) = value_and_grad(case.variables.params(), |p| {
            let x = p.track("x", &case.x);
            let loss = softmax_cross_entropy(&case.logits(p, &x, true)?, &case.labels)?;
            let dx = grad_of(&loss, &[&x])?.remove(0);
            let norm = dx.square().sum_all();
            seen = Some((loss.item()?, dx.value().clone(), norm.item()?));
            loss.add(&norm.mul_scalar(lam))
        })
        .unwrap();
        let (loss, input_grad, norm) = seen.unwrap();
        let scalar = |v: f64| ArrayD::from_elem(vec![], v);
        case.fixture.check("grad_penalty/value", &scalar(value));
        case.fixture.check("grad_penalty/loss", &scalar(loss));
        case.fixture.check("grad_penalty/input_grad", &input_grad);
        case.fixture
            .check("grad_penalty/input_grad_sq_norm", &scalar(norm));
        case.check_keyed("grad_penalty/grads/params", |path| {
            grads.get(path).unwrap().clone()
        });
        case.check_buffers_unchanged();
    });
}

#[test]
fn the_whole_hessian_matches_and_is_symmetric() {
    let case = case();
    both_fusions(|| {
        let h = hessian(case.variables.params(), |p| case.loss(p, true)).unwrap();
        let offsets: Vec<usize> = h.blocks.iter().map(|(_, offset, _)| *offset).collect();
        let expected: Vec<usize> = case
            .fixture
            .get("hessian_tiny/offsets")
            .iter()
            .map(|&o| o as usize)
            .collect();
        assert_eq!(offsets, expected[..expected.len() - 1]);
        case.fixture
            .check("hessian_tiny/hessian", &h.matrix.clone().into_dyn());
        let asymmetry = (&h.matrix - &h.matrix.t())
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(asymmetry <= 1e-12, "asymmetry {asymmetry:e}");
        case.check_buffers_unchanged();
    });
}
