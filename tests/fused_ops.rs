//! The fused primitives (BatchNorm's training forward, Dense's matmul-plus-bias, softmax
//! cross-entropy) against the composites of primitives they replace: the same values and
//! the same gradients, to rounding, for random shapes and values. (Each is also checked
//! against finite differences: `tests/buffers_excluded.rs` and `tests/op_gradients.rs`.)

use ndarray::ArrayD;
use proptest::prelude::*;
use tapegrad::nn::{BatchNorm, Dense};
use tapegrad::testing::arrays;
use tapegrad::{
    Apply, Grads, ModuleExt, Mutable, ParamTensors, Params, Result, Tensor, one_hot, value_and_grad,
};

/// Agreement to 1e-12, relative to the values' scale.
fn close(a: &ArrayD<f64>, b: &ArrayD<f64>) -> bool {
    let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * scale)
}

/// Values and gradients (under fixed non-uniform output weights) of two formulations.
fn compare(
    params: &Params<f64>,
    fused: impl Fn(&ParamTensors<f64>) -> Result<Tensor<f64>>,
    composite: impl Fn(&ParamTensors<f64>) -> Result<Tensor<f64>>,
) -> std::result::Result<(), TestCaseError> {
    let weigh = |t: Tensor<f64>| -> Result<Tensor<f64>> {
        let w: Vec<f64> = (0..t.len())
            .map(|i| 1.0 + (i as f64 * 0.37).sin())
            .collect();
        Ok(t.mul(&Tensor::from_vec(t.shape(), w)?)?.sum_all())
    };
    let run = |f: &dyn Fn(&ParamTensors<f64>) -> Result<Tensor<f64>>| -> (ArrayD<f64>, Grads<f64>) {
        let value = f(&ParamTensors::constants(params)).unwrap().value().clone();
        let (_, grads) = value_and_grad(params, |p| weigh(f(p)?)).unwrap();
        (value, grads)
    };
    let (v1, g1) = run(&fused);
    let (v2, g2) = run(&composite);
    prop_assert!(close(&v1, &v2), "values {v1} vs {v2}");
    for (path, g) in g1.iter() {
        prop_assert!(
            close(g, g2.get(path).unwrap()),
            "{path}: {g} vs {}",
            g2.get(path).unwrap()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn fused_batch_norm_equals_the_composite(
        (x, scale, bias) in (2..7usize, 1..5usize).prop_flat_map(|(n, f)| (
            arrays::<f64>(vec![n, f], -3.0..3.0), arrays::<f64>(vec![f], 0.5..2.0), arrays::<f64>(vec![f], -1.0..1.0))),
    ) {
        let params: Params<f64> = [("x".into(), x), ("scale".into(), scale), ("bias".into(), bias)].into_iter().collect();
        let train = Apply::train().mutable(Mutable::only(["batch_stats"]));
        compare(
            &params,
            |p| {
                // The layer at the root reads `scale` and `bias` from p; batch_stats from init.
                let x = p.get("x")?;
                let vars = BatchNorm::new().init(0, &x.detach())?;
                let (y, _) = BatchNorm::new().apply_tracked(p, &vars, x, &train)?;
                Ok(y)
            },
            |p| {
                let (x, scale, bias) = (p.get("x")?, p.get("scale")?, p.get("bias")?);
                let mean = x.mean_axes(&[0], true)?;
                let centred = x.sub(&mean)?;
                let var = centred.square().mean_axes(&[0], true)?;
                centred.div(&var.add_scalar(1e-5).sqrt())?.mul(scale)?.add(bias)
            },
        )?;
    }

    #[test]
    fn batch_norm_with_relu_in_its_node_equals_batch_norm_then_relu(
        (x, scale, bias) in (2..7usize, 1..5usize).prop_flat_map(|(n, f)| (
            arrays::<f64>(vec![n, f], -3.0..3.0), arrays::<f64>(vec![f], 0.5..2.0), arrays::<f64>(vec![f], -1.0..1.0))),
    ) {
        let params: Params<f64> = [("x".into(), x), ("scale".into(), scale), ("bias".into(), bias)].into_iter().collect();
        let train = Apply::train().mutable(Mutable::only(["batch_stats"]));
        let apply = |layer: BatchNorm, p: &ParamTensors<f64>| -> Result<Tensor<f64>> {
            let x = p.get("x")?;
            let vars = layer.init(0, &x.detach())?;
            Ok(layer.apply_tracked(p, &vars, x, &train)?.0)
        };
        compare(
            &params,
            |p| apply(BatchNorm::new().with_relu(), p),
            |p| Ok(apply(BatchNorm::new(), p)?.relu()),
        )?;
    }

    #[test]
    fn fused_linear_equals_matmul_plus_bias(
        (x, w, b) in (1..5usize, 1..5usize, 1..5usize).prop_flat_map(|(n, i, o)| (
            arrays::<f64>(vec![n, i], -2.0..2.0), arrays::<f64>(vec![i, o], -2.0..2.0), arrays::<f64>(vec![o], -2.0..2.0))),
    ) {
        let params: Params<f64> = [("x".into(), x), ("kernel".into(), w), ("bias".into(), b)].into_iter().collect();
        compare(
            &params,
            |p| {
                let vars = tapegrad::Variables::new();
                let (y, _) = Dense::new(p.get("bias")?.len()).apply_tracked(p, &vars, p.get("x")?, &Apply::eval())?;
                Ok(y)
            },
            |p| p.get("x")?.matmul(p.get("kernel")?)?.add(p.get("bias")?),
        )?;
    }

    #[test]
    fn fused_cross_entropy_equals_the_composite(
        (z, labels) in (1..5usize, 2..5usize).prop_flat_map(|(b, c)| (arrays::<f64>(vec![b, c], -4.0..4.0), prop::collection::vec(0..c, b))),
    ) {
        let params: Params<f64> = [("z".into(), z)].into_iter().collect();
        compare(
            &params,
            |p| tapegrad::softmax_cross_entropy(p.get("z")?, &labels),
            |p| {
                let z = p.get("z")?;
                let picked = z.log_softmax(1)?.mul(&one_hot(&labels, z.shape()[1])?)?.sum_all();
                Ok(picked.mul_scalar(-1.0 / labels.len() as f64))
            },
        )?;
    }
}
