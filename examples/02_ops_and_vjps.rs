//! Lesson 2: ops and their vector-Jacobian products.
//!
//! * Broadcasting: adding a bias of shape `[3]` to a batch `[4, 3]` uses each bias element
//!   4 times, so its gradient is the sum over the batch: the tape sums it back to shape.
//! * Accumulation: a tensor used twice gets both contributions.
//! * A new op of your own (`softplus`), with its VJP beside its forward, checked against
//!   finite differences.
//!
//! Run: `cargo run --example 02_ops_and_vjps`

use ndarray::{ArrayD, arr1, arr2};
use tapegrad::gradcheck::{GradCheckOptions, check_grads};
use tapegrad::{Params, Tape, Tensor, custom_op};

/// softplus(x) = ln(1 + eˣ), whose derivative is the sigmoid.
fn softplus(x: &Tensor<f64>) -> tapegrad::Result<Tensor<f64>> {
    let input = x.value().clone();
    let value = input.mapv(|v| v.max(0.0) + (-v.abs()).exp().ln_1p());
    custom_op("softplus", &[x], value, move |g, _| {
        vec![Some(g * &input.mapv(|v| 1.0 / (1.0 + (-v).exp())))]
    })
}

fn main() -> tapegrad::Result<()> {
    // 1. Broadcasting, and its gradient summed back to shape.
    let tape = Tape::<f64>::new();
    let bias = tape.leaf("bias", arr1(&[0.1, 0.2, 0.3]));
    let batch = Tensor::constant(ArrayD::ones(vec![4, 3])).with_label("batch");
    let y = batch.add(&bias)?.sum_all();
    let grads = y.backward()?;
    println!(
        "d sum(batch + bias) / d bias = {} (each bias element is used by 4 rows)",
        grads.get(&bias).unwrap()
    );

    // 2. A value used twice: f(x) = x * x, the tape adds both uses: 2x.
    let tape = Tape::<f64>::new();
    let x = tape.leaf("x", arr1(&[3.0]));
    let grads = x.mul(&x)?.sum_all().backward()?;
    println!("d (x * x) / dx at 3 = {}", grads.get(&x).unwrap());
    println!("{tape}");

    // 3. An op of our own, checked against central differences.
    let params: Params<f64> = [("x".to_string(), arr2(&[[-2.0, -0.5], [0.5, 3.0]]))]
        .into_iter()
        .collect();
    let report = check_grads(
        &params,
        |p| softplus(p.get("x")?),
        &GradCheckOptions::default(),
    )?;
    println!("softplus against finite differences:\n{report}");
    assert!(report.passed());
    Ok(())
}
