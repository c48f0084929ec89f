//! The guarantee, by property test: only params are differentiated; every other collection
//! passes through a gradient computation as a constant and changes only through a mutable
//! apply, by exactly the moving average BatchNorm defines.

use std::cell::RefCell;

use ndarray::{ArrayD, Axis};
use proptest::prelude::*;
use tapegrad::gradcheck::{GradCheckOptions, check_model};
use tapegrad::nn::{Dense, Embed, FrozenEmbed};
use tapegrad::testing::{MlpCase, arrays, mlp_case};
use tapegrad::{
    ApplyOptions, Error, Module, ModuleExt, Mutable, Result, Scope, Tape, Tensor, Variables,
    softmax_cross_entropy, value_and_grad_with_aux,
};

fn train() -> ApplyOptions {
    ApplyOptions::train().mutable(Mutable::only(["batch_stats"]))
}

fn init(case: &MlpCase) -> Variables<f64> {
    case.variables()
}

/// An embedding classifier: ids (batch, tokens) -> table rows -> flatten -> Dense.
/// The table is trainable (`Embed`) or a constant in `state` (`FrozenEmbed`).
struct EmbedClassifier {
    vocab: usize,
    width: usize,
    classes: usize,
    frozen: bool,
}

impl Module<f64> for EmbedClassifier {
    type Input = ArrayD<usize>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "EmbedClassifier"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, ids: &ArrayD<usize>) -> Result<Tensor<f64>> {
        let rows = if self.frozen {
            scope.call(&FrozenEmbed::new(self.vocab, self.width), ids)?
        } else {
            scope.call(&Embed::new(self.vocab, self.width), ids)?
        };
        let flat = rows.reshape(&[ids.shape()[0], ids.shape()[1] * self.width])?;
        scope.call(&Dense::new(self.classes), &flat)
    }
}

