//! Invariant 9, fusion changes nothing but speed: each fused implementation against the
//! definition it replaces, chosen by the one switch ([`Fusion`]). For random shapes and
//! values, both give the same values, gradients and running statistics (f64, 1e-12 relative
//! to the values' scale: the two differ only in the order of roundings), and each passes
//! the finite-difference check on its own.

use ndarray::ArrayD;
use proptest::prelude::*;
use tapegrad::gradcheck::{GradCheckOptions, check_grads, check_model};
use tapegrad::nn::{BatchNorm, Dense};
use tapegrad::testing::{arrays, distinct_arrays, mlp_case};
use tapegrad::{
    ApplyOptions, Fusion, Grads, ModuleExt, Mutable, ParamTensors, Params, Result, Tensor, Updates,
    Variables, softmax_cross_entropy, value_and_grad_with_aux,
};

/// The largest magnitude in `arrays`, and at least 1.
fn scale<'a>(arrays: impl IntoIterator<Item = &'a ArrayD<f64>>) -> f64 {
    arrays
        .into_iter()
        .flat_map(|a| a.iter())
        .fold(1.0f64, |m, v| m.max(v.abs()))
}

/// Agreement to 1e-12 relative to `scale`.
fn close(a: &ArrayD<f64>, b: &ArrayD<f64>, scale: f64) -> bool {
    a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-12 * scale)
}

/// What one setting computes: the output, the gradients of a non-uniform weighting of it
/// (a plain sum would hide errors that cancel across outputs, as in a normalisation), and
/// the collections the computation wrote.
struct Outcome {
    output: ArrayD<f64>,
    grads: Grads<f64>,
    updates: Option<Updates<f64>>,
}

type Computation<'a> =
    dyn Fn(&ParamTensors<f64>) -> Result<(Tensor<f64>, Option<Updates<f64>>)> + 'a;

fn outcome(fusion: Fusion, params: &Params<f64>, f: &Computation<'_>) -> Outcome {
    fusion.run(|| {
        let weigh = |t: &Tensor<f64>| -> Result<Tensor<f64>> {
            let w: Vec<f64> = (0..t.len())
                .map(|i| 1.0 + (i as f64 * 0.37).sin())
                .collect();
            Ok(t.mul(&Tensor::from_vec(t.shape(), w)?)?.sum_all())
        };
        let (output, updates) = f(&ParamTensors::constants(params)).unwrap();
        let (_, (), grads) =
            value_and_grad_with_aux(params, |p| Ok((weigh(&f(p)?.0)?, ()))).unwrap();
        Outcome {
            output: output.value().clone(),
            grads,
            updates,
        }
    })
}

/// Both settings agree, and each passes `check_grads`.
fn fused_equals_definition(
    params: &Params<f64>,
    f: &Computation<'_>,
) -> std::result::Result<(), TestCaseError> {
    outcomes_agree(
        &outcome(Fusion::On, params, f),
        &outcome(Fusion::Off, params, f),
    )?;
    for fusion in [Fusion::On, Fusion::Off] {
        let report = fusion
            .run(|| check_grads(params, |p| Ok(f(p)?.0), &GradCheckOptions::default()))
            .unwrap();
        prop_assert!(report.passed(), "{fusion:?}: {report}");
    }
    Ok(())
}

/// The fused outcome's values, gradients and statistics agree with the definition's.
fn outcomes_agree(fused: &Outcome, definition: &Outcome) -> std::result::Result<(), TestCaseError> {
    prop_assert!(
        close(
            &fused.output,
            &definition.output,
            scale([&definition.output])
        ),
        "values {} vs {}",
        fused.output,
        definition.output
    );
    // Gradients relative to the largest of the computation's gradients: one that is zero in
    // exact arithmetic (a Dense bias before a BatchNorm: the mean subtraction cancels it)
    // is a sum of terms of that size which cancel, and keeps their rounding error.
    let gradient_scale = scale(definition.grads.iter().map(|(_, g)| g));
    for (path, g) in fused.grads.iter() {
        let reference = definition.grads.get(path).unwrap();
        prop_assert!(
            close(g, reference, gradient_scale),
            "gradient of {path}: {g} vs {reference} (scale {gradient_scale})"
        );
    }
    if let (Some(a), Some(b)) = (&fused.updates, &definition.updates) {
        for name in b.collection_names() {
            for (path, value) in b.collection(name).unwrap().iter() {
                let other = a.get(&format!("{name}/{path}")).unwrap();
                prop_assert!(
                    close(other, value, scale([value])),
                    "{name}/{path}: {other} vs {value}"
                );
            }
        }
    }
    Ok(())
}

