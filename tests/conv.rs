//! Convolution and pooling against their definitions written as direct loops (the six-deep
//! sum the im2col lowering replaces), and their bad input.

use ndarray::{ArrayD, Axis, IxDyn};
use proptest::prelude::*;
use tapegrad::testing::arrays;
use tapegrad::{ConvOptions, Error, Padding, Tensor};

/// `pad_before` and the output size of one axis, as Flax/XLA define them.
fn axis(
    input: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    padding: Padding,
    a: usize,
) -> (usize, usize) {
    let reach = (k - 1) * dilation + 1;
    match padding {
        Padding::Same => {
            let out = input.div_ceil(stride);
            let total = ((out - 1) * stride + reach).saturating_sub(input);
            (total / 2, out)
        }
        Padding::Valid => (0, (input - reach) / stride + 1),
        Padding::Explicit(p) => (p[a].0, (input + p[a].0 + p[a].1 - reach) / stride + 1),
    }
}

/// The definition: `y[n,i,j,o] = Σ_{u,v,c} x[n, i·s − p + u·d, j·s − p + v·d, g·Cg + c] · k[u,v,c,o]`.
fn direct_conv(x: &ArrayD<f64>, k: &ArrayD<f64>, o: &ConvOptions) -> ArrayD<f64> {
    let (b, h, w, _) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (kh, kw, cg, outputs) = (k.shape()[0], k.shape()[1], k.shape()[2], k.shape()[3]);
    let og = outputs / o.groups;
    let (ph, oh) = axis(h, kh, o.strides[0], o.dilation[0], o.padding, 0);
    let (pw, ow) = axis(w, kw, o.strides[1], o.dilation[1], o.padding, 1);
    let mut y = ArrayD::zeros(IxDyn(&[b, oh, ow, outputs]));
    for n in 0..b {
        for i in 0..oh {
            for j in 0..ow {
                for out in 0..outputs {
                    let g = out / og;
                    let mut sum = 0.0;
                    for u in 0..kh {
                        for v in 0..kw {
                            let r = (i * o.strides[0] + u * o.dilation[0]) as isize - ph as isize;
                            let c = (j * o.strides[1] + v * o.dilation[1]) as isize - pw as isize;
                            if r < 0 || c < 0 || r >= h as isize || c >= w as isize {
                                continue;
                            }
                            for ch in 0..cg {
                                sum += x[[n, r as usize, c as usize, g * cg + ch]]
                                    * k[[u, v, ch, out]];
                            }
                        }
                    }
                    y[[n, i, j, out]] = sum;
                }
            }
        }
    }
    y
}

