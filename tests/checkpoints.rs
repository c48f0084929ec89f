//! Checkpoints: round trips, all-or-nothing loads that list every problem, robustness to
//! damaged files, and a PyTorch state_dict imported to give PyTorch's logits.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use proptest::prelude::*;
use tapegrad::checkpoint::{
    CheckpointProblem, LoadMode, TorchMapping, import_pytorch_into, load_into, read, save,
};
use tapegrad::nn::{Activation, BatchNorm, Conv, Dense, Flatten, Mlp, Pool, Sequential};
use tapegrad::testing::arrays;
use tapegrad::{ApplyOptions, Error, Float, ModuleExt, Tensor, Variables};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn model() -> Mlp {
    Mlp::new(&[7, 7], 3).with_batch_norm(BatchNorm::new())
}

fn model_variables<A: Float>(seed: u64) -> Variables<A> {
    model()
        .init(seed, &Tensor::constant(ArrayD::zeros(vec![2, 5])))
        .unwrap()
}

fn problems(err: Error) -> Vec<CheckpointProblem> {
    match err {
        Error::Checkpoint { problems, .. } => problems,
        other => panic!("not a checkpoint error: {other}"),
    }
}

/// The largest elementwise difference between two arrays of logits.
fn worst_difference(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Random variables: 1 to 4 collections (params among them) of 1 to 3 arrays each.
fn random_variables() -> impl Strategy<Value = Variables<f64>> {
    let entry = (
        prop::sample::select(vec!["params", "batch_stats", "state", "counters"]),
        "[a-z]{1,6}(/[A-Za-z_0-9]{1,8}){0,2}",
        tapegrad::testing::shape(3, 4).prop_flat_map(|s| arrays::<f64>(s, -1e6..1e6)),
    );
    prop::collection::vec(entry, 1..8).prop_map(|entries| {
        let mut v = Variables::new();
        for (collection, path, value) in entries {
            v.insert(collection, path, value).unwrap();
        }
        v
    })
}

proptest! {
    #![proptest_config(tapegrad::testing::config(64))]

    /// Random variables saved and read back are bit-identical, in every collection.
    #[test]
    fn round_trip_is_bit_identical(vars in random_variables()) {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("v.safetensors");
        save(&vars, &path).unwrap();
        let back: Variables<f64> = read(&path).unwrap();
        let bits = |v: &Variables<f64>| v.iter().map(|(k, a)| (k, a.shape().to_vec(), a.iter().map(|x| x.to_bits()).collect::<Vec<_>>())).collect::<Vec<_>>();
        prop_assert_eq!(bits(&back), bits(&vars));
        let f32_vars: Variables<f32> = {
            let mut v = Variables::new();
            for (name, a) in vars.iter() {
                let (c, p) = name.split_once('/').unwrap();
                v.insert(c, p, a.mapv(|x| x as f32)).unwrap();
            }
            v
        };
        save(&f32_vars, &path).unwrap();
        let mut target = f32_vars.clone();
        load_into(&mut target, &path, LoadMode::Strict).unwrap();
        prop_assert_eq!(target, f32_vars);
    }

    /// Random bytes, truncated files and altered headers never panic and never change the
    /// caller's variables.
    #[test]
    fn damaged_files_are_errors_that_change_nothing(
        seed in 0u64..8,
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        noise in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let folder = tempfile::tempdir().unwrap();
        let good = folder.path().join("good.safetensors");
        save(&model_variables::<f64>(seed), &good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let header_len = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;

        let mut damaged = Vec::new();
        damaged.push(bytes[..cut.index(bytes.len())].to_vec()); // truncated
        let mut altered = bytes.clone();
        for (at, value) in &flips {
            altered[at.index(header_len)] = *value; // header bytes changed
        }
        damaged.push(altered);
        damaged.push(noise.clone()); // random bytes
        let mut noisy_length = noise.clone();
        noisy_length.splice(0..0, (bytes.len() as u64).to_le_bytes());
        damaged.push(noisy_length); // a header length pointing past the end

        for content in damaged {
            let path = folder.path().join("damaged.safetensors");
            std::fs::write(&path, &content).unwrap();
            let mut vars = model_variables::<f64>(99);
            let before = vars.clone();
            if load_into(&mut vars, &path, LoadMode::Strict).is_err() {
                prop_assert_eq!(&vars, &before);
            }
            let _ = read::<f64>(&path); // must not panic
        }
    }
}

#[test]
fn every_problem_is_listed_and_nothing_changes() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("other.safetensors");
    // A checkpoint of a model with another width, an extra collection and a missing layer.
    let mut other: Variables<f64> = Mlp::new(&[6, 7], 3)
        .with_batch_norm(BatchNorm::new())
        .init(0, &Tensor::constant(ArrayD::zeros(vec![2, 5])))
        .unwrap();
    other
        .insert("state", "extra", ArrayD::zeros(vec![1]))
        .unwrap();
    let removed = other.params().get("Dense_2/bias").is_some();
    assert!(removed);
    let mut pruned = Variables::new();
    for (name, value) in other.iter() {
        if name != "params/Dense_2/bias" {
            let (c, p) = name.split_once('/').unwrap();
            pruned.insert(c, p, value.clone()).unwrap();
        }
    }
    save(&pruned, &path).unwrap();

    let mut vars = model_variables::<f64>(5);
    let before = vars.clone();
    let found = problems(load_into(&mut vars, &path, LoadMode::Strict).unwrap_err());
    assert_eq!(vars, before);
    assert!(
        found.contains(&CheckpointProblem::Missing("params/Dense_2/bias".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&CheckpointProblem::Unexpected("state/extra".into())),
        "{found:?}"
    );
    assert!(found.iter().any(|p| matches!(p, CheckpointProblem::Shape { name, .. } if name == "params/Dense_0/kernel")), "{found:?}");
    // Lenient mode ignores the extra tensor but still refuses the rest.
    let found = problems(load_into(&mut vars, &path, LoadMode::Lenient).unwrap_err());
    assert!(
        !found
            .iter()
            .any(|p| matches!(p, CheckpointProblem::Unexpected(_)))
    );
    assert_eq!(vars, before);

    // A dtype mismatch is named too.
    let mut as_f32 = model_variables::<f32>(5);
    save(&model_variables::<f64>(1), &path).unwrap();
    let found = problems(load_into(&mut as_f32, &path, LoadMode::Strict).unwrap_err());
    assert!(
        found.iter().all(|p| matches!(
            p,
            CheckpointProblem::Dtype {
                model: "float32",
                ..
            }
        )),
        "{found:?}"
    );
    // And a missing file is an i/o problem, not a panic, whose source is the io::Error.
    let err = load_into(&mut vars, folder.path().join("nope"), LoadMode::Strict).unwrap_err();
    let io = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .expect("the io::Error is the source");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(matches!(problems(err)[..], [CheckpointProblem::Io(_)]));
}

#[test]
fn a_loaded_checkpoint_reproduces_evaluation_bit_for_bit() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("m.safetensors");
    let x = Tensor::<f32>::constant(ArrayD::from_shape_fn(vec![6, 5], |i| {
        (i[0] as f32 - i[1] as f32) * 0.3
    }));
    let mut trained = model_variables::<f32>(3);
    // Move the running statistics so that losing them would show.
    let train = ApplyOptions::train().mutable(tapegrad::Mutable::only(["batch_stats"]));
    let (_, updates) = model().apply(&trained, &x, &train).unwrap();
    trained.merge(updates).unwrap();
    save(&trained, &path).unwrap();
    let mut restored = model_variables::<f32>(4);
    load_into(&mut restored, &path, LoadMode::Strict).unwrap();
    let eval = |v: &Variables<f32>| {
        model()
            .apply(v, &x, &ApplyOptions::eval())
            .unwrap()
            .0
            .value()
            .mapv(f32::to_bits)
    };
    assert_eq!(eval(&restored), eval(&trained));
}

/// A mapping's layers as `"torch prefix->tapegrad path"`.
fn layer_names(mapping: &TorchMapping) -> Vec<String> {
    mapping
        .layers()
        .iter()
        .map(|(torch, ours, _)| format!("{torch}->{ours}"))
        .collect()
}

#[test]
fn a_pytorch_mlp_with_batch_norm_gives_pytorchs_eval_logits() {
    let state_dict = fixture("torch_mlp_bn.safetensors");
    let mapping = TorchMapping::derive_sequential(&state_dict).unwrap();
    let names = layer_names(&mapping);
    assert_eq!(
        names,
        [
            "0->Dense_0",
            "1->BatchNorm_0",
            "3->Dense_1",
            "4->BatchNorm_1",
            "6->Dense_2"
        ]
    );

    let mut vars = model_variables::<f64>(0);
    import_pytorch_into(&mut vars, &state_dict, &mapping, LoadMode::Strict).unwrap();
    let expected: Variables<f64> = read(fixture("torch_mlp_bn_expected.safetensors")).unwrap();
    let x = Tensor::constant(expected.get("inputs/x").unwrap().clone());
    let (logits, _) = model().apply(&vars, &x, &ApplyOptions::eval()).unwrap();
    let want = expected.get("outputs/logits").unwrap();
    let worst = worst_difference(logits.value(), want);
    assert!(worst <= 1e-12, "worst difference {worst:e}");

    // The running statistics came from PyTorch's buffers, not from init.
    assert_ne!(
        vars.get("batch_stats/BatchNorm_0/var"),
        model_variables::<f64>(0).get("batch_stats/BatchNorm_0/var")
    );
    // The same file imported into f32 variables agrees to f32 precision.
    let mut vars32 = model_variables::<f32>(0);
    import_pytorch_into(&mut vars32, &state_dict, &mapping, LoadMode::Strict).unwrap();
    let (logits32, _) = model()
        .apply(
            &vars32,
            &Tensor::constant(x.value().mapv(|v| v as f32)),
            &ApplyOptions::eval(),
        )
        .unwrap();
    let worst = worst_difference(&logits32.value().mapv(f64::from), want);
    assert!(worst <= 1e-5, "worst f32 difference {worst:e}");
}

/// The tapegrad model of `scripts/make_pytorch_cnn_fixture.py`'s `nn.Sequential`, with the
/// flatten in PyTorch's (C, H, W) order or in memory order.
fn torch_cnn(flatten: Flatten) -> Sequential<f64> {
    let block = |model: Sequential<f64>, channels| {
        model
            .push(Conv::new(channels, [3, 3])) // PyTorch's padding=1 on a 3×3 kernel is SAME
            .push(BatchNorm::new().momentum(0.9))
            .push(Activation::Relu)
            .push(Pool::max([2, 2]))
    };
    block(block(Sequential::new(), 3), 4)
        .push(flatten)
        .push(Dense::new(3))
}

#[test]
fn a_pytorch_cnn_with_batch_norm_2d_gives_pytorchs_eval_logits() {
    let state_dict = fixture("torch_cnn_bn.safetensors");
    let mapping = TorchMapping::derive_sequential(&state_dict).unwrap();
    let names = layer_names(&mapping);
    assert_eq!(
        names,
        [
            "0->Conv_0",
            "1->BatchNorm_0",
            "4->Conv_1",
            "5->BatchNorm_1",
            "9->Dense_0"
        ]
    );

    let expected: Variables<f64> = read(fixture("torch_cnn_bn_expected.safetensors")).unwrap();
    let x = Tensor::constant(expected.get("inputs/x").unwrap().clone());
    let want = expected.get("outputs/logits").unwrap();
    let logits = |flatten: Flatten| {
        let model = torch_cnn(flatten);
        let mut vars = model.init(0, &x).unwrap();
        import_pytorch_into(&mut vars, &state_dict, &mapping, LoadMode::Strict).unwrap();
        let (logits, _) = model.apply(&vars, &x, &ApplyOptions::eval()).unwrap();
        let worst = worst_difference(logits.value(), want);
        (worst, vars)
    };
    let (worst, vars) = logits(Flatten::channels_first());
    assert!(worst <= 1e-12, "worst difference {worst:e}");
    // The kernel is PyTorch's weight with its axes permuted, (out, in, kh, kw) to HWIO.
    assert_eq!(
        vars.get("params/Conv_1/kernel").unwrap().shape(),
        &[3, 3, 3, 4]
    );
    // The porting bug, shown: the same weights behind a flatten in NHWC order are wrong.
    let (wrong, _) = logits(Flatten::new());
    assert!(
        wrong > 1e-3,
        "flattening in the other order should change the logits ({wrong:e})"
    );
}