fn params_of(entries: Vec<(&str, ArrayD<f64>)>) -> Params<f64> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

proptest! {
    #![proptest_config(tapegrad::testing::config(128))]

    /// `Dense`: `linear` against `matmul` then `add`, every input differentiated.
    #[test]
    fn dense_linear_equals_matmul_plus_bias(
        (x, kernel, bias) in (1..5usize, 1..5usize, 1..5usize).prop_flat_map(|(n, i, o)| (
            arrays::<f64>(vec![n, i], -2.0..2.0),
            arrays::<f64>(vec![i, o], -2.0..2.0),
            arrays::<f64>(vec![o], -2.0..2.0))),
    ) {
        let features = bias.len();
        let params = params_of(vec![("x", x), ("kernel", kernel), ("bias", bias)]);
        // The layer at the root reads `kernel` and `bias` from the params given to it.
        fused_equals_definition(&params, &|p| {
            let (y, _) = Dense::new(features).apply_tracked(p, &Variables::new(), p.get("x")?, &ApplyOptions::eval())?;
            Ok((y, None))
        })?;
    }

    /// `BatchNorm` in training mode on inputs of rank 2 to 4 (statistics over every axis but
    /// the last): the fused node against the composite, including the running statistics.
    /// Few features, or 15 to 34: the fused loops compute in blocks of 16 features and the
    /// rest one by one (`kernels/rows.rs`), so both parts are drawn.
    #[test]
    fn batch_norm_fused_equals_the_composite(
        (x, scale, bias, momentum) in (prop::collection::vec(1..4usize, 0..=2), 2..5usize, prop_oneof![1..4usize, 15..35usize])
            .prop_flat_map(|(spatial, batch, features)| {
                let mut shape = vec![batch];
                shape.extend(spatial);
                shape.push(features);
                (distinct_arrays::<f64>(shape, 0.05),
                 arrays::<f64>(vec![features], 0.5..2.0),
                 arrays::<f64>(vec![features], -1.0..1.0),
                 0.5..0.99f64)
            }),
    ) {
        let params = params_of(vec![("x", x), ("scale", scale), ("bias", bias)]);
        let layer = BatchNorm::new().momentum(momentum);
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        fused_equals_definition(&params, &|p| {
            let x = p.get("x")?;
            let variables = layer.init(0, &x.detach())?;
            let (y, updates) = layer.apply_tracked(p, &variables, x, &train)?;
            Ok((y, Some(updates)))
        })?;
    }

    /// `Mlp` with BatchNorm and ReLU, where the ReLU runs inside BatchNorm's fused node:
    /// logits, the loss's gradients and the new statistics against the composite, and the
    /// model passes `check_model` (params checked, batch_stats held fixed) either way.
    #[test]
    fn mlp_with_batch_norm_relu_fused_equals_the_composite(
        case in mlp_case().prop_filter("with BatchNorm", |case| case.batch_norm.is_some()),
    ) {
        let (model, variables) = (case.model(), case.variables());
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        let x = case.input::<f64>();
        fused_equals_definition(variables.params(), &|p| {
            let (logits, updates) = model.apply_tracked(p, &variables, &x, &train)?;
            Ok((logits, Some(updates)))
        })?;
        for fusion in [Fusion::On, Fusion::Off] {
            let report = fusion.run(|| check_model(&model, &variables, &x, &train,
                |logits| softmax_cross_entropy(logits, &case.labels), &GradCheckOptions::default()))?;
            prop_assert!(report.passed(), "{fusion:?}: {report}");
        }
    }

    /// `Conv` with a bias: the bias written into the product against `conv2d` then `add`,
    /// for strides 1–2, both paddings and one or two groups.
    #[test]
    fn conv_with_bias_fused_equals_conv_then_add(
        (x, kernel, bias, options) in (1..3usize, 2..6usize, 1..3usize, 1..3usize, 1..3usize, any::<bool>(), any::<bool>())
            .prop_flat_map(|(b, side, per_group, outputs, groups, same, strided)| {
                let options = tapegrad::ConvOptions {
                    strides: if strided { [2, 2] } else { [1, 1] },
                    padding: if same { tapegrad::Padding::Same } else { tapegrad::Padding::Valid },
                    groups,
                    ..Default::default()
                };
                (arrays::<f64>(vec![b, side, side, per_group * groups], -2.0..2.0),
                 arrays::<f64>(vec![2, 2, per_group, outputs * groups], -1.0..1.0),
                 arrays::<f64>(vec![outputs * groups], -1.0..1.0),
                 Just(options))
            }),
    ) {
        let features = bias.len();
        let params = params_of(vec![("x", x), ("kernel", kernel), ("bias", bias)]);
        let layer = tapegrad::nn::Conv { options, ..tapegrad::nn::Conv::new(features, [2, 2]) };
        fused_equals_definition(&params, &|p| {
            let (y, _) = layer.apply_tracked(p, &Variables::new(), p.get("x")?, &ApplyOptions::eval())?;
            Ok((y, None))
        })?;
    }

    /// Softmax cross-entropy: one node against `-(log_softmax · onehot).sum() / B`.
    #[test]
    fn softmax_cross_entropy_fused_equals_the_composite(
        (z, labels) in (1..5usize, 2..5usize).prop_flat_map(|(b, c)| (
            arrays::<f64>(vec![b, c], -4.0..4.0), prop::collection::vec(0..c, b))),
    ) {
        let params = params_of(vec![("z", z)]);
        fused_equals_definition(&params, &|p| Ok((softmax_cross_entropy(p.get("z")?, &labels)?, None)))?;
    }
}