proptest! {
    #![proptest_config(tapegrad::testing::config(256))]

    #[test]
    fn conv2d_equals_the_direct_definition(
        (x, k, options) in ((1..3usize, 1..8usize, 1..8usize), (1..4usize, 1..3usize, 0..3usize),
                            (1..4usize, 1..4usize, 1..3usize, 1..3usize, 0..4usize))
            .prop_flat_map(|((b, h, w), (cg, og, groups_pick), (kh, kw, stride, dilation, pad))| {
                let groups = [1, 2, 3][groups_pick];
                let padding = [Padding::Same, Padding::Valid, Padding::Explicit([(1, 0), (0, 2)]), Padding::Explicit([(2, 2), (1, 1)])][pad];
                let options = ConvOptions { strides: [stride, stride + dilation - 1], padding, dilation: [dilation, 1], groups };
                (arrays::<f64>(vec![b, h, w, cg * groups], -2.0..2.0), arrays::<f64>(vec![kh, kw, cg, og * groups], -2.0..2.0), Just(options))
            }),
    ) {
        let y = Tensor::constant(x.clone()).conv2d(&Tensor::constant(k.clone()), &options);
        let Ok(y) = y else {
            // Only a window that does not fit may be refused.
            prop_assume!(false);
            unreachable!()
        };
        let reference = direct_conv(&x, &k, &options);
        prop_assert_eq!(y.shape(), reference.shape());
        for (a, b) in y.value().iter().zip(&reference) {
            prop_assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
    }

    #[test]
    fn pooling_equals_the_direct_definition(
        (x, window, stride) in (1..3usize, 1..7usize, 1..7usize, 1..3usize)
            .prop_flat_map(|(b, h, w, c)| (arrays::<f64>(vec![b, h, w, c], -2.0..2.0), [1..4usize, 1..4usize], 1..3usize)),
    ) {
        let t = Tensor::constant(x.clone());
        for padding in [Padding::Same, Padding::Valid] {
            let (Ok(max), Ok(avg)) = (t.max_pool(window, [stride, stride], padding), t.avg_pool(window, [stride, stride], padding)) else {
                prop_assert_eq!(padding, Padding::Valid, "SAME always fits");
                continue;
            };
            let (ph, oh) = axis(x.shape()[1], window[0], stride, 1, padding, 0);
            let (pw, ow) = axis(x.shape()[2], window[1], stride, 1, padding, 1);
            prop_assert_eq!(max.shape(), &[x.shape()[0], oh, ow, x.shape()[3]]);
            for ((n, i, j, c), &m) in max.value().indexed_iter().map(|(ix, v)| ((ix[0], ix[1], ix[2], ix[3]), v)) {
                let (mut best, mut sum) = (f64::NEG_INFINITY, 0.0);
                for u in 0..window[0] {
                    for v in 0..window[1] {
                        let (r, q) = ((i * stride + u) as isize - ph as isize, (j * stride + v) as isize - pw as isize);
                        if r >= 0 && q >= 0 && (r as usize) < x.shape()[1] && (q as usize) < x.shape()[2] {
                            let value = x[[n, r as usize, q as usize, c]];
                            best = best.max(value);
                            sum += value;
                        }
                    }
                }
                prop_assert_eq!(m, best);
                let mean = avg.value()[[n, i, j, c]];
                prop_assert!((mean - sum / (window[0] * window[1]) as f64).abs() < 1e-12);
            }
        }
    }
}

/// Ties: the first maximum of the window (row-major) takes the whole gradient.
#[test]
fn a_tie_in_max_pool_sends_the_gradient_to_the_first_maximum() {
    let tape = tapegrad::Tape::<f64>::new();
    let x = tape.leaf(
        "x",
        ArrayD::from_shape_vec(vec![1, 2, 2, 1], vec![1.0, 3.0, 3.0, 0.0]).unwrap(),
    );
    let grads = x
        .max_pool([2, 2], [2, 2], Padding::Valid)
        .unwrap()
        .sum_all()
        .backward()
        .unwrap();
    assert_eq!(
        grads.get(&x).unwrap().iter().copied().collect::<Vec<_>>(),
        [0.0, 1.0, 0.0, 0.0]
    );
}

/// Values with many ties, and sometimes −∞ or NaN.
fn tie_prone() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => (-1i32..=1).prop_map(f64::from),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::NAN),
    ]
}

