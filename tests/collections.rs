//! Variables, collections and the module API: init, apply, mutability, errors, determinism.

use ndarray::{ArrayD, arr1, arr2};
use tapegrad::nn::{Accumulator, BatchNorm, Dense, Dropout, FrozenEmbed, Mlp};
use tapegrad::{
    ApplyOptions, Error, Module, ModuleExt, Mutable, Result, Scope, Tensor, Variables,
    value_and_grad,
};

fn batch() -> Tensor<f64> {
    Tensor::constant(
        arr2(&[
            [1.0, -2.0, 0.5],
            [0.3, 4.0, -1.0],
            [2.0, 0.0, 1.5],
            [-1.0, 1.0, 0.0],
        ])
        .into_dyn(),
    )
}

fn bn_mlp() -> Mlp {
    Mlp::new(&[5], 2).with_batch_norm(BatchNorm::new().momentum(0.9))
}

fn names(vars: &Variables<f64>) -> Vec<String> {
    vars.iter().map(|(name, _)| name).collect()
}

#[test]
fn init_creates_every_collection_with_flax_names() {
    let vars = bn_mlp().init(0, &batch()).unwrap();
    assert_eq!(
        names(&vars),
        [
            "batch_stats/BatchNorm_0/mean",
            "batch_stats/BatchNorm_0/var",
            "params/BatchNorm_0/bias",
            "params/BatchNorm_0/scale",
            "params/Dense_0/bias",
            "params/Dense_0/kernel",
            "params/Dense_1/bias",
            "params/Dense_1/kernel",
        ]
    );
    assert_eq!(vars.get("params/Dense_0/kernel").unwrap().shape(), &[3, 5]);
}

#[test]
fn init_does_not_move_running_statistics_even_in_training_mode() {
    let train = ApplyOptions::train();
    let vars = bn_mlp().init_with(0, &batch(), &train).unwrap();
    assert!(
        vars.get("batch_stats/BatchNorm_0/mean")
            .unwrap()
            .iter()
            .all(|&v| v == 0.0)
    );
    assert!(
        vars.get("batch_stats/BatchNorm_0/var")
            .unwrap()
            .iter()
            .all(|&v| v == 1.0)
    );
}

#[test]
fn training_without_mutable_batch_stats_is_the_immutable_collection_error() {
    let vars = bn_mlp().init(0, &batch()).unwrap();
    let before = vars.clone();
    let err = bn_mlp()
        .apply(&vars, &batch(), &ApplyOptions::train())
        .unwrap_err();
    assert_eq!(
        err,
        Error::ImmutableCollection {
            collection: "batch_stats".into(),
            path: "BatchNorm_0/mean".into()
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cannot update variable \"BatchNorm_0/mean\" because collection \"batch_stats\" is immutable"),
        "{msg}"
    );
    assert_eq!(vars, before);
}

#[test]
fn evaluation_reads_running_statistics_and_returns_no_updates() {
    let vars = bn_mlp().init(0, &batch()).unwrap();
    let (_, updates) = bn_mlp()
        .apply(&vars, &batch(), &ApplyOptions::eval())
        .unwrap();
    assert!(updates.is_empty());
    // Mutable but in evaluation mode: the collection comes back whole and unchanged.
    let eval_mutable = ApplyOptions::eval().mutable(Mutable::only(["batch_stats"]));
    let (_, updates) = bn_mlp().apply(&vars, &batch(), &eval_mutable).unwrap();
    assert_eq!(
        updates.collection("batch_stats"),
        vars.collection("batch_stats")
    );
}

#[test]
fn deny_list_mutability() {
    let vars = bn_mlp().init(0, &batch()).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::all_except(["state"]));
    let (_, updates) = bn_mlp().apply(&vars, &batch(), &train).unwrap();
    assert_eq!(
        updates.collection_names().collect::<Vec<_>>(),
        ["batch_stats"]
    );
    let denied = ApplyOptions::train().mutable(Mutable::all_except(["batch_stats"]));
    assert!(matches!(
        bn_mlp().apply(&vars, &batch(), &denied),
        Err(Error::ImmutableCollection { .. })
    ));
}

#[test]
fn merge_replaces_running_statistics_and_nothing_else() {
    let mut vars = bn_mlp().init(0, &batch()).unwrap();
    let params_before = vars.params().clone();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let (_, updates) = bn_mlp().apply(&vars, &batch(), &train).unwrap();
    vars.merge(updates.clone()).unwrap();
    assert_eq!(vars.params(), &params_before);
    assert_eq!(
        vars.collection("batch_stats"),
        updates.collection("batch_stats")
    );
}

