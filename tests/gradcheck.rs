//! The gradient checker itself: it must catch wrong gradients, in both modes, and report
//! bad input as errors.

use ndarray::{ArrayD, arr1};
use tapegrad::gradcheck::{CheckMode, GradCheckOptions, check_grads};
use tapegrad::{Params, Tensor};

fn params(len: usize) -> Params<f64> {
    let x = ArrayD::from_shape_fn(vec![len], |i| 0.3 + 0.1 * i[0] as f64);
    [("x".to_string(), x)].into_iter().collect()
}

/// `x * stop_gradient(x)`: its true derivative is 2x but the tape reports x, a wrong
/// gradient of the kind a broken VJP produces.
fn half_wrong(x: &Tensor<f64>) -> tapegrad::Result<Tensor<f64>> {
    x.mul(&x.detach())
}

#[test]
fn full_jacobian_mode_catches_a_wrong_gradient() {
    let report = check_grads(
        &params(3),
        |p| half_wrong(p.get("x")?),
        &GradCheckOptions::default(),
    )
    .unwrap();
    let entry = report.get("x").unwrap();
    assert_eq!(entry.mode, CheckMode::FullJacobian);
    assert_eq!(entry.compared, 9); // 3 outputs x 3 inputs
    assert!(!report.passed(), "{report}");
}

#[test]
fn directional_mode_is_used_for_large_inputs_and_catches_a_wrong_gradient() {
    let options = GradCheckOptions::default();
    let good = check_grads(&params(100), |p| Ok(p.get("x")?.tanh()), &options).unwrap();
    assert_eq!(good.get("x").unwrap().mode, CheckMode::Directional);
    assert_eq!(good.get("x").unwrap().compared, options.directions);
    assert!(good.passed(), "{good}");
    let bad = check_grads(&params(100), |p| half_wrong(p.get("x")?), &options).unwrap();
    assert!(!bad.passed(), "{bad}");
}

/// Centring, `x - mean(x)`, whose outputs always sum to zero, with a VJP twice too large.
fn centre_doubled(x: &Tensor<f64>) -> tapegrad::Result<Tensor<f64>> {
    let value = x.value() - x.value().mean().unwrap();
    tapegrad::custom_op("centre", &[x], value, |g, _| {
        vec![Some((g - g.mean().unwrap()) * 2.0)]
    })
}

#[test]
fn a_random_cotangent_catches_what_a_plain_sum_hides() {
    let options = GradCheckOptions::default();
    // Under a plain sum the wrong VJP gives the right (zero) gradient: the bug is hidden.
    let summed = check_grads(
        &params(50),
        |p| Ok(centre_doubled(p.get("x")?)?.sum_all()),
        &options,
    )
    .unwrap();
    assert!(summed.passed(), "{summed}");
    // The checker's random cotangent, in directional mode, sees it.
    let options = GradCheckOptions {
        full_jacobian_max: 0,
        ..options
    };
    let report = check_grads(&params(50), |p| centre_doubled(p.get("x")?), &options).unwrap();
    assert_eq!(report.get("x").unwrap().mode, CheckMode::Directional);
    assert!(!report.passed(), "{report}");
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let err = check_grads(
        &params(2),
        |p| p.get("x")?.matmul(p.get("x")?),
        &GradCheckOptions::default(),
    );
    assert!(err.is_err());
    let err = check_grads(
        &params(2),
        |p| Ok(p.get("missing")?.exp()),
        &GradCheckOptions::default(),
    );
    assert!(err.is_err());
}

#[test]
fn report_prints_one_line_per_param() {
    let p: Params<f64> = [
        ("a".to_string(), arr1(&[1.0]).into_dyn()),
        ("b".to_string(), arr1(&[2.0]).into_dyn()),
    ]
    .into_iter()
    .collect();
    let report = check_grads(
        &p,
        |p| p.get("a")?.mul(p.get("b")?),
        &GradCheckOptions::default(),
    )
    .unwrap();
    let text = report.to_string();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains("ok"));
}
