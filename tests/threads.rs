//! The thread count of `tapegrad::runtime`: `set_num_threads` and `TAPEGRAD_NUM_THREADS` are
//! obeyed, one thread spawns no thread at all, and the count changes no result.
//!
//! The setting is the whole process's, so this file is one test that runs its checks in
//! order (tests in one binary run at the same time); the environment variable is checked in
//! child processes of this test binary.

use std::process::Command;
use std::time::{Duration, Instant};

use ndarray::ArrayD;
use tapegrad::nn::{Activation, BatchNorm, Pool, Sequential};
use tapegrad::{
    ApplyOptions, ConvOptions, ModuleExt, Mutable, ParamTensors, Tape, Tensor, runtime,
};

/// The threads of this process (Linux), or `None` where `/proc` does not tell.
fn threads_of_this_process() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|tasks| tasks.count())
}

/// A product far above the size that splits over threads, and its two VJP products.
fn large_product() -> [ArrayD<f64>; 3] {
    let a = ArrayD::from_shape_fn(vec![300, 256], |i| ((i[0] * 3 + i[1]) as f64 * 0.1).sin());
    let b = ArrayD::from_shape_fn(vec![256, 200], |i| ((i[0] + i[1] * 7) as f64 * 0.2).cos());
    let tape = Tape::new();
    let (ta, tb) = (tape.leaf("a", a), tape.leaf("b", b));
    let c = ta.matmul(&tb).unwrap();
    let grads = c.sum_all().backward().unwrap();
    [
        c.value().clone(),
        grads.get(&ta).unwrap().clone(),
        grads.get(&tb).unwrap().clone(),
    ]
}

/// A convolution large enough that forward and backward split over threads (about 1.3 M
/// multiply-adds each way; backward shares whole images), with its three gradients.
fn large_convolution() -> [ArrayD<f64>; 4] {
    let x = ArrayD::from_shape_fn(vec![4, 12, 12, 8], |i| {
        ((i[0] + i[1] * 3 + i[2] * 5 + i[3]) as f64 * 0.3).sin()
    });
    let k = ArrayD::from_shape_fn(vec![3, 3, 8, 32], |i| {
        ((i[0] * 7 + i[1] + i[2] * 3 + i[3]) as f64 * 0.2).cos()
    });
    let bias = ArrayD::from_shape_fn(vec![32], |i| i[0] as f64 * 0.01);
    let tape = Tape::new();
    let (tx, tk, tb) = (tape.leaf("x", x), tape.leaf("k", k), tape.leaf("b", bias));
    let y = tx
        .conv2d(&tk, &ConvOptions::default())
        .unwrap()
        .add(&tb)
        .unwrap();
    let weights = ArrayD::from_shape_fn(y.shape().to_vec(), |i| 1.0 + (i[3] as f64 * 0.7).sin());
    let grads = y.backward_with(weights).unwrap();
    let grad = |t| grads.get(t).unwrap().clone();
    [y.value().clone(), grad(&tx), grad(&tk), grad(&tb)]
}

/// BatchNorm, ReLU and 2×2 max pooling in training mode on a batch of several chunks (their
/// passes split over threads: `kernels/chunks.rs`): the output, the new statistics and the
/// gradients of the input, scale and bias.
fn large_batch_norm() -> Vec<ArrayD<f64>> {
    let x = ArrayD::from_shape_fn(vec![6, 30, 30, 32], |i| {
        ((i[0] * 5 + i[1] * 3 + i[2] * 7 + i[3]) as f64 * 0.13).sin() + i[3] as f64
    });
    let model = Sequential::new()
        .push(BatchNorm::new())
        .push(Activation::Relu)
        .push(Pool::max([2, 2]));
    let variables = model.init(0, &Tensor::constant(x.clone())).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let tape = Tape::new();
    let params = ParamTensors::leaves(variables.params(), &tape);
    let input = tape.leaf("x", x);
    let (y, updates) = model
        .apply_tracked(&params, &variables, &input, &train)
        .unwrap();
    let weights = ArrayD::from_shape_fn(y.shape().to_vec(), |i| (i[3] as f64 * 0.7).cos());
    let grads = y.backward_with(weights).unwrap();
    let mut results = vec![y.value().clone(), grads.get(&input).unwrap().clone()];
    for path in ["BatchNorm_0/scale", "BatchNorm_0/bias"] {
        results.push(grads.get(params.get(path).unwrap()).unwrap().clone());
    }
    for stat in [
        "batch_stats/BatchNorm_0/mean",
        "batch_stats/BatchNorm_0/var",
    ] {
        results.push(updates.get(stat).unwrap().clone());
    }
    results
}

/// Agreement of two results to 1e-12 relative to their largest magnitude.
fn agree(one: &[ArrayD<f64>], other: &[ArrayD<f64>]) -> bool {
    one.iter().zip(other).all(|(a, b)| {
        let scale = a.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * scale)
    })
}

