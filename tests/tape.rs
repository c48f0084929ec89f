//! The tape's contract: append order, accumulation, constants cost nothing, and errors.

use approx::assert_abs_diff_eq;
use ndarray::{ArrayD, arr1, arr2};
use tapegrad::{Error, Operand, Params, Tape, Tensor, value_and_grad};

fn leaf(tape: &Tape<f64>, name: &str, v: &[f64]) -> Tensor<f64> {
    tape.leaf(name, arr1(v).into_dyn())
}

#[test]
fn constants_record_nothing() {
    let tape = Tape::<f64>::new();
    let x = Tensor::constant(arr2(&[[1.0, 2.0], [3.0, 4.0]]).into_dyn());
    let y = x
        .matmul(&x)
        .unwrap()
        .exp()
        .sum_axes(&[0], false)
        .unwrap()
        .log_softmax(0)
        .unwrap();
    assert!(!y.is_tracked());
    assert_eq!(tape.len(), 0);
}

#[test]
fn only_ops_with_a_tracked_input_are_recorded() {
    let tape = Tape::<f64>::new();
    let w = leaf(&tape, "w", &[1.0, 2.0]);
    let c = Tensor::constant(arr1(&[3.0, 4.0]).into_dyn());
    let c2 = c.mul(&c).unwrap().exp(); // constants only: two ops, no nodes
    assert_eq!(tape.len(), 1);
    let _ = w.mul(&c2).unwrap().sum_all();
    let ops: Vec<_> = tape.entries().iter().map(|e| e.op).collect();
    assert_eq!(ops, ["leaf", "mul", "sum"]);
    // The constant input of the mul shows as "const".
    assert_eq!(
        tape.entries()[1].inputs,
        vec![Operand::Node(0), Operand::Constant(None)]
    );
}

#[test]
fn append_order_is_topological() {
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[0.5]);
    let y = x.exp().mul(&x.tanh()).unwrap().add(&x).unwrap().sum_all();
    let _ = y;
    for entry in tape.entries() {
        assert!(
            entry
                .inputs
                .iter()
                .filter_map(Operand::node)
                .all(|i| i < entry.id),
            "{entry}"
        );
    }
}

#[test]
fn gradients_accumulate_over_every_use() {
    // f(x) = x*x + x + exp(x): the three uses contribute 2x + 1 + exp(x).
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[0.3, -1.2]);
    let y = x
        .mul(&x)
        .unwrap()
        .add(&x)
        .unwrap()
        .add(&x.exp())
        .unwrap()
        .sum_all();
    let g = y.backward().unwrap();
    let g = g.get(&x).unwrap();
    for (i, &v) in [0.3f64, -1.2].iter().enumerate() {
        assert_abs_diff_eq!(g[[i]], 2.0 * v + 1.0 + v.exp(), epsilon = 1e-12);
    }
}

#[test]
fn softmax_cross_entropy_gradient_is_softmax_minus_one_hot_over_batch() {
    // d/dlogits of mean CE = (softmax(logits) - onehot(y)) / B (workload.md, section 3).
    let logits = arr2(&[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]);
    let labels = [1, 2];
    let params: Params<f64> = [("z".to_string(), logits.clone().into_dyn())]
        .into_iter()
        .collect();
    let (_, grads) = value_and_grad(&params, |p| {
        tapegrad::softmax_cross_entropy(p.get("z")?, &labels)
    })
    .unwrap();
    for (b, row) in logits.outer_iter().enumerate() {
        let total: f64 = row.iter().map(|v| v.exp()).sum();
        for (c, &z) in row.iter().enumerate() {
            let expected = (z.exp() / total - if c == labels[b] { 1.0 } else { 0.0 }) / 2.0;
            assert_abs_diff_eq!(grads.get("z").unwrap()[[b, c]], expected, epsilon = 1e-12);
        }
    }
}

#[test]
fn max_splits_the_gradient_between_ties() {
    // max([1, 3, 3]) = 3 at two positions: each gets half of the gradient.
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[1.0, 3.0, 3.0]);
    let g = x.max_axes(&[0], false).unwrap().backward().unwrap();
    assert_eq!(g.get(&x).unwrap().as_slice().unwrap(), &[0.0, 0.5, 0.5]);
}

