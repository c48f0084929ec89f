//! PyTorch both ways: `BatchNorm::pytorch` against PyTorch's own running statistics, and
//! `export_pytorch` as the exact inverse of `import_pytorch_into`.
//!
//! The PyTorch values are committed fixtures (scripts/make_pytorch_bn_convention_fixture.py
//! and scripts/make_pytorch_cnn_fixture.py); `scripts/check_pytorch_export.py` loads an
//! exported file into PyTorch itself. These tests need neither Python nor PyTorch.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use tapegrad::checkpoint::{
    LoadMode, TorchLayer, TorchMapping, export_pytorch, import_pytorch_into, read,
};
use tapegrad::nn::{Activation, BatchNorm, Conv, Dense, Flatten, Mlp, Pool, Sequential};
use tapegrad::{ApplyOptions, Collection, Error, ModuleExt, Mutable};
use tapegrad::{Tensor, Variables};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The largest difference, relative to the magnitude of the expected value (at least 1).
fn worst_scaled_difference(got: &ArrayD<f64>, want: &ArrayD<f64>) -> f64 {
    assert_eq!(got.shape(), want.shape());
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

fn array(case: &Collection<f64>, name: &str) -> ArrayD<f64> {
    case.get(name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"))
        .clone()
}

/// PyTorch's `momentum=0.1` and `momentum=None`, on BatchNorm1d and BatchNorm2d: three
/// training steps from PyTorch's state, then evaluation, every recorded array matched.
#[test]
fn batch_norm_pytorch_follows_pytorchs_running_statistics() {
    let fixture: Variables<f64> = read(fixture("torch_bn_convention.safetensors")).unwrap();
    for (name, momentum) in [
        ("bn1d_momentum", Some(0.1)),
        ("bn1d_cumulative", None),
        ("bn2d_momentum", Some(0.1)),
        ("bn2d_cumulative", None),
    ] {
        let case = fixture.collection(name).unwrap();
        let layer = BatchNorm::pytorch(momentum);
        let first = Tensor::constant(array(case, "x/0"));
        let mut vars = layer.init(0, &first).unwrap();
        for (ours, theirs) in [("scale", "weight"), ("bias", "bias")] {
            vars.insert("params", ours, array(case, &format!("init/{theirs}")))
                .unwrap();
        }
        for (ours, theirs) in [
            ("mean", "running_mean"),
            ("var", "running_var"),
            ("num_batches_tracked", "num_batches_tracked"),
        ] {
            vars.insert("batch_stats", ours, array(case, &format!("init/{theirs}")))
                .unwrap();
        }
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        for step in 0..3 {
            let x = Tensor::constant(array(case, &format!("x/{step}")));
            let (y, updates) = layer.apply(&vars, &x, &train).unwrap();
            vars.merge(updates).unwrap();
            let worst = worst_scaled_difference(y.value(), &array(case, &format!("step/{step}/y")));
            assert!(worst <= 1e-12, "{name} step {step} output: {worst:e}");
            for (ours, theirs) in [
                ("mean", "running_mean"),
                ("var", "running_var"),
                ("num_batches_tracked", "num_batches_tracked"),
            ] {
                let got = vars.get(&format!("batch_stats/{ours}")).unwrap();
                let want = array(case, &format!("step/{step}/{theirs}"));
                let worst = worst_scaled_difference(got, &want);
                assert!(worst <= 1e-12, "{name} step {step} {theirs}: {worst:e}");
            }
        }
        let last = Tensor::constant(array(case, "x/2"));
        let (y, _) = layer.apply(&vars, &last, &ApplyOptions::eval()).unwrap();
        let worst = worst_scaled_difference(y.value(), &array(case, "eval/y"));
        assert!(worst <= 1e-12, "{name} eval output: {worst:e}");
    }
}

/// The two conventions really differ (so the test above could fail for Flax's rule).
#[test]
fn the_flax_convention_gives_other_running_statistics() {
    let x = Tensor::from_vec(&[4, 1], vec![1.0f64, 2.0, 3.0, 6.0]).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let var_after_one_step = |layer: BatchNorm| {
        let vars = layer.init(0, &x).unwrap();
        let (_, updates) = layer.apply(&vars, &x, &train).unwrap();
        updates.get("batch_stats/var").unwrap()[[0]]
    };
    let torch = var_after_one_step(BatchNorm::pytorch(Some(0.1)));
    let flax = var_after_one_step(BatchNorm::new().momentum(0.9));
    // Unbiased 14/3 against biased 3.5, each blended 0.1 into a running 1.
    assert!((torch - (0.9 + 14.0 / 30.0)).abs() < 1e-15, "{torch}");
    assert!((flax - (0.9 + 0.35)).abs() < 1e-15, "{flax}");
    assert!(BatchNorm::pytorch(Some(1.5)).init(0, &x).is_err());
}

/// The CNN of the PyTorch fixture, with PyTorch's BatchNorm convention.
fn torch_cnn() -> Sequential<f64> {
    let block = |model: Sequential<f64>, channels| {
        model
            .push(Conv::new(channels, [3, 3]))
            .push(BatchNorm::pytorch(Some(0.1)))
            .push(Activation::Relu)
            .push(Pool::max([2, 2]))
    };
    block(block(Sequential::new(), 3), 4)
        .push(Flatten::channels_first())
        .push(Dense::new(3))
}

#[test]
fn the_mapping_of_a_sequential_is_the_one_derived_from_pytorchs_file() {
    let derived = TorchMapping::derive_sequential(fixture("torch_cnn_bn.safetensors")).unwrap();
    assert_eq!(TorchMapping::of_sequential(&torch_cnn()), derived);
    // BatchNorm and ReLU as one layer stand for PyTorch's two modules.
    let fused = Sequential::<f64>::new()
        .push(Conv::new(3, [3, 3]))
        .push(BatchNorm::pytorch(Some(0.1)).with_relu())
        .push(Pool::max([2, 2]))
        .push(Conv::new(4, [3, 3]))
        .push(BatchNorm::pytorch(Some(0.1)).with_relu())
        .push(Pool::max([2, 2]))
        .push(Flatten::channels_first())
        .push(Dense::new(3));
    assert_eq!(TorchMapping::of_sequential(&fused), derived);
    let mlp = Mlp::new(&[7, 7], 3).with_batch_norm(BatchNorm::pytorch(Some(0.1)));
    let derived = TorchMapping::derive_sequential(fixture("torch_mlp_bn.safetensors")).unwrap();
    assert_eq!(TorchMapping::of_mlp(&mlp), derived);
}

/// Import PyTorch's CNN, export it, import the export: the same variables, bit for bit,
/// `num_batches_tracked` included; and the exported file holds PyTorch's own tensors.
#[test]
fn import_of_export_is_the_identity_bit_for_bit() {
    let state_dict = fixture("torch_cnn_bn.safetensors");
    let expected: Variables<f64> = read(fixture("torch_cnn_bn_expected.safetensors")).unwrap();
    let x = Tensor::constant(expected.get("inputs/x").unwrap().clone());
    let model = torch_cnn();
    let mapping = TorchMapping::of_sequential(&model);
    let mut imported = model.init(0, &x).unwrap();
    import_pytorch_into(&mut imported, &state_dict, &mapping, LoadMode::Strict).unwrap();
    assert_eq!(
        imported
            .get("batch_stats/BatchNorm_0/num_batches_tracked")
            .unwrap()[[]],
        5.0,
        "PyTorch's count of the fixture's five training steps"
    );

    let folder = tempfile::tempdir().unwrap();
    let exported = folder.path().join("export.safetensors");
    export_pytorch(&imported, &exported, &mapping).unwrap();
    let mut round_trip = model.init(1, &x).unwrap();
    import_pytorch_into(&mut round_trip, &exported, &mapping, LoadMode::Strict).unwrap();
    let bits = |v: &Variables<f64>| -> Vec<(String, Vec<u64>)> {
        v.iter()
            .map(|(name, a)| (name, a.iter().map(|x| x.to_bits()).collect()))
            .collect()
    };
    assert_eq!(bits(&round_trip), bits(&imported));

    // Tensor for tensor, the export is PyTorch's own state_dict: names, dtypes (int64
    // counters included), shapes and bytes.
    assert_eq!(raw_tensors(&exported), raw_tensors(&state_dict));
}

/// Every tensor of a safetensors file as `(name, dtype, shape, bytes)`, in name order.
fn raw_tensors(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = file
        .iter()
        .map(|(name, view)| {
            let dtype = format!("{:?}", view.dtype());
            (
                name.to_string(),
                dtype,
                view.shape().to_vec(),
                view.data().to_vec(),
            )
        })
        .collect();
    tensors.sort();
    tensors
}

#[test]
fn export_refuses_variables_the_mapping_would_lose() {
    let model = Mlp::new(&[4], 2).with_batch_norm(BatchNorm::new());
    let x = Tensor::from_vec(&[3, 2], vec![0.5; 6]).unwrap();
    let vars = model.init(0, &x).unwrap();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("partial.safetensors");
    let partial =
        TorchMapping::new().layer("0", "Dense_0", tapegrad::checkpoint::TorchLayer::Linear);
    let err = export_pytorch(&vars, &path, &partial).unwrap_err();
    let Error::Checkpoint { problems, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("BatchNorm_0/mean")),
        "{err}"
    );
    assert!(
        !path.exists(),
        "nothing is written when the export would lose variables"
    );
}

/// Variables made for a Flax BatchNorm (no `num_batches_tracked`) run under PyTorch's
/// convention wherever no value depends on the counter: in evaluation, and in training with a
/// fixed momentum (the counter is then not written). The cumulative average needs it, and its
/// error says how to add it.
#[test]
fn the_pytorch_counter_is_needed_only_by_the_cumulative_average() {
    let x = Tensor::from_vec(&[4, 1], vec![1.0f64, 2.0, 3.0, 6.0]).unwrap();
    let flax_made = BatchNorm::new().init(0, &x).unwrap();
    assert!(flax_made.get("batch_stats/num_batches_tracked").is_none());
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let fixed = BatchNorm::pytorch(Some(0.1));
    fixed.apply(&flax_made, &x, &ApplyOptions::eval()).unwrap();
    let (_, updates) = fixed.apply(&flax_made, &x, &train).unwrap();
    let mut trained = flax_made.clone();
    trained.merge(updates).unwrap();
    assert!((trained.get("batch_stats/mean").unwrap()[[0]] - 0.3).abs() < 1e-15);
    assert!(trained.get("batch_stats/num_batches_tracked").is_none());
    let cumulative = BatchNorm::pytorch(None);
    cumulative
        .apply(&flax_made, &x, &ApplyOptions::eval())
        .unwrap();
    let err = cumulative
        .apply(&flax_made, &x, &train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("batch_stats/num_batches_tracked") && err.contains("insert it"),
        "{err}"
    );
    // With the counter (as init of the PyTorch layer makes it), it counts on.
    let torch_made = cumulative.init(0, &x).unwrap();
    let (_, updates) = cumulative.apply(&torch_made, &x, &train).unwrap();
    let mut trained = torch_made.clone();
    trained.merge(updates).unwrap();
    assert_eq!(
        trained.get("batch_stats/num_batches_tracked").unwrap()[[]],
        1.0
    );
}

/// A mapping is one-to-one and fits the variables it names, or export and import refuse it
/// naming both sides: two tapegrad layers onto one PyTorch module (an export wrote half of
/// them), two PyTorch modules onto one layer (an import kept whichever came last), a `Dense`
/// under a `Conv2d` entry (written untransposed).
#[test]
fn a_mapping_that_loses_or_mislays_data_is_refused_naming_both_sides() {
    let model = Mlp::new(&[3], 2);
    let x = Tensor::from_vec(&[2, 4], vec![0.5f64; 8]).unwrap();
    let variables = model.init(0, &x).unwrap();
    let folder = tempfile::tempdir().unwrap();
    let good = folder.path().join("good.safetensors");
    export_pytorch(&variables, &good, &TorchMapping::of_mlp(&model)).unwrap();
    let cases = [
        (
            TorchMapping::new()
                .layer("0", "Dense_0", TorchLayer::Linear)
                .layer("0", "Dense_1", TorchLayer::Linear),
            "\"Dense_0\" and \"Dense_1\" both map to PyTorch's \"0\"",
        ),
        (
            TorchMapping::new()
                .layer("0", "Dense_0", TorchLayer::Linear)
                .layer("2", "Dense_0", TorchLayer::Linear),
            "PyTorch's \"0\" and \"2\" both map to \"Dense_0\"",
        ),
        (
            TorchMapping::new()
                .layer("0", "Dense_0", TorchLayer::Conv2d)
                .layer("2", "Dense_1", TorchLayer::Linear),
            "\"0\" is a Conv2d, but \"params/Dense_0/kernel\" has 2 dimensions",
        ),
    ];
    for (mapping, expected) in cases {
        let out = folder.path().join("out.safetensors");
        let err = export_pytorch(&variables, &out, &mapping)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "export: {err}");
        assert!(!out.exists(), "nothing was written");
        let mut target = variables.clone();
        let err = import_pytorch_into(&mut target, &good, &mapping, LoadMode::Lenient)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "import: {err}");
        assert_eq!(target, variables, "nothing was loaded");
    }
}
