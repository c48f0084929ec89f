//! The defects a hostile user found, each as a test: a hang, panics where errors belong,
//! silent wrong results, lost or stale checkpoint files, and unclear messages.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use ndarray::{ArrayD, arr1};
use tapegrad::checkpoint::{
    LoadMode, TorchLayer, TorchMapping, import_pytorch_into, load_into, read, save,
};
use tapegrad::nn::Dense;
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{Error, Grads, ModuleExt, Params, Tensor, Variables};

/// Runs `f` on another thread and fails if it takes longer than `limit` (a hang).
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(f()));
    receiver
        .recv_timeout(limit)
        .expect("did not return in time: a hang")
}

/// A safetensors file of one tensor with `shape` and no data, written by hand.
fn write_raw(path: &Path, name: &str, shape: &str) {
    let header =
        format!("{{\"{name}\":{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":[0,0]}}}}");
    let mut header = header.into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn importing_an_empty_linear_weight_of_huge_shape_returns_at_once() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("huge.safetensors");
    write_raw(&path, "0.weight", "[0,9223372036854775807]");
    let result = within(Duration::from_secs(10), move || {
        let x = Tensor::from_vec(&[1, 2], vec![0.0f32, 0.0]).unwrap();
        let mut variables = Dense::new(3).without_bias().init(0, &x).unwrap();
        let before = variables.clone();
        let mapping = TorchMapping::new().layer("0", "", TorchLayer::Linear);
        let err = import_pytorch_into(&mut variables, &path, &mapping, LoadMode::Strict);
        (err.map_err(|e| e.to_string()), variables == before)
    });
    let (outcome, unchanged) = result;
    assert!(
        outcome.is_err(),
        "a [0, 2^63 - 1] weight cannot fit a [2, 3] kernel"
    );
    assert!(unchanged);
}

#[test]
fn shapes_whose_element_count_overflows_are_errors_not_panics() {
    let empty = Tensor::<f32>::from_vec(&[0], vec![]).unwrap();
    for shape in [vec![1 << 32, 1 << 32], vec![0, 1 << 62, 1 << 62]] {
        let err = empty.reshape(&shape).unwrap_err().to_string();
        assert!(err.contains("reshape"), "{err}");
    }
    let one = Tensor::<f32>::scalar(1.0);
    let err = one
        .broadcast_to(&[1 << 32, 1 << 32])
        .unwrap_err()
        .to_string();
    assert!(err.contains("broadcast_to"), "{err}");
    let (a, b) = (
        Tensor::<f32>::from_vec(&[1 << 40, 0], vec![]).unwrap(),
        Tensor::<f32>::from_vec(&[0, 1 << 40], vec![]).unwrap(),
    );
    let err = a.matmul(&b).unwrap_err().to_string();
    assert!(err.contains("matmul"), "{err}");
    let x = Tensor::from_vec(&[1, 2], vec![0.5f32, 1.0]).unwrap();
    let err = Dense::new(1 << 62).init(0, &x).unwrap_err().to_string();
    assert!(
        err.contains("Dense_0/kernel") || err.contains("Scope::param"),
        "{err}"
    );
}

#[test]
fn a_collection_name_with_a_slash_is_refused_at_insert() {
    let mut variables = Variables::<f64>::new();
    let err = variables
        .insert("a/b", "w", ArrayD::zeros(vec![1]))
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidName { ref name, .. } if name == "a/b"),
        "{err}"
    );
    assert!(variables.insert("", "w", ArrayD::zeros(vec![1])).is_err());
    assert!(
        variables
            .insert("#optimizer", "w", ArrayD::zeros(vec![1]))
            .is_err()
    );
    assert!(variables.iter().next().is_none(), "nothing was inserted");
    variables
        .insert("state", "a/b/w", ArrayD::zeros(vec![1]))
        .unwrap(); // paths may nest
}

/// A signalling NaN (quiet bit clear) keeps its bits through save and load: values are
/// stored bit for bit, never through a conversion that would quiet it.
#[test]
fn an_f32_signalling_nan_survives_save_and_load_bit_for_bit() {
    let signalling = f32::from_bits(0x7f80_0001);
    assert!(signalling.is_nan());
    let mut variables = Variables::<f32>::new();
    variables
        .insert(
            "state",
            "odd",
            arr1(&[signalling, -0.0, f32::INFINITY]).into_dyn(),
        )
        .unwrap();
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("nan.safetensors");
    save(&variables, &path).unwrap();
    let back: Variables<f32> = read(&path).unwrap();
    let bits: Vec<u32> = back
        .get("state/odd")
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(bits, [0x7f80_0001, 0x8000_0000, 0x7f80_0000]);
}