fn embed_case() -> impl Strategy<Value = (usize, usize, ArrayD<usize>, Vec<usize>, bool, u64)> {
    (
        2..6usize,
        1..4usize,
        1..5usize,
        1..4usize,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_flat_map(|(vocab, width, batch, tokens, frozen, seed)| {
            (
                Just(vocab),
                Just(width),
                prop::collection::vec(0..vocab, batch * tokens)
                    .prop_map(move |v| ArrayD::from_shape_vec(vec![batch, tokens], v).unwrap()),
                prop::collection::vec(0..3usize, batch),
                Just(frozen),
                Just(seed),
            )
        })
}

proptest! {
    #![proptest_config(tapegrad::testing::config(128))]

    /// MLPs with and without BatchNorm in training mode, under cross-entropy: every param's
    /// gradient matches finite differences; batch_stats are held fixed and unchanged.
    #[test]
    fn mlp_gradients_match_finite_differences(case in mlp_case()) {
        let vars = init(&case);
        let report = check_model(&case.model(), &vars, &case.input(), &train(),
            |logits| softmax_cross_entropy(logits, &case.labels), &GradCheckOptions::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
        prop_assert_eq!(report.held_fixed.len(), usize::from(case.batch_norm.is_some()));
    }

    /// BatchNorm's output itself (not only a loss through it), under a random cotangent:
    /// this is where a plain sum would hide a wrong VJP, since each feature's normalised
    /// outputs sum to a constant.
    #[test]
    fn batch_norm_output_gradients_match_finite_differences(
        x in (2..6usize, 1..4usize).prop_flat_map(|(b, f)| arrays::<f64>(vec![b, f], -2.0..2.0)),
        momentum in 0.5..0.99f64,
    ) {
        let bn = tapegrad::nn::BatchNorm::new().momentum(momentum);
        let x = Tensor::constant(x);
        let mut vars = bn.init(0, &x).unwrap();
        // Non-trivial scale and bias, so that their gradients are not at a special point.
        for (i, v) in vars.params_mut().get_mut("scale").unwrap().iter_mut().enumerate() { *v = 0.5 + 0.3 * i as f64; }
        let report = check_model(&bn, &vars, &x, &train(), |y| Ok(y.clone()), &GradCheckOptions::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
    }

    /// Embedding classifiers with a trainable or a frozen table: gradients match finite
    /// differences; a frozen table has no gradient entry and is held fixed.
    #[test]
    fn embedding_gradients_match_finite_differences((vocab, width, ids, labels, frozen, seed) in embed_case()) {
        let model = EmbedClassifier { vocab, width, classes: 3, frozen };
        let vars = model.init(seed, &ids).unwrap();
        let report = check_model(&model, &vars, &ids, &ApplyOptions::eval(),
            |logits| softmax_cross_entropy(logits, &labels), &GradCheckOptions::default()).unwrap();
        prop_assert!(report.passed(), "{report}");
        let has_table_grad = report.get("Embed_0/embedding").is_some();
        prop_assert_eq!(has_table_grad, !frozen);
        prop_assert_eq!(report.held_fixed.is_empty(), !frozen);
    }

    /// Grads mirror params: the same key set, each gradient of its param's shape; and the
    /// same holds for the trainable part when some params are frozen.
    #[test]
    fn grads_mirror_params(case in mlp_case(), freeze_first in any::<bool>()) {
        let vars = init(&case);
        let model = case.model();
        let (frozen, trainable) = vars.params().partition(|p| freeze_first && p.starts_with("Dense_0/"));
        let (_, _, grads) = value_and_grad_with_aux(&trainable, |p| {
            let (logits, updates) = model.apply_tracked(&p.with_frozen(&frozen)?, &vars, &case.input(), &train())?;
            Ok((softmax_cross_entropy(&logits, &case.labels)?, updates))
        }).unwrap();
        prop_assert_eq!(grads.paths().collect::<Vec<_>>(), trainable.paths().collect::<Vec<_>>());
        for (path, g) in grads.iter() {
            prop_assert_eq!(g.shape(), trainable.get(path).unwrap().shape());
            prop_assert!(!path.starts_with("batch_stats") && !frozen.contains(path));
        }
    }

    /// Buffers pass through as constants: after value_and_grad every non-params collection
    /// of the input is bit-identical, and the tape's only leaves are the params.
    #[test]
    fn buffers_pass_through_as_constants(case in mlp_case()) {
        let vars = init(&case);
        let before = vars.clone();
        let model = case.model();
        let tape: RefCell<Option<Tape<f64>>> = RefCell::new(None);
        let (_, updates, _) = value_and_grad_with_aux(vars.params(), |p| {
            *tape.borrow_mut() = p.tape().cloned();
            let (logits, updates) = model.apply_tracked(p, &vars, &case.input(), &train())?;
            Ok((softmax_cross_entropy(&logits, &case.labels)?, updates))
        }).unwrap();
        prop_assert_eq!(&vars, &before);
        let tape = tape.into_inner().expect("params are tracked");
        let leaves: Vec<String> = tape.entries().into_iter().filter(|e| e.op == "leaf").filter_map(|e| e.name).collect();
        prop_assert_eq!(leaves, vars.params().paths().map(String::from).collect::<Vec<_>>());
        // The running statistics did move, but only in the returned updates.
        if case.batch_norm.is_some() {
            prop_assert!(updates.collection("batch_stats") != vars.collection("batch_stats"));
        }
    }

    /// A mutable apply moves the running statistics by exactly
    /// `momentum * old + (1 - momentum) * batch`, computed here independently from the
    /// Dense layer's output; an immutable training apply is an error that changes nothing;
    /// an evaluation apply leaves them unchanged.
    #[test]
    fn running_statistics_follow_the_moving_average(
        x in (2..7usize, 1..4usize).prop_flat_map(|(b, d)| arrays::<f64>(vec![b, d], -3.0..3.0)),
        momentum in 0.0..1.0f64,
        steps in 1..4usize,
    ) {
        // Dense then BatchNorm: the statistics are of the Dense output, which we recompute.
        let model = tapegrad::nn::Sequential::new().push(Dense::new(3)).push(tapegrad::nn::BatchNorm::new().momentum(momentum));
        let x = Tensor::constant(x);
        let mut vars = model.init(1, &x).unwrap();
        let (z, _) = Dense::new(3).apply(&vars_for_dense(&vars), &x, &ApplyOptions::eval()).unwrap();
        let z = z.value();
        let batch_mean = z.mean_axis(Axis(0)).unwrap();
        let batch_var = z.var_axis(Axis(0), 0.0); // ddof 0: biased
        let (mut mean, mut var) = (ArrayD::zeros(vec![3]), ArrayD::ones(vec![3]));
        for _ in 0..steps {
            let (_, updates) = model.apply(&vars, &x, &train()).unwrap();
            vars.merge(updates).unwrap();
            mean = &mean * momentum + &batch_mean * (1.0 - momentum);
            var = &var * momentum + &batch_var * (1.0 - momentum);
        }
        let close = |a: &ArrayD<f64>, b: &ArrayD<f64>| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + y.abs()));
        prop_assert!(close(vars.get("batch_stats/BatchNorm_0/mean").unwrap(), &mean));
        prop_assert!(close(vars.get("batch_stats/BatchNorm_0/var").unwrap(), &var));

        let before = vars.clone();
        let err = model.apply(&vars, &x, &ApplyOptions::train()).unwrap_err();
        prop_assert!(matches!(err, Error::ImmutableCollection { .. }), "{}", err);
        let (_, updates) = model.apply(&vars, &x, &ApplyOptions::eval()).unwrap();
        prop_assert!(updates.is_empty());
        prop_assert_eq!(&vars, &before);
    }
}

/// The Dense layer's own variables, moved from `Dense_0/...` to the root, so that it can be
/// applied alone.
fn vars_for_dense(vars: &Variables<f64>) -> Variables<f64> {
    let mut out = Variables::new();
    for name in ["kernel", "bias"] {
        out.insert(
            "params",
            name,
            vars.get(&format!("params/Dense_0/{name}")).unwrap().clone(),
        )
        .unwrap();
    }
    out
}