proptest! {
    /// Max pooling's value and VJP against the definition, on inputs full of ties, −∞ and NaN,
    /// with overlapping windows and windows that lie wholly in padding: each output is the
    /// first NaN of its window if there is one, else its first maximum (row-major), and that
    /// tap alone receives the output's gradient; a window entirely in padding gives −∞ and
    /// sends nothing. Exact: the sums are the definition's, in the same order.
    #[test]
    fn max_pool_sends_each_gradient_to_its_window_first_maximum(
        (x, weights, window, stride, pad) in (1..3usize, 1..6usize, 1..6usize, 1..3usize, 1..4usize, 1..4usize, 1..3usize, 0..4usize)
            .prop_flat_map(|(b, h, w, c, kh, kw, stride, pad)| {
                let out = |n: usize, k: usize| (n + 2 * pad).saturating_sub(k) / stride + 1;
                let out_shape = vec![b, out(h, kh), out(w, kw), c];
                (arrays::<f64>(vec![b, h, w, c], tie_prone()), arrays::<f64>(out_shape, -2.0..2.0), Just([kh, kw]), Just(stride), Just(pad))
            })
            .prop_filter("the window fits the padded input", |(x, _, [kh, kw], _, pad)| {
                x.shape()[1] + 2 * pad >= *kh && x.shape()[2] + 2 * pad >= *kw
            }),
    ) {
        let padding = Padding::Explicit([(pad, pad), (pad, pad)]);
        let tape = tapegrad::Tape::<f64>::new();
        let leaf = tape.leaf("x", x.clone());
        let y = leaf.max_pool(window, [stride, stride], padding).unwrap();
        prop_assert_eq!(y.shape(), weights.shape());
        let grads = y.mul(&Tensor::constant(weights.clone())).unwrap().sum_all().backward().unwrap();
        let (h, w) = (x.shape()[1] as isize, x.shape()[2] as isize);
        let mut expected_dx = ArrayD::<f64>::zeros(x.shape());
        for ((n, i, j, c), &got) in y.value().indexed_iter().map(|(ix, v)| ((ix[0], ix[1], ix[2], ix[3]), v)) {
            let mut winner: Option<([usize; 4], f64)> = None;
            for u in 0..window[0] {
                for v in 0..window[1] {
                    let (r, q) = ((i * stride + u) as isize - pad as isize, (j * stride + v) as isize - pad as isize);
                    if r < 0 || q < 0 || r >= h || q >= w {
                        continue;
                    }
                    let at = [n, r as usize, q as usize, c];
                    let value = x[at];
                    let better = match winner {
                        None => true,
                        Some((_, best)) => value > best || (value.is_nan() && !best.is_nan()),
                    };
                    if better {
                        winner = Some((at, value));
                    }
                }
            }
            match winner {
                Some((at, best)) => {
                    prop_assert!(got == best || (got.is_nan() && best.is_nan()), "output {:?}: {} against {}", (n, i, j, c), got, best);
                    expected_dx[at] += weights[[n, i, j, c]];
                }
                None => prop_assert_eq!(got, f64::NEG_INFINITY, "a window wholly in padding"),
            }
        }
        let dx = grads.get(&leaf).unwrap();
        prop_assert_eq!(dx, &expected_dx);
    }
}

fn invalid(result: tapegrad::Result<Tensor<f64>>, op: &str, mentions: &[&str]) {
    let err = result.expect_err("bad input must be an error");
    assert!(
        matches!(
            err,
            Error::InvalidArgument { .. } | Error::IncompatibleShapes { .. }
        ),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.starts_with(op), "{message}");
    for m in mentions {
        assert!(message.contains(m), "{message} should mention {m}");
    }
}

#[test]
fn bad_convolution_and_pooling_input_is_an_error_naming_the_op_and_shapes() {
    let x = Tensor::constant(ArrayD::<f64>::zeros(vec![2, 4, 4, 3]));
    let kernel = |shape: &[usize]| Tensor::constant(ArrayD::<f64>::zeros(shape.to_vec()));
    let valid = ConvOptions {
        padding: Padding::Valid,
        ..ConvOptions::default()
    };
    // The kernel's input channels do not match the input's.
    invalid(
        x.conv2d(&kernel(&[3, 3, 2, 5]), &valid),
        "conv2d",
        &["[2, 4, 4, 3]", "[3, 3, 2, 5]"],
    );
    // A kernel larger than a VALID input.
    invalid(
        x.conv2d(&kernel(&[5, 5, 3, 1]), &valid),
        "conv2d",
        &["[2, 4, 4, 3]", "does not fit"],
    );
    // Stride or dilation 0.
    for options in [
        ConvOptions {
            strides: [0, 1],
            ..ConvOptions::default()
        },
        ConvOptions {
            dilation: [1, 0],
            ..ConvOptions::default()
        },
    ] {
        invalid(
            x.conv2d(&kernel(&[3, 3, 3, 1]), &options),
            "conv2d",
            &["at least 1"],
        );
    }
    // Not NHWC, a kernel of the wrong rank, groups that do not divide.
    invalid(
        Tensor::constant(ArrayD::zeros(vec![4, 4, 3])).conv2d(&kernel(&[3, 3, 3, 1]), &valid),
        "conv2d",
        &["[4, 4, 3]"],
    );
    invalid(
        x.conv2d(&kernel(&[3, 3, 3]), &valid),
        "conv2d",
        &["[3, 3, 3]"],
    );
    let grouped = ConvOptions {
        groups: 2,
        ..ConvOptions::default()
    };
    invalid(
        x.conv2d(&kernel(&[3, 3, 1, 2]), &grouped),
        "conv2d",
        &["groups"],
    );
    // A pooling window larger than the input.
    invalid(
        x.max_pool([5, 5], [1, 1], Padding::Valid),
        "max_pool",
        &["[2, 4, 4, 3]"],
    );
    invalid(
        x.avg_pool([2, 2], [0, 1], Padding::Same),
        "avg_pool",
        &["at least 1"],
    );
}