#[test]
fn the_same_variables_give_the_same_bytes() {
    let folder = tempfile::tempdir().unwrap();
    let build = |order: &[(&str, &str)]| {
        let mut v = Variables::<f64>::new();
        for (i, (c, p)) in order.iter().enumerate() {
            v.insert(c, *p, ArrayD::from_elem(vec![2], i as f64 * 0.0 + 1.5))
                .unwrap();
        }
        v
    };
    let names = [
        ("params", "Dense_0/kernel"),
        ("batch_stats", "BatchNorm_0/mean"),
        ("state", "n"),
    ];
    let reversed: Vec<_> = names.iter().rev().copied().collect();
    let (first, second) = (folder.path().join("1"), folder.path().join("2"));
    save(&build(&names), &first).unwrap();
    save(&build(&reversed), &second).unwrap();
    let again = folder.path().join("3");
    save(&build(&names), &again).unwrap();
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&first), bytes(&again));
    assert_eq!(bytes(&first), bytes(&second));
}

fn leftovers(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tapegrad-tmp"))
        .collect()
}

fn filled(value: f64) -> Variables<f64> {
    let mut v = Variables::new();
    v.insert("params", "w", ArrayD::from_elem(vec![64, 64], value))
        .unwrap();
    v
}

/// Two threads saving to one path: every save that returns `Ok` wrote a whole file, so the
/// file is always one of the two, complete, and no temporary file is left.
#[test]
fn concurrent_saves_to_one_path_never_lose_a_save() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("shared.safetensors");
    for round in 0..100 {
        let handles: Vec<_> = [1.0, 2.0]
            .into_iter()
            .map(|value| {
                let path = path.clone();
                std::thread::spawn(move || save(&filled(value), &path))
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
        let loaded: Variables<f64> = read(&path).unwrap();
        assert!(
            loaded == filled(1.0) || loaded == filled(2.0),
            "round {round}: a mixture"
        );
    }
    assert_eq!(leftovers(folder.path()), Vec::<String>::new());
}

#[test]
fn a_failed_save_leaves_no_temporary_file() {
    let folder = tempfile::tempdir().unwrap();
    let target = folder.path().join("a-folder");
    std::fs::create_dir(&target).unwrap();
    let err = save(&filled(1.0), &target).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    assert_eq!(leftovers(folder.path()), Vec::<String>::new());
}

/// A save killed between its write and its rename leaves its temporary file: the next save
/// of the same target removes such leftovers once they are old enough that no save can
/// still own them, and leaves a recent one (which may be another save in progress).
#[test]
fn leftovers_of_killed_saves_are_removed_by_the_next_save() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("model.safetensors");
    let stale = folder
        .path()
        .join(".model.safetensors.killed1.tapegrad-tmp");
    let recent = folder
        .path()
        .join(".model.safetensors.running.tapegrad-tmp");
    let unrelated = folder.path().join(".other.safetensors.killed.tapegrad-tmp");
    for p in [&stale, &recent, &unrelated] {
        std::fs::write(p, b"half a checkpoint").unwrap();
    }
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    for p in [&stale, &unrelated] {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    save(&filled(1.0), &path).unwrap();
    assert!(!stale.exists(), "an old leftover of this target is removed");
    assert!(recent.exists(), "a recent one may be a save in progress");
    assert!(
        unrelated.exists(),
        "another target's files are not ours to remove"
    );
    let mut loaded = filled(0.0);
    load_into(&mut loaded, &path, LoadMode::Strict).unwrap();
    assert_eq!(loaded, filled(1.0));
}

#[test]
fn loading_a_device_is_refused_without_reading_it() {
    let result = within(Duration::from_secs(10), || {
        let mut variables = filled(0.0);
        load_into(&mut variables, "/dev/zero", LoadMode::Strict).map_err(|e| e.to_string())
    });
    let err = result.unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn a_gradient_of_the_wrong_shape_names_the_optimizer_and_the_param() {
    let params: Params<f64> = [("b".to_string(), ArrayD::zeros(vec![4]))]
        .into_iter()
        .collect();
    let wrong: Params<f64> = [("b".to_string(), ArrayD::zeros(vec![3]))]
        .into_iter()
        .collect();
    let grads = Grads::zeros_like(&wrong);
    let mut p = params.clone();
    let err = Sgd::new(0.1)
        .update(&mut p, &grads)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Sgd::update") && err.contains("params/b"),
        "{err}"
    );
    assert!(err.contains("[4]") && err.contains("[3]"), "{err}");
    assert!(!err.contains("module"), "{err}");
    assert_eq!(p, params);
}

/// A checkpoint whose bytes hold NaN is refused where it is read, naming the file and the
/// variable, and nothing is loaded; a load that allows non-finite values takes it as stored.
#[test]
fn a_checkpoint_holding_nan_is_refused_at_load_unless_allowed() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("diverged.safetensors");
    let mut diverged = filled(1.0);
    diverged
        .insert("params", "w", arr1(&[1.0, f64::NAN, 3.0]).into_dyn())
        .unwrap();
    save(&diverged, &path).unwrap();
    let mut variables = filled(0.0);
    variables
        .insert("params", "w", arr1(&[0.0, 0.0, 0.0]).into_dyn())
        .unwrap();
    let before = variables.clone();
    let err = load_into(&mut variables, &path, LoadMode::Strict)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("diverged.safetensors") && err.contains("params/w") && err.contains("NaN"),
        "{err}"
    );
    assert_eq!(variables, before, "nothing was loaded");
    load_into(
        &mut variables,
        &path,
        LoadMode::Strict.allowing_non_finite(),
    )
    .unwrap();
    assert!(variables.get("params/w").unwrap()[[1]].is_nan());
}