#[test]
fn merge_of_a_wrong_shape_changes_nothing() {
    let mut vars = bn_mlp().init(0, &batch()).unwrap();
    let before = vars.clone();
    let other = Mlp::new(&[7], 2)
        .with_batch_norm(BatchNorm::new())
        .init(0, &batch())
        .unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let (_, updates) = Mlp::new(&[7], 2)
        .with_batch_norm(BatchNorm::new())
        .apply(&other, &batch(), &train)
        .unwrap();
    let err = vars.merge(updates).unwrap_err();
    assert!(matches!(err, Error::VariableShape { .. }), "{err}");
    assert_eq!(vars, before);
}

#[test]
fn reading_a_variable_init_did_not_create_names_its_path() {
    let vars = Mlp::new(&[5], 2).init(0, &batch()).unwrap(); // no BatchNorm
    let err = bn_mlp()
        .apply(&vars, &batch(), &ApplyOptions::eval())
        .unwrap_err();
    assert_eq!(
        err,
        Error::MissingVariable {
            collection: "batch_stats".into(),
            path: "BatchNorm_0/mean".into()
        }
    );
    assert!(err.to_string().contains("batch_stats/BatchNorm_0/mean"));
}

#[test]
fn a_stored_shape_that_differs_names_both_shapes() {
    let mut vars = bn_mlp().init(0, &batch()).unwrap();
    vars.insert("params", "Dense_0/kernel", ArrayD::zeros(vec![4, 5]))
        .unwrap();
    let err = bn_mlp()
        .apply(&vars, &batch(), &ApplyOptions::eval())
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("params/Dense_0/kernel") && msg.contains("[4, 5]") && msg.contains("[3, 5]"),
        "{msg}"
    );
}

#[test]
fn a_missing_rng_stream_is_named() {
    let model = Dropout::new(0.5);
    let vars = ModuleExt::<f64>::init(&model, 0, &batch()).unwrap();
    let err = model
        .apply(&vars, &batch(), &ApplyOptions::train())
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingRng { stream, .. } if stream == "dropout"),
        "{err}"
    );
    let (y, _) = model
        .apply(&vars, &batch(), &ApplyOptions::train().rng("dropout", 1))
        .unwrap();
    // Kept elements are scaled by 1 / (1 - rate) = 2.
    for (&out, &inp) in y.value().iter().zip(batch().value()) {
        assert!(out == 0.0 || out == 2.0 * inp);
    }
}

/// A module that (wrongly) asks for a params variable through `variable`.
struct SneakyParam;

impl Module<f64> for SneakyParam {
    type Input = Tensor<f64>;
    type Output = Tensor<f64>;
    fn kind(&self) -> &'static str {
        "SneakyParam"
    }
    fn forward(&self, scope: &mut Scope<'_, f64>, x: &Tensor<f64>) -> Result<Tensor<f64>> {
        let table = scope.variable("params", "table", &[3], tapegrad::nn::init::ones())?;
        x.mul(&table.value())
    }
}

#[test]
fn params_cannot_be_reached_through_variable() {
    let err = SneakyParam.init(0, &batch()).unwrap_err();
    assert!(matches!(err, Error::ReservedCollection { .. }), "{err}");
}

#[test]
fn same_seed_same_variables_and_paths_not_order_decide_streams() {
    let a = bn_mlp().init(7, &batch()).unwrap();
    let b = bn_mlp().init(7, &batch()).unwrap();
    assert_eq!(a, b);
    let c = bn_mlp().init(8, &batch()).unwrap();
    assert_ne!(
        a.get("params/Dense_0/kernel"),
        c.get("params/Dense_0/kernel")
    );
    // Two layers of the same shape at different paths get different values.
    let two = Mlp::new(&[3, 3], 3).init(7, &batch()).unwrap();
    assert_ne!(
        two.get("params/Dense_1/kernel"),
        two.get("params/Dense_2/kernel")
    );
    // The same path gets the same value whatever else the model creates before it.
    let wide = Mlp::new(&[5], 4).init(7, &batch()).unwrap();
    assert_eq!(
        wide.get("params/Dense_0/kernel"),
        a.get("params/Dense_0/kernel")
    );
}