/// BatchNorm over NCHW with `axis(1)` computes what BatchNorm over NHWC computes, permuted:
/// the statistics are per channel either way. And without scale or bias it has no such
/// params.
#[test]
fn batch_norm_axis_and_affine_options() {
    use tapegrad::nn::BatchNorm;
    use tapegrad::{ApplyOptions, ModuleExt, Mutable};
    let x = Tensor::from_vec(
        &[2, 3, 3, 4],
        (0..72).map(|i| ((i * 7) as f64 * 0.31).sin()).collect(),
    )
    .unwrap();
    let nchw = x.permute(&[0, 3, 1, 2]).unwrap();
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let last = BatchNorm::new();
    let second = BatchNorm::new().axis(1);
    let (v_last, v_second) = (last.init(0, &x).unwrap(), second.init(0, &nchw).unwrap());
    assert_eq!(v_last, v_second);
    let (y, updates) = last.apply(&v_last, &x, &train).unwrap();
    let (y_nchw, updates_nchw) = second.apply(&v_second, &nchw, &train).unwrap();
    let back = y_nchw.permute(&[0, 2, 3, 1]).unwrap();
    for (a, b) in y.value().iter().zip(back.value()) {
        assert!((a - b).abs() < 1e-12);
    }
    for name in ["batch_stats/mean", "batch_stats/var"] {
        let (a, b) = (updates.get(name).unwrap(), updates_nchw.get(name).unwrap());
        assert!(
            a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-12),
            "{name}"
        );
    }
    let plain = BatchNorm::new()
        .without_scale()
        .without_bias()
        .init(0, &x)
        .unwrap();
    assert!(plain.params().is_empty());
    assert!(BatchNorm::new().axis(4).init(0, &x).is_err());
}

/// Enough positions and taps that the patch matrix is built in several blocks of rows
/// (`conv.rs` keeps each block near 256 K elements): the blocks join up, in the value and in
/// every gradient.
#[test]
fn a_convolution_in_several_blocks_equals_its_definition_and_its_gradients_check() {
    use tapegrad::gradcheck::{GradCheckOptions, check_grads};
    let shape = [2, 9, 9, 300]; // 162 positions of 2,700 taps: blocks of 97 rows
    let n: usize = shape.iter().product();
    let x = ArrayD::from_shape_vec(
        shape.to_vec(),
        (0..n).map(|i| ((i * 13) as f64 * 0.017).sin()).collect(),
    )
    .unwrap();
    let k = ArrayD::from_shape_vec(
        vec![3, 3, 300, 2],
        (0..5400)
            .map(|i| ((i * 7) as f64 * 0.023).cos() * 0.05)
            .collect(),
    )
    .unwrap();
    let options = ConvOptions {
        strides: [1, 1],
        ..ConvOptions::default()
    };
    let y = Tensor::constant(x.clone())
        .conv2d(&Tensor::constant(k.clone()), &options)
        .unwrap();
    let reference = direct_conv(&x, &k, &options);
    assert!(
        y.value()
            .iter()
            .zip(&reference)
            .all(|(a, b)| (a - b).abs() < 1e-10)
    );
    let params: tapegrad::Params<f64> = [("x".to_string(), x), ("k".to_string(), k)]
        .into_iter()
        .collect();
    let report = check_grads(
        &params,
        |p| p.get("x")?.conv2d(p.get("k")?, &options),
        &GradCheckOptions::default(),
    )
    .unwrap();
    assert!(report.passed(), "{report}");
}

