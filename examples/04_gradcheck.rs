//! Lesson 4: checking gradients.
//!
//! Checks a whole model (an MLP with BatchNorm in training mode, under cross-entropy) against
//! central finite differences with `gradcheck::check_model`, which perturbs params only and
//! holds `batch_stats` fixed; then shows the checker catching a broken VJP.
//!
//! Run: `cargo run --example 04_gradcheck`

use ndarray::arr1;
use tapegrad::gradcheck::{GradCheckOptions, check_grads, check_model};
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::{
    ApplyOptions, ModuleExt, Mutable, Params, Tensor, custom_op, softmax_cross_entropy,
};

fn main() -> tapegrad::Result<()> {
    let model = Mlp::new(&[4], 3).with_batch_norm(BatchNorm::new());
    let x = Tensor::from_vec(&[5, 2], (0..10).map(|i| (i as f64 * 0.7).sin()).collect())?;
    let variables = model.init(0, &x)?;
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let report = check_model(
        &model,
        &variables,
        &x,
        &train,
        |logits| softmax_cross_entropy(logits, &[0, 1, 2, 0, 1]),
        &GradCheckOptions::default(),
    )?;
    println!("an MLP with BatchNorm, every param against finite differences:\n{report}");

    // A broken VJP: tanh with the derivative 1 - y instead of 1 - y².
    let broken_tanh = |x: &Tensor<f64>| {
        let y = x.value().mapv(f64::tanh);
        let y2 = y.clone();
        custom_op("tanh (broken)", &[x], y, move |g, _| {
            vec![Some(g * &y2.mapv(|y| 1.0 - y))]
        })
    };
    let params: Params<f64> = [("x".to_string(), arr1(&[-1.0, 0.5, 2.0]))]
        .into_iter()
        .collect();
    let report = check_grads(
        &params,
        |p| broken_tanh(p.get("x")?),
        &GradCheckOptions::default(),
    )?;
    println!(
        "a tanh whose VJP is broken on purpose (1 - y instead of 1 - y²), which the check must \
         catch:\n{report}"
    );
    assert!(!report.passed());
    Ok(())
}