#[test]
fn frozen_params_get_no_gradient_entry() {
    let vars = Mlp::new(&[4], 2).init(0, &batch()).unwrap();
    let (frozen, trainable) = vars.params().partition(|path| path.starts_with("Dense_0/"));
    let model = Mlp::new(&[4], 2);
    let (_, grads) = value_and_grad(&trainable, |p| {
        let (logits, _) = model.apply_tracked(
            &p.with_frozen(&frozen)?,
            &vars,
            &batch(),
            &ApplyOptions::eval(),
        )?;
        tapegrad::softmax_cross_entropy(&logits, &[0, 1, 1, 0])
    })
    .unwrap();
    assert_eq!(
        grads.paths().collect::<Vec<_>>(),
        ["Dense_1/bias", "Dense_1/kernel"]
    );
    // Forgetting to add the frozen params back is an error naming the first missing one.
    let err = value_and_grad(&trainable, |p| {
        let (logits, _) = model.apply_tracked(p, &vars, &batch(), &ApplyOptions::eval())?;
        Ok(logits.sum_all())
    })
    .unwrap_err();
    assert!(err.to_string().contains("params/Dense_0/"), "{err}");
}

#[test]
fn stateful_and_frozen_layers_keep_their_state_outside_params() {
    let vars = ModuleExt::<f64>::init(&Accumulator, 0, &batch()).unwrap();
    assert!(vars.params().is_empty());
    assert_eq!(
        vars.get("state/sum").unwrap(),
        &arr1(&[0.0, 0.0, 0.0]).into_dyn()
    );
    let ids = arr1(&[0usize, 2]).into_dyn();
    let vars = ModuleExt::<f64>::init(&FrozenEmbed::new(4, 3), 0, &ids).unwrap();
    assert_eq!(names(&vars), ["state/embedding"]);
}

#[test]
fn dense_keeps_leading_dimensions() {
    let x = Tensor::<f64>::constant(ArrayD::ones(vec![2, 3, 4]));
    let vars = Dense::new(5).init(0, &x).unwrap();
    let (y, _) = Dense::new(5)
        .apply(&vars, &x, &ApplyOptions::eval())
        .unwrap();
    assert_eq!(y.shape(), &[2, 3, 5]);
}

#[test]
fn params_grads_and_collections_iterate_by_reference_in_path_order() {
    let vars = bn_mlp().init(0, &batch()).unwrap();
    let params = vars.params();
    let by_loop: Vec<(&str, Vec<usize>)> = params
        .into_iter()
        .map(|(path, value)| (path, value.shape().to_vec()))
        .collect();
    let by_iter: Vec<(&str, Vec<usize>)> = params
        .iter()
        .map(|(p, v)| (p, v.shape().to_vec()))
        .collect();
    assert_eq!(by_loop, by_iter);
    assert_eq!(params.into_iter().len(), params.len());

    let (_, grads) = value_and_grad(params, |p| {
        let (logits, _) = bn_mlp().apply_tracked(p, &vars, &batch(), &ApplyOptions::eval())?;
        Ok(logits.sum_all())
    })
    .unwrap();
    let mut paths = Vec::new();
    for (path, gradient) in &grads {
        assert_eq!(gradient.shape(), params.get(path).unwrap().shape());
        paths.push(path);
    }
    assert_eq!(paths, params.paths().collect::<Vec<_>>());

    let stats = vars.collection("batch_stats").unwrap();
    let names: Vec<&str> = stats.into_iter().map(|(path, _)| path).collect();
    assert_eq!(names, ["BatchNorm_0/mean", "BatchNorm_0/var"]);
}

#[test]
fn arrays_of_any_dimension_views_and_references_are_accepted_as_they_are() {
    let matrix = arr2(&[[1.0, 2.0], [3.0, 4.0]]);
    let mut collection = tapegrad::Collection::<f64>::new();
    collection.insert("owned", matrix.clone());
    collection.insert("view", matrix.column(1));
    collection.insert("borrowed", &matrix);
    assert_eq!(collection.get("owned").unwrap(), &matrix.clone().into_dyn());
    assert_eq!(
        collection.get("view").unwrap(),
        &arr1(&[2.0, 4.0]).into_dyn()
    );
    assert_eq!(collection.get("borrowed").unwrap().shape(), [2, 2]);
    let params: tapegrad::Params<f64> = [("w", arr1(&[1.0]))].into_iter().collect();
    assert_eq!(params.paths().collect::<Vec<_>>(), ["w"]);
}