/// What this test binary prints when it runs `report_thread_count_for_the_parent` alone, in a
/// child process with the environment variables `env` set.
fn child_report(env: &[(&str, &str)]) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "report_thread_count_for_the_parent",
            "--nocapture",
            "--include-ignored",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .env("TAPEGRAD_REPORT_THREADS", "1")
        .output()
        .unwrap()
}

/// What a child process started with `TAPEGRAD_NUM_THREADS=value` reports as its count.
fn count_in_child(value: &str) -> usize {
    let out = child_report(&[("TAPEGRAD_NUM_THREADS", value)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|line| line.split("threads=").nth(1))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("the child reported no count: {stdout}"))
}

/// Run by `count_in_child` only (ignored otherwise): prints the count in force, and the
/// runtime's summary (which reads every setting).
#[test]
#[ignore = "run by the test below, in a child process"]
fn report_thread_count_for_the_parent() {
    if std::env::var_os("TAPEGRAD_REPORT_THREADS").is_some() {
        println!("threads={}", runtime::num_threads());
        println!("{}", runtime::summary());
    }
}

/// Bad values of the three environment variables are each warned about once, naming the
/// variable and the value, and the run goes on with the default; a thread count above
/// `max_threads` is one of them, and `set_num_threads` refuses it. Part of the one test
/// below: a second test of this file would run beside it, and its thread, starting or
/// ending, would change the count of this process's threads that test compares.
fn bad_settings_in_the_environment_are_warned_about_once_each() {
    let out = child_report(&[
        ("TAPEGRAD_NUM_THREADS", "1000000"),
        ("TAPEGRAD_KERNELS", "bogus"),
        ("TAPEGRAD_FUSION", "of"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for warning in [
        "TAPEGRAD_NUM_THREADS=\"1000000\"",
        "TAPEGRAD_KERNELS=\"bogus\"",
        "TAPEGRAD_FUSION=\"of\"",
    ] {
        assert_eq!(stderr.matches(warning).count(), 1, "{warning} in {stderr}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(stdout.contains(&format!("threads={cores}")), "{stdout}");
    assert!(stdout.contains("fusion on"), "{stdout}");
    let too_many = runtime::max_threads() + 1;
    let err = runtime::set_num_threads(too_many).unwrap_err().to_string();
    assert!(
        err.contains("set_num_threads") && err.contains(&too_many.to_string()),
        "{err}"
    );
}

#[test]
fn the_thread_count_is_obeyed_and_one_thread_spawns_none() {
    bad_settings_in_the_environment_are_warned_about_once_each();

    // The environment variable, read at first use; a value that is not a positive integer
    // is ignored (the count is then the cores this process may use).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(count_in_child("3"), 3);
    assert_eq!(count_in_child(" 1 "), 1);
    assert_eq!(count_in_child("0"), cores);
    assert_eq!(count_in_child("many"), cores);

    // One thread: large products and their backward pass start no thread.
    runtime::set_num_threads(1).unwrap();
    let before = threads_of_this_process();
    let single = large_product();
    let single_convolution = large_convolution();
    let single_batch_norm = large_batch_norm();
    assert_eq!(
        threads_of_this_process(),
        before,
        "one thread spawned a thread"
    );

    // Two: a pool of one worker (the caller is the other), and the same results within
    // rounding (the convolution's kernel gradient is a sum of per-share parts).
    runtime::set_num_threads(2).unwrap();
    assert_eq!(runtime::num_threads(), 2);
    let double = large_product();
    let double_convolution = large_convolution();
    let double_batch_norm = large_batch_norm();
    if let Some(before) = before {
        assert_eq!(
            threads_of_this_process(),
            Some(before + 1),
            "a pool of one worker"
        );
    }
    assert!(agree(&single, &double), "matmul: one thread against two");
    assert!(
        agree(&single_convolution, &double_convolution),
        "conv2d: one thread against two"
    );
    // BatchNorm's and pooling's chunks are the same whatever the thread count: the same bits.
    assert_eq!(
        single_batch_norm, double_batch_norm,
        "BatchNorm and max pooling: one thread against two"
    );

    // Back to one: the pool's worker exits (rayon ends its threads when the pool is dropped,
    // without waiting for them), and no product starts another.
    runtime::set_num_threads(1).unwrap();
    large_product();
    if let Some(before) = before {
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads_of_this_process() != Some(before) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            threads_of_this_process(),
            Some(before),
            "the worker did not exit"
        );
    }

    // Zero is refused, and changes nothing.
    let err = runtime::set_num_threads(0).unwrap_err().to_string();
    assert!(
        err.contains("set_num_threads") && err.contains("thread count"),
        "{err}"
    );
    assert_eq!(runtime::num_threads(), 1);
}