#[test]
fn matmul_vjp_literal() {
    // y = sum(A B) with A = [[1, 2]], B = [[3], [4]]: dA = 1 Bᵀ = [[3, 4]], dB = Aᵀ 1 = [[1], [2]].
    let tape = Tape::<f64>::new();
    let a = tape.leaf("a", arr2(&[[1.0, 2.0]]).into_dyn());
    let b = tape.leaf("b", arr2(&[[3.0], [4.0]]).into_dyn());
    let g = a.matmul(&b).unwrap().sum_all().backward().unwrap();
    assert_eq!(g.get(&a).unwrap().as_slice().unwrap(), &[3.0, 4.0]);
    assert_eq!(g.get(&b).unwrap().as_slice().unwrap(), &[1.0, 2.0]);
}

#[test]
fn broadcast_gradient_is_summed_back_to_shape() {
    // b (shape [3]) is added to each of 2 rows: each element of b is used twice, so its
    // gradient is 2 under a sum.
    let tape = Tape::<f64>::new();
    let a = tape.leaf("a", ArrayD::zeros(vec![2, 3]));
    let b = leaf(&tape, "b", &[1.0, 2.0, 3.0]);
    let g = a.add(&b).unwrap().sum_all().backward().unwrap();
    assert_eq!(g.get(&b).unwrap().as_slice().unwrap(), &[2.0, 2.0, 2.0]);
    assert_eq!(g.get(&a).unwrap().shape(), &[2, 3]);
}

#[test]
fn gather_rows_backward_is_a_scatter_add_with_zero_for_unused_rows() {
    let tape = Tape::<f64>::new();
    let table = tape.leaf("table", ArrayD::from_elem(vec![4, 2], 0.5));
    let ids = arr2(&[[0usize, 2], [2, 2]]).into_dyn();
    let g = table
        .gather_rows(&ids)
        .unwrap()
        .sum_all()
        .backward()
        .unwrap();
    let g = g.get(&table).unwrap();
    // Row 0 looked up once, row 2 three times, rows 1 and 3 never: exactly zero.
    assert_eq!(
        g.as_slice().unwrap(),
        &[1.0, 1.0, 0.0, 0.0, 3.0, 3.0, 0.0, 0.0]
    );
}

#[test]
fn backward_from_a_non_scalar_is_an_error() {
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[1.0, 2.0]);
    let err = x.exp().backward().expect_err("non-scalar");
    assert!(matches!(err, Error::NotScalar { .. }));
    assert!(err.to_string().contains("[2]"), "{err}");
}

#[test]
fn mixing_tapes_is_an_error() {
    let (t1, t2) = (Tape::<f64>::new(), Tape::<f64>::new());
    let x = leaf(&t1, "x", &[1.0]);
    let y = leaf(&t2, "y", &[2.0]);
    assert!(matches!(
        x.add(&y),
        Err(Error::DifferentTapes { op: "add" })
    ));
    let g = x.sum_all().backward().unwrap();
    assert!(g.get(&y).is_none());
    assert!(matches!(g.wrt(&y), Err(Error::DifferentTapes { .. })));
}

#[test]
fn shape_errors_name_the_op_and_both_shapes() {
    let a = Tensor::<f64>::constant(ArrayD::zeros(vec![2, 3]));
    let b = Tensor::<f64>::constant(ArrayD::zeros(vec![4]));
    let msg = a.mul(&b).unwrap_err().to_string();
    assert!(
        msg.contains("mul") && msg.contains("[2, 3]") && msg.contains("[4]"),
        "{msg}"
    );
    let msg = a.reshape(&[5]).unwrap_err().to_string();
    assert!(
        msg.contains("reshape") && msg.contains("[2, 3]") && msg.contains("[5]"),
        "{msg}"
    );
    let msg = a.matmul(&a).unwrap_err().to_string();
    assert!(msg.contains("matmul") && msg.contains("[2, 3]"), "{msg}");
    let msg = a
        .gather_rows(arr1(&[7usize]).into_dyn())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("gather_rows") && msg.contains('7'), "{msg}");
}

#[test]
fn value_and_grad_keys_mirror_params_and_unused_params_get_zeros() {
    let params: Params<f64> = [
        ("used".to_string(), arr1(&[1.0, 2.0]).into_dyn()),
        ("unused".to_string(), arr1(&[5.0]).into_dyn()),
    ]
    .into_iter()
    .collect();
    let (loss, grads) = value_and_grad(&params, |p| Ok(p.get("used")?.sum_all())).unwrap();
    assert_eq!(loss, 3.0);
    assert_eq!(
        grads.paths().collect::<Vec<_>>(),
        params.paths().collect::<Vec<_>>()
    );
    assert_eq!(grads.get("unused").unwrap().as_slice().unwrap(), &[0.0]);
}