proptest! {
    #![proptest_config(tapegrad::testing::config(32))]

    /// A small CNN in training mode (Conv → BatchNorm → tanh → average pool → Conv →
    /// BatchNorm → global average → Dense), random sizes and strides: every param's gradient
    /// matches finite differences, and `batch_stats` is held fixed and unchanged. Smooth
    /// activations and average pooling keep finite differences valid everywhere; ReLU and max
    /// pooling are checked op by op in `op_gradients.rs`.
    #[test]
    fn cnn_gradients_match_finite_differences_with_batch_stats_held_fixed(
        (x, labels, stride, channels) in (2..4usize, 4..7usize, 1..3usize, 1..3usize, 1..4usize)
            .prop_flat_map(|(b, side, c, stride, channels)| (
                arrays::<f64>(vec![b, side, side, c], -2.0..2.0),
                prop::collection::vec(0..3usize, b),
                Just(stride),
                Just(channels),
            )),
    ) {
        use tapegrad::gradcheck::{GradCheckOptions, check_model};
        use tapegrad::nn::{Activation, BatchNorm, Conv, Dense, GlobalAvgPool, Pool, Sequential};
        use tapegrad::{ApplyOptions, ModuleExt, Mutable};
        let model = Sequential::<f64>::new()
            .push(Conv::new(channels + 1, [3, 3]).strides([stride, stride]))
            .push(BatchNorm::new().momentum(0.8))
            .push(Activation::Tanh)
            .push(Pool::average([2, 2]).padding(Padding::Same))
            .push(Conv::new(2, [1, 1]))
            .push(BatchNorm::new())
            .push(GlobalAvgPool)
            .push(Dense::new(3));
        let x = Tensor::constant(x);
        let variables = model.init(1, &x)?;
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        let report = check_model(&model, &variables, &x, &train,
            |logits| tapegrad::softmax_cross_entropy(logits, &labels), &GradCheckOptions::default())?;
        prop_assert!(report.passed(), "{report}");
        prop_assert_eq!(report.held_fixed, vec![("batch_stats".to_string(), true)]);
    }
}

/// Max and average pooling of a batch large enough to run in several chunks over the threads
/// (`kernels/chunks.rs`: 2^16 elements, here 2 images a chunk) gives, image by image, what
/// pooling that image alone gives (one chunk, checked against the definition above): values
/// and input gradients, exactly, with tiling windows and with overlapping ones.
#[test]
fn pooling_a_batch_in_several_chunks_equals_each_image_pooled_alone() {
    let shape = [7, 30, 30, 32];
    let x = ArrayD::from_shape_fn(IxDyn(&shape), |i| {
        (((i[0] * 31 + i[1]) * 37 + i[2] * 11 + i[3]) as f64 * 0.29).sin()
    });
    let cases = [([2, 2], 2, Padding::Valid), ([3, 3], 2, Padding::Same)];
    for ((window, stride, padding), max) in cases.into_iter().flat_map(|c| [(c, true), (c, false)])
    {
        // The output's cotangent differs from image to image (`first`: the batch's first
        // image's number), so a chunk reading another chunk's part would be seen.
        let pool = |x: ArrayD<f64>, first: usize| {
            let tape = tapegrad::Tape::<f64>::new();
            let leaf = tape.leaf("x", x);
            let y = if max {
                leaf.max_pool(window, [stride, stride], padding)
            } else {
                leaf.avg_pool(window, [stride, stride], padding)
            }
            .unwrap();
            let weights = ArrayD::from_shape_fn(y.shape(), |i| {
                1.0 + (3 * (first + i[0]) + i[1] + 2 * i[3]) as f64
            });
            let dx = y
                .backward_with(weights)
                .unwrap()
                .get(&leaf)
                .unwrap()
                .clone();
            (y.value().clone(), dx)
        };
        let (y, dx) = pool(x.clone(), 0);
        for n in 0..shape[0] {
            let image = x.slice_axis(Axis(0), (n..n + 1).into()).to_owned();
            let (y_alone, dx_alone) = pool(image, n);
            let at = |a: &ArrayD<f64>| a.slice_axis(Axis(0), (n..n + 1).into()).to_owned();
            assert_eq!(
                at(&y),
                y_alone,
                "max {max}, {window:?} {padding:?}: image {n}'s values"
            );
            assert_eq!(
                at(&dx),
                dx_alone,
                "max {max}, {window:?} {padding:?}: image {n}'s gradient"
            );
        }
    }
}