/// With fusion off the tape shows the primitives, and the variables do not depend on the
/// switch.
#[test]
fn with_fusion_off_the_tape_records_primitives_and_variables_are_the_same() {
    let model = tapegrad::nn::Mlp::new(&[3], 2).with_batch_norm(BatchNorm::new());
    let x = Tensor::from_vec(&[4, 2], (0..8).map(|i| (i as f64 * 0.9).sin()).collect()).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let ops = |fusion: Fusion| -> (Vec<&'static str>, Vec<String>) {
        fusion.run(|| {
            let variables = model.init(0, &x).unwrap();
            let tape = tapegrad::Tape::new();
            let p = ParamTensors::leaves(variables.params(), &tape);
            let (logits, _) = model.apply_tracked(&p, &variables, &x, &train).unwrap();
            softmax_cross_entropy(&logits, &[0, 1, 1, 0]).unwrap();
            let ops = tape
                .entries()
                .iter()
                .map(|e| e.op)
                .filter(|&op| op != "leaf")
                .collect();
            (ops, variables.iter().map(|(name, _)| name).collect())
        })
    };
    let (fused, fused_names) = ops(Fusion::On);
    let (composite, composite_names) = ops(Fusion::Off);
    assert_eq!(
        fused,
        [
            "linear",
            "batch_norm_relu",
            "linear",
            "softmax_cross_entropy"
        ]
    );
    for primitive in [
        "matmul", "add", "sub", "mul", "sum", "sqrt", "recip", "relu", "log", "exp",
    ] {
        assert!(
            composite.contains(&primitive),
            "{primitive} missing from {composite:?}"
        );
    }
    assert!(
        composite.iter().all(|op| !fused.contains(op)),
        "{composite:?}"
    );
    assert_eq!(fused_names, composite_names);
}