/// A leftover whose writing process is gone is removed by the next save however recent it
/// is; one whose writer still runs (this process) is kept, as it may be a save in progress.
#[test]
fn leftovers_of_processes_that_are_gone_are_removed_at_once() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("model.safetensors");
    let mut finished = std::process::Command::new("true").spawn().unwrap();
    let gone = finished.id();
    finished.wait().unwrap();
    let killed = folder
        .path()
        .join(format!(".model.safetensors.{gone}.x1.tapegrad-tmp"));
    let running = folder.path().join(format!(
        ".model.safetensors.{}.x2.tapegrad-tmp",
        std::process::id()
    ));
    for p in [&killed, &running] {
        std::fs::write(p, b"half a checkpoint").unwrap();
    }
    save(&filled(1.0), &path).unwrap();
    assert!(!killed.exists(), "its writer is gone");
    assert!(running.exists(), "its writer may still be saving");
}

/// A saved checkpoint has the permissions a file the user creates gets (0666 less the
/// umask), not the 0600 of a temporary file.
#[cfg(unix)]
#[test]
fn a_checkpoint_gets_the_permissions_of_any_new_file() {
    use std::os::unix::fs::PermissionsExt;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(umask) = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
    else {
        return; // a kernel that does not say (before Linux 4.7)
    };
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("model.safetensors");
    save(&filled(1.0), &path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666 & !umask, "mode {mode:o}, umask {umask:o}");
}

/// Window arithmetic that would wrap is refused naming the op: a kernel of 2^31 × 2^31 taps
/// and no output channel, a padding of `usize::MAX` (what `-1i64 as usize` gives), an
/// average-pooling window whose tap count wraps to 0.
#[test]
fn window_arithmetic_that_would_wrap_is_refused_naming_the_op() {
    let x = Tensor::constant(ArrayD::<f64>::zeros(vec![1, 4, 4, 1]));
    let huge_kernel = Tensor::constant(ArrayD::<f64>::zeros(vec![1 << 31, 1 << 31, 1, 0]));
    // No output channel: an empty output, computed without building any patch.
    let y = x
        .conv2d(&huge_kernel, &tapegrad::ConvOptions::default())
        .unwrap();
    assert_eq!(y.shape(), &[1, 4, 4, 0]);
    let wrapping = tapegrad::Padding::Explicit([(usize::MAX, 1), (0, 0)]);
    let kernel = Tensor::constant(ArrayD::<f64>::ones(vec![2, 2, 1, 1]));
    let options = tapegrad::ConvOptions {
        padding: wrapping,
        ..Default::default()
    };
    let err = x.conv2d(&kernel, &options).unwrap_err().to_string();
    assert!(err.contains("conv2d") && err.contains("overflows"), "{err}");
    let err = x
        .max_pool([2, 2], [1, 1], wrapping)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("max_pool") && err.contains("overflows"),
        "{err}"
    );
    let err = x
        .avg_pool([1 << 32, 1 << 32], [1, 1], tapegrad::Padding::Same)
        .unwrap_err()
        .to_string();
    assert!(err.contains("avg_pool"), "{err}");
}