/// `Conv` with a bias runs as one node when fusion is on, the bias a row of the kernel matrix
/// read by a column of ones in the patches (`kernels/conv.rs`), its gradient from the same
/// product as the kernel's, or `Σ dY` when the kernel is frozen. With every subset of
/// {input, kernel, bias} frozen, the fused node gives the composite's gradients (`conv2d`
/// then `add`) for the others, to 1e-12 relative, and none for the frozen.
#[test]
fn conv_with_bias_gives_the_composite_gradients_whichever_inputs_are_frozen() {
    use tapegrad::nn::Conv;
    use tapegrad::{ApplyOptions, Fusion, ModuleExt, ParamTensors, Params, Variables};
    let value = |shape: &[usize], seed: f64| {
        let len: usize = shape.iter().product();
        let values = (0..len).map(|k| (seed + k as f64 * 0.71).sin()).collect();
        ArrayD::from_shape_vec(IxDyn(shape), values).unwrap()
    };
    let all = [
        ("x", value(&[2, 5, 6, 3], 0.3)),
        ("kernel", value(&[3, 3, 3, 4], 0.7)),
        ("bias", value(&[4], 1.1)),
    ];
    let layer = Conv::new(4, [3, 3]);
    for frozen_mask in 0..7u32 {
        let split = |frozen: bool| -> Params<f64> {
            let chosen = all.iter().enumerate();
            chosen
                .filter(|&(i, _)| (frozen_mask >> i & 1 == 1) == frozen)
                .map(|(_, (path, v))| (path.to_string(), v.clone()))
                .collect()
        };
        let (trainable, frozen) = (split(false), split(true));
        let gradients = |fusion: Fusion| {
            fusion.run(|| {
                let tape = tapegrad::Tape::new();
                let p = ParamTensors::leaves(&trainable, &tape)
                    .with_frozen(&frozen)
                    .unwrap();
                let x = p.get("x").unwrap();
                let (y, _) = layer
                    .apply_tracked(&p, &Variables::new(), x, &ApplyOptions::eval())
                    .unwrap();
                let weights = value(y.shape(), 2.3);
                let grads = y.backward_with(weights).unwrap();
                let paths: Vec<&str> = trainable.paths().collect();
                paths
                    .iter()
                    .map(|path| grads.get(p.get(path).unwrap()).unwrap().clone())
                    .collect::<Vec<_>>()
            })
        };
        let (fused, composite) = (gradients(Fusion::On), gradients(Fusion::Off));
        assert_eq!(fused.len(), trainable.len());
        for ((path, f), c) in trainable.paths().zip(&fused).zip(&composite) {
            let scale = c.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let worst = f
                .iter()
                .zip(c)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                f.shape() == c.shape() && worst <= 1e-12 * scale,
                "frozen {frozen_mask:03b}: {path} off by {worst}"
            );
        }
    }
}