/// `BatchNorm::with_relu` runs the ReLU inside the fused node with fusion on, and a separate
/// `relu` with fusion off; a `Sequential` of `BatchNorm` then `Activation::Relu` runs two ops
/// either way. All three give the same values.
#[test]
fn batch_norm_with_relu_runs_in_one_node_and_equals_batch_norm_then_relu() {
    use tapegrad::nn::{Activation, Sequential};
    let fused_layer = Sequential::<f64>::new()
        .push(Dense::new(3))
        .push(BatchNorm::new().with_relu())
        .push(Dense::new(2));
    let separate = Sequential::<f64>::new()
        .push(Dense::new(3))
        .push(BatchNorm::new())
        .push(Activation::Relu)
        .push(Dense::new(2));
    let x = Tensor::from_vec(&[4, 2], (0..8).map(|i| (i as f64 * 0.7).cos()).collect()).unwrap();
    let variables = separate.init(0, &x).unwrap();
    assert_eq!(
        variables,
        fused_layer.init(0, &x).unwrap(),
        "the same variables"
    );
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let run = |model: &Sequential<f64>, fusion: Fusion| {
        fusion.run(|| {
            let tape = tapegrad::Tape::new();
            let p = ParamTensors::leaves(variables.params(), &tape);
            let (y, _) = model.apply_tracked(&p, &variables, &x, &train).unwrap();
            let ops: Vec<&str> = tape.entries().iter().map(|e| e.op).collect();
            (y.value().clone(), ops)
        })
    };
    let (fused, fused_ops) = run(&fused_layer, Fusion::On);
    assert!(fused_ops.contains(&"batch_norm_relu"), "{fused_ops:?}");
    assert!(!fused_ops.contains(&"relu"), "{fused_ops:?}");
    let (composite, composite_ops) = run(&fused_layer, Fusion::Off);
    assert!(composite_ops.contains(&"relu") && !composite_ops.contains(&"batch_norm_relu"));
    let (pair, pair_ops) = run(&separate, Fusion::On);
    assert!(
        pair_ops.contains(&"batch_norm") && pair_ops.contains(&"relu"),
        "{pair_ops:?}"
    );
    assert!(close(&fused, &composite, scale([&composite])));
    assert_eq!(fused, pair, "the same arithmetic, in one node or two");
}

/// BatchNorm, alone and followed by a ReLU, on a batch of several chunks (its sums and passes
/// are split over the threads in chunks of 2^16 elements: `kernels/chunks.rs`): the fused
/// node against the composite, values, gradients and statistics, as for the small batches
/// of the property tests (which are one chunk each). No finite differences at this size.
#[test]
fn batch_norm_on_a_batch_of_several_chunks_fused_equals_the_composite() {
    use tapegrad::nn::Sequential;
    let (shape, features) = (vec![8, 32, 32, 24], 24); // 196,608 elements: 4 chunks
    let x = ArrayD::from_shape_fn(shape, |i| {
        let k = ((i[0] * 32 + i[1]) * 32 + i[2]) * 24 + i[3];
        3.0 * (i[3] as f64) + (k as f64 * 0.61).sin()
    });
    let scale: Vec<f64> = (0..features).map(|j| 1.0 + 0.1 * j as f64).collect();
    let bias: Vec<f64> = (0..features).map(|j| 0.3 - 0.05 * j as f64).collect();
    let params = params_of(vec![
        ("x", x),
        (
            "BatchNorm_0/scale",
            ArrayD::from_shape_vec(vec![features], scale).unwrap(),
        ),
        (
            "BatchNorm_0/bias",
            ArrayD::from_shape_vec(vec![features], bias).unwrap(),
        ),
    ]);
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    for relu in [false, true] {
        let batch_norm = BatchNorm::new().momentum(0.8);
        let model = if relu {
            Sequential::new().push(batch_norm.with_relu())
        } else {
            Sequential::new().push(batch_norm)
        };
        let f = |p: &ParamTensors<f64>| {
            let x = p.get("x")?;
            let variables = model.init(0, &x.detach())?;
            let (y, updates) = model.apply_tracked(p, &variables, x, &train)?;
            Ok((y, Some(updates)))
        };
        let (fused, definition) = (
            outcome(Fusion::On, &params, &f),
            outcome(Fusion::Off, &params, &f),
        );
        if let Err(failure) = outcomes_agree(&fused, &definition) {
            panic!("relu {relu}: {failure}");
        }
    }
}