#[test]
fn value_and_grad_reports_bad_input_instead_of_panicking() {
    let params: Params<f64> = [("w".to_string(), arr1(&[1.0, 2.0]).into_dyn())]
        .into_iter()
        .collect();
    assert!(matches!(
        value_and_grad(&params, |p| Ok(p.get("w")?.exp())),
        Err(Error::NotScalar { .. })
    ));
    assert!(matches!(
        value_and_grad(&params, |p| Ok(p.get("nope")?.sum_all())),
        Err(Error::MissingVariable { .. })
    ));
    let other = Tape::new().leaf("x", arr1(&[1.0]).into_dyn());
    assert!(matches!(
        value_and_grad(&params, |_| Ok(other.sum_all())),
        Err(Error::DifferentTapes { .. })
    ));
}

#[test]
fn a_custom_vjp_of_the_wrong_shape_is_an_error_naming_the_op() {
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[1.0, 2.0]);
    let y = tapegrad::custom_op("broken", &[&x], x.value().clone(), |_, _| {
        vec![Some(ArrayD::zeros(vec![3]))]
    })
    .unwrap();
    let err = y
        .sum_all()
        .backward()
        .expect_err("a [3] gradient for a [2] input");
    assert!(
        err.to_string().contains("broken") && err.to_string().contains("[3]"),
        "{err}"
    );
}

/// Backward releases what each op saved once its VJP has run: the activations a forward
/// pass shared with the tape are no longer held by it, and `LeafGradients` holds no tape.
#[test]
fn backward_releases_what_each_op_saved() {
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[0.5, 1.5]);
    let hidden = x.exp(); // its VJP keeps x's value and its own output
    let loss = hidden.square().sum_all(); // keeps hidden's value
    let held = |t: &Tensor<f64>| std::sync::Arc::strong_count(&t.shared_value()) - 1;
    let (x_before, hidden_before) = (held(&x), held(&hidden));
    let grads = loss.backward().unwrap();
    assert_eq!(held(&x), x_before - 1, "exp's VJP released x");
    assert_eq!(
        held(&hidden),
        hidden_before - 2,
        "both VJPs released exp's output"
    );
    drop((tape, x.clone(), hidden, loss));
    let g = grads.get(&x).unwrap(); // 2 e^{2x}
    assert_abs_diff_eq!(g[[0]], 2.0 * 1f64.exp(), epsilon = 1e-12);
}

/// Walking a released tape again is an error naming the node (PyTorch: "Trying to backward
/// through the graph a second time"); `backward_retaining` keeps it walkable.
#[test]
fn a_second_backward_needs_the_first_to_retain() {
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[2.0]);
    let y = x.square().sum_all();
    let first = y.backward_retaining(ArrayD::ones(y.shape())).unwrap();
    let second = y.backward().unwrap();
    assert_eq!(first.wrt(&x).unwrap(), second.wrt(&x).unwrap());
    match y.backward() {
        Err(Error::BackwardTwice { op: "sum", node: 2 }) => {}
        other => panic!("expected BackwardTwice at the sum, got {other:?}"),
    }
}

/// A VJP may record on the tape it is called from (the tape is not borrowed while a VJP
/// runs): a user's op whose backward makes a leaf used to panic with "already borrowed".
#[test]
fn a_custom_vjp_may_record_on_its_own_tape() {
    let tape = Tape::<f64>::new();
    let x = leaf(&tape, "x", &[1.0, 2.0]);
    let recorder = tape.clone();
    let y = tapegrad::custom_op("doubled", &[&x], x.value() * 2.0, move |g, _| {
        let scratch = recorder.leaf("scratch", g.clone()); // records during backward
        vec![Some(scratch.value() * 2.0)]
    })
    .unwrap();
    let nodes_before = tape.len();
    let grads = y.sum_all().backward().unwrap();
    assert_eq!(grads.get(&x).unwrap(), &arr1(&[2.0, 2.0]).into_dyn());
    assert_eq!(tape.len(), nodes_before + 2, "the sum, then the VJP's leaf");
}

#[test]
fn a_constant_computed_from_a_labelled_one_is_not_labelled_as_it() {
    let var = Tensor::<f64>::constant(ndarray::arr1(&[4.0])).with_label("batch_stats/var");
    let derived = var.add_scalar(1e-5).sqrt().recip();
    assert_eq!(derived.label(), None);
    assert_eq!(var.clone().label(), Some("batch_stats/var")); // a clone is the same value
    assert_eq!(
        derived.with_label("1/√(var + ε)").label(),
        Some("1/√(var + ε)")
    );
}
