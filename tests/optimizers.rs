//! Optimizers: values against independent computations, key checks, and the guarantee that
//! frozen params and buffers are untouched by Adam and weight decay.

use ndarray::{ArrayD, arr1};
use proptest::prelude::*;
use tapegrad::nn::{BatchNorm, FrozenEmbed, Mlp};
use tapegrad::optim::{Adam, LearningRate, Optimizer, Sgd};
use tapegrad::testing::mlp_case;
use tapegrad::{
    ApplyOptions, Error, Grads, ModuleExt, Mutable, Params, Tensor, softmax_cross_entropy,
    value_and_grad_with_aux,
};

fn params(values: &[f64]) -> Params<f64> {
    [("w".to_string(), arr1(values).into_dyn())]
        .into_iter()
        .collect()
}

/// Gradients of `sum(w^3)`: `3 w^2`, non-constant so that steps differ.
fn grads_of_cube(p: &Params<f64>) -> Grads<f64> {
    tapegrad::grad(p, |t| Ok(t.get("w")?.powi(3).sum_all())).unwrap()
}

#[test]
fn two_sgd_momentum_steps_equal_the_formula() {
    let (lr, mu) = (0.1, 0.9);
    let mut p = params(&[0.5, -1.0]);
    let mut sgd = Sgd::new(lr).momentum(mu);
    let (mut w, mut v) = ([0.5f64, -1.0], [0.0f64; 2]);
    for _ in 0..2 {
        let g = grads_of_cube(&p);
        sgd.update(&mut p, &g).unwrap();
        for i in 0..2 {
            v[i] = mu * v[i] + 3.0 * w[i] * w[i];
            w[i] -= lr * v[i];
        }
    }
    assert_eq!(p.get("w").unwrap().as_slice().unwrap(), &w);
    assert_eq!(sgd.velocity("w").unwrap().as_slice().unwrap(), &v);
}

#[test]
fn nesterov_and_weight_decay_follow_pytorch() {
    let (lr, mu, wd) = (0.05, 0.8, 0.1);
    let mut p = params(&[2.0]);
    let mut sgd = Sgd::new(lr).momentum(mu).nesterov(true).weight_decay(wd);
    let (mut w, mut v) = (2.0f64, 0.0f64);
    for _ in 0..3 {
        let g = grads_of_cube(&p);
        sgd.update(&mut p, &g).unwrap();
        let g = 3.0 * w * w + wd * w;
        v = mu * v + g;
        w -= lr * (g + mu * v);
    }
    assert!((p.get("w").unwrap()[[0]] - w).abs() < 1e-14);
}

/// Three steps of `optimizer` on a param of 300,007 elements (updated over the threads in
/// shares cut anywhere) and one of 7 beside it, against `formula(t, w, state, g)` applied to
/// each element on its own (`t` counts steps from 1, `state` starts at zeros): the same bits.
fn assert_steps_follow_the_formula(
    optimizer: &mut dyn Optimizer<f64>,
    formula: impl Fn(i32, &mut f64, &mut [f64; 2], f64),
    what: &str,
) {
    let sizes = [("big", 300_007usize), ("small", 7)];
    let start = |i: usize| ((i as f64) * 0.37).sin();
    let gradient = |w: f64, i: usize| w * w + (i as f64 * 0.11).cos();
    let mut p: Params<f64> = sizes
        .iter()
        .map(|&(name, n)| (name, ArrayD::from_shape_fn(vec![n], |i| start(i[0]))))
        .collect();
    let mut expected: Vec<Vec<(f64, [f64; 2])>> = sizes
        .iter()
        .map(|&(_, n)| (0..n).map(|i| (start(i), [0.0; 2])).collect())
        .collect();
    for t in 1..=3 {
        let g = Grads::zeros_like(&p)
            .map(|path, zeros| {
                let w = p.get(path).unwrap();
                ArrayD::from_shape_fn(zeros.raw_dim(), |i| gradient(w[&i], i[0]))
            })
            .unwrap();
        optimizer.update(&mut p, &g).unwrap();
        for param in &mut expected {
            for (i, (w, state)) in param.iter_mut().enumerate() {
                formula(t, w, state, gradient(*w, i));
            }
        }
    }
    // Params iterate by path: "big", then "small".
    for ((path, w), expected) in p.iter().zip(&expected) {
        let expected: Vec<f64> = expected.iter().map(|(w, _)| *w).collect();
        assert_eq!(w.as_slice().unwrap(), expected.as_slice(), "{what}: {path}");
    }
}

#[test]
fn sgd_on_params_split_over_threads_equals_the_formula_at_every_element() {
    let (lr, mu, wd) = (0.1, 0.9, 0.01);
    for (momentum, nesterov) in [(0.0, false), (mu, false), (mu, true)] {
        let mut sgd = Sgd::new(lr)
            .momentum(momentum)
            .nesterov(nesterov)
            .weight_decay(wd);
        let formula = |_, w: &mut f64, [v, _]: &mut [f64; 2], g: f64| {
            let g = g + wd * *w;
            let step = if momentum == 0.0 {
                g
            } else {
                *v = momentum * *v + g;
                if nesterov { g + momentum * *v } else { *v }
            };
            *w -= lr * step;
        };
        let what = format!("SGD, momentum {momentum}, Nesterov {nesterov}");
        assert_steps_follow_the_formula(&mut sgd, formula, &what);
    }
}

#[test]
fn adam_on_params_split_over_threads_equals_the_formula_at_every_element() {
    let (lr, b1, b2, eps) = (0.01, 0.9, 0.999, 1e-8);
    for (wd, decoupled) in [(0.0, false), (0.1, false), (0.01, true)] {
        let mut adam = if decoupled {
            Adam::adamw(lr)
        } else {
            Adam::new(lr).weight_decay(wd)
        };
        let formula = |t: i32, w: &mut f64, [m, v]: &mut [f64; 2], g: f64| {
            let g = if decoupled {
                *w -= lr * wd * *w;
                g
            } else {
                g + wd * *w
            };
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *w -= adam_step(lr, [b1, b2], eps, t, *m, *v);
        };
        let what = format!("Adam, weight decay {wd}, decoupled {decoupled}");
        assert_steps_follow_the_formula(&mut adam, formula, &what);
    }
}

/// Makes a fresh optimizer.
type Make = fn() -> Box<dyn Optimizer<f64>>;

/// Makers of a fresh SGD with momentum and a fresh Adam: the optimizers that keep state
/// per param.
fn stateful_optimizers() -> [Make; 2] {
    [
        || Box::new(Sgd::new(0.1).momentum(0.9)),
        || Box::new(Adam::new(0.1)),
    ]
}

/// Params frozen after some steps leave their state in the optimizer: the others' state
/// must still be found by path. `b` is frozen after two steps; `a` and `c` then follow
/// exactly the trajectory of an optimizer that never saw `b`, and `b`'s state is kept.
#[test]
fn state_left_by_a_frozen_param_is_kept_and_never_used_for_another() {
    let all = |values: [f64; 3]| -> Params<f64> {
        ["a", "b", "c"]
            .into_iter()
            .zip(values)
            .map(|(name, v)| (name, arr1(&[v]).into_dyn()))
            .collect()
    };
    let without_b = |p: &Params<f64>| p.partition(|path| path == "b");
    let cube = |p: &Params<f64>| {
        tapegrad::grad(p, |t| {
            let mut sum = None::<Tensor<f64>>;
            for path in p.paths() {
                let cubed = t.get(path)?.powi(3).sum_all();
                sum = Some(match sum {
                    Some(s) => s.add(&cubed)?,
                    None => cubed,
                });
            }
            Ok(sum.expect("params"))
        })
        .unwrap()
    };
    for make in stateful_optimizers() {
        let (mut seen_b, mut never_b) = (make(), make());
        let mut p = all([0.5, -1.0, 0.8]);
        let (_, mut q) = without_b(&p);
        for _ in 0..2 {
            let g = cube(&p);
            seen_b.update(&mut p, &g).unwrap();
            let g = cube(&q);
            never_b.update(&mut q, &g).unwrap();
        }
        let state_before = seen_b.state();
        let (frozen, mut trainable) = without_b(&p);
        for _ in 0..2 {
            let g = cube(&trainable);
            seen_b.update(&mut trainable, &g).unwrap();
            let g = cube(&q);
            never_b.update(&mut q, &g).unwrap();
        }
        assert_eq!(trainable, q);
        assert_eq!(frozen.paths().collect::<Vec<_>>(), ["b"]);
        let state = seen_b.state();
        for (slot, arrays) in &state.slots {
            let kept = state_before.slots[slot].get("b");
            assert!(kept.is_some(), "{slot} of b after two steps");
            assert_eq!(arrays.get("b"), kept, "{slot} of b");
        }
    }
}

/// Adam's step at step `t` (from 1) with moments `m` and `v`, arranged as PyTorch arranges it:
/// `lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)` (`torch.optim.Adam`, single-tensor path).
fn adam_step(lr: f64, [b1, b2]: [f64; 2], eps: f64, t: i32, m: f64, v: f64) -> f64 {
    let step_size = lr / (1.0 - b1.powi(t));
    let denominator = v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
    step_size * (m / denominator)
}

#[test]
fn two_adam_steps_equal_the_formula() {
    let (lr, b1, b2, eps) = (0.01, 0.9, 0.999, 1e-8);
    let mut p = params(&[0.5, -1.0]);
    let mut adam = Adam::new(lr);
    let (mut w, mut m, mut v) = ([0.5f64, -1.0], [0.0f64; 2], [0.0f64; 2]);
    for t in 1..=2 {
        let g = grads_of_cube(&p);
        adam.update(&mut p, &g).unwrap();
        for i in 0..2 {
            let g = 3.0 * w[i] * w[i];
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            w[i] -= adam_step(lr, [b1, b2], eps, t, m[i], v[i]);
        }
    }
    for i in 0..2 {
        assert!((p.get("w").unwrap()[[i]] - w[i]).abs() < 1e-15);
        assert!((adam.first_moment("w").unwrap()[[i]] - m[i]).abs() < 1e-15);
    }
}

#[test]
fn adamw_decays_a_param_whose_gradient_is_zero() {
    // The pitfall our types remove: a "frozen" param left in the optimizer's params moves
    // under weight decay even with a zero gradient.
    let mut p = params(&[1.0]);
    let zero: Grads<f64> =
        tapegrad::grad(&p, |t| Ok(t.get("w")?.mul_scalar(0.0).sum_all())).unwrap();
    Adam::adamw(0.1).update(&mut p, &zero).unwrap();
    assert!(p.get("w").unwrap()[[0]] < 1.0);
}

#[test]
fn grads_keyed_unlike_params_are_an_error_and_nothing_moves() {
    let mut p = params(&[1.0]);
    p.insert("extra", arr1(&[3.0]).into_dyn());
    let before = p.clone();
    let grads = grads_of_cube(&params(&[1.0])); // has "w" only
    let err = Sgd::new(0.1).update(&mut p, &grads).unwrap_err();
    assert!(
        matches!(&err, Error::KeyMismatch { missing, .. } if missing == &["extra".to_string()]),
        "{err}"
    );
    assert!(Adam::new(0.1).update(&mut p, &grads).is_err());
    assert_eq!(p, before);
}

#[test]
fn a_param_replaced_by_another_shape_is_an_error_naming_it_and_nothing_moves() {
    let mut sgd = Sgd::new(0.1).momentum(0.9);
    let mut adam = Adam::new(0.1);
    let mut p = params(&[1.0, 2.0]);
    let grads = grads_of_cube(&p);
    sgd.update(&mut p, &grads).unwrap(); // both optimizers now keep state of shape [2]
    adam.update(&mut p, &grads).unwrap();

    // The same path, three elements: the kept velocity and moments no longer fit.
    let mut p = params(&[1.0, 2.0, 3.0]);
    let before = p.clone();
    let grads = grads_of_cube(&p);
    for err in [
        sgd.update(&mut p, &grads).unwrap_err(),
        adam.update(&mut p, &grads).unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(
            message.contains("\"w\"") && message.contains("[2]") && message.contains("[3]"),
            "{message}"
        );
    }
    assert_eq!(p, before);
}

/// The shape check walks the kept state and the gradients together in path order: with the
/// state of a frozen param (`b`) between the two others, a misshapen `c` is still found and
/// named, and neither the params nor the state move.
#[test]
fn a_misshapen_param_after_a_frozen_one_is_named_and_nothing_moves() {
    let of = |entries: &[(&str, &[f64])]| -> Params<f64> {
        entries
            .iter()
            .map(|&(path, values)| (path, arr1(values).into_dyn()))
            .collect()
    };
    let squares = |p: &Params<f64>| {
        tapegrad::grad(p, |t| {
            let mut total = t.get("a")?.square().sum_all();
            for path in p.paths().filter(|&path| path != "a") {
                total = total.add(&t.get(path)?.square().sum_all())?;
            }
            Ok(total)
        })
        .unwrap()
    };
    for make in stateful_optimizers() {
        let mut optimizer = make();
        let mut p = of(&[("a", &[1.0]), ("b", &[2.0]), ("c", &[3.0])]);
        let g = squares(&p);
        optimizer.update(&mut p, &g).unwrap();
        let state_before = optimizer.state();

        // `b` frozen (no gradient), `c` replaced by two elements under the same path.
        let mut p = of(&[("a", &[1.0]), ("c", &[3.0, 4.0])]);
        let (params_before, g) = (p.clone(), squares(&p));
        let message = optimizer.update(&mut p, &g).unwrap_err().to_string();
        assert!(
            message.contains("\"c\"") && message.contains("[1]") && message.contains("[2]"),
            "{message}"
        );
        assert_eq!(p, params_before);
        assert_eq!(optimizer.state().slots, state_before.slots);
    }
}

#[test]
fn schedules_drive_the_learning_rate() {
    let mut sgd = Sgd::<f64>::new(LearningRate::Step {
        initial: 1.0,
        gamma: 0.1,
        every: 1,
    });
    let mut p = params(&[1.0]);
    assert_eq!(sgd.current_learning_rate(), 1.0);
    let g = grads_of_cube(&p);
    sgd.update(&mut p, &g).unwrap(); // w = 1 - 1·3 = -2
    assert_eq!(p.get("w").unwrap()[[0]], -2.0);
    assert!((sgd.current_learning_rate() - 0.1).abs() < 1e-15);
}

proptest! {
    #![proptest_config(tapegrad::testing::config(64))]

    /// Over random models and random sequences of steps (mutable forward, value_and_grad,
    /// optimizer update, merge): every non-params collection is bit-identical across each
    /// optimizer update and changes only at the merge, to exactly the apply's output;
    /// frozen params never change, under Adam with weight decay or SGD with weight decay.
    #[test]
    fn only_trainable_params_move(case in mlp_case(), steps in 1..5usize, adam in any::<bool>(), freeze in any::<bool>()) {
        let model = case.model();
        let mut vars = case.variables();
        let x = case.input();
        let (frozen, mut trainable) = vars.params().partition(|p| freeze && p.starts_with("Dense_0/"));
        let mut optimizer: Box<dyn Optimizer<f64>> = if adam {
            Box::new(Adam::adamw(0.05).weight_decay(0.5))
        } else {
            Box::new(Sgd::new(0.1).momentum(0.9).weight_decay(0.5))
        };
        let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
        for _ in 0..steps {
            let (_, updates, grads) = value_and_grad_with_aux(&trainable, |p| {
                let (logits, updates) = model.apply_tracked(&p.with_frozen(&frozen)?, &vars, &x, &train)?;
                Ok((softmax_cross_entropy(&logits, &case.labels)?, updates))
            }).unwrap();
            let buffers_before = vars.clone();
            optimizer.update(&mut trainable, &grads).unwrap();
            prop_assert_eq!(&vars, &buffers_before); // the update saw only `trainable`
            let expected_stats = updates.collection("batch_stats").cloned();
            vars.merge(updates).unwrap();
            prop_assert_eq!(vars.collection("batch_stats").cloned(), expected_stats);
            vars = vars.with_params(trainable.merged(&frozen).unwrap());
        }
        let (frozen_after, _) = vars.params().partition(|p| freeze && p.starts_with("Dense_0/"));
        prop_assert_eq!(frozen_after, frozen);
    }
}

#[test]
fn a_frozen_table_in_state_is_untouched_by_adamw_across_many_steps() {
    use tapegrad::{Module, Result, Scope};
    struct Model;
    impl Module<f64> for Model {
        type Input = ArrayD<usize>;
        type Output = Tensor<f64>;
        fn kind(&self) -> &'static str {
            "Model"
        }
        fn forward(&self, scope: &mut Scope<'_, f64>, ids: &ArrayD<usize>) -> Result<Tensor<f64>> {
            let rows = scope.call(&FrozenEmbed::new(5, 2), ids)?;
            let h = rows.reshape(&[ids.shape()[0], 2 * ids.shape()[1]])?;
            scope.call(&Mlp::new(&[4], 2).with_batch_norm(BatchNorm::new()), &h)
        }
    }
    let ids = ndarray::arr2(&[[0usize, 1], [2, 1], [4, 0]]).into_dyn();
    let mut vars = Model.init(0, &ids).unwrap();
    let table = vars.collection("state").cloned();
    let mut adam = Adam::adamw(0.1).weight_decay(1.0);
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    for _ in 0..50 {
        let (_, updates, grads) = value_and_grad_with_aux(vars.params(), |p| {
            let (logits, updates) = Model.apply_tracked(p, &vars, &ids, &train)?;
            Ok((softmax_cross_entropy(&logits, &[0, 1, 1])?, updates))
        })
        .unwrap();
        adam.update(vars.params_mut(), &grads).unwrap();
        vars.merge(updates).unwrap();
    }
    assert_eq!(vars.collection("state").cloned(), table);
}

/// A large finite gradient in `f32`: `v / (1 − β₂)` would overflow (1e37 / 1e-3), yet the
/// step is finite and about the learning rate, as in PyTorch.
#[test]
fn adam_moves_a_param_by_the_learning_rate_for_a_huge_finite_f32_gradient() {
    let mut p: Params<f32> = [("w".to_string(), arr1(&[1.0f32]).into_dyn())]
        .into_iter()
        .collect();
    let g = Grads::zeros_like(&p)
        .map(|_, _| arr1(&[1e20f32]).into_dyn())
        .unwrap();
    Adam::new(0.01).update(&mut p, &g).unwrap();
    let w = p.get("w").unwrap()[[0]];
    assert!((w - (1.0 - 0.01)).abs() < 1e-6, "{w}");
}

/// Step counts are 64-bit wherever they are used: an Adam resumed at step 2^32 − 1 takes a
/// finite step (the bias corrections at 1), and a step schedule at step 2^31 decays to 0
/// rather than wrapping to a negative power.
#[test]
fn step_counts_past_32_bits_give_finite_rates_and_steps() {
    let mut p = params(&[0.5, -1.0]);
    let mut adam = Adam::new(0.01);
    let mut state = adam.state();
    state.steps = u32::MAX as usize;
    adam.load_state(state).unwrap();
    let g = grads_of_cube(&p);
    adam.update(&mut p, &g).unwrap();
    assert!(p.get("w").unwrap().iter().all(|w| w.is_finite()));
    let step = LearningRate::Step {
        initial: 0.1,
        gamma: 0.5,
        every: 1,
    };
    assert_eq!(step.at(1 << 31), 0.0);
    assert!(step.at(usize::MAX).is_finite());
}

/// Schedules whose settings mean nothing are refused by the optimizer that is given one,
/// before anything moves; a rate that grows past f64's range is refused at the step it does.
#[test]
fn schedules_that_mean_nothing_are_refused_and_nothing_moves() {
    let refused = [
        (
            LearningRate::Step {
                initial: 0.1,
                gamma: 0.5,
                every: 0,
            },
            "steps between decays",
        ),
        (
            LearningRate::Cosine {
                initial: 0.1,
                final_value: 0.0,
                steps: 0,
            },
            "decay steps",
        ),
        (
            LearningRate::WarmupCosine {
                peak: 0.1,
                warmup: 10,
                steps: 10,
                final_value: 0.0,
            },
            "warm-up steps",
        ),
    ];
    for (schedule, setting) in refused {
        let mut p = params(&[0.5, -1.0]);
        let before = p.clone();
        let err = Sgd::new(schedule)
            .update(&mut p, &grads_of_cube(&before))
            .unwrap_err();
        assert!(err.to_string().contains(setting), "{err}");
        assert_eq!(p, before);
    }
    let growing = LearningRate::Exponential {
        initial: 1.0,
        gamma: 1e300,
    };
    let mut sgd = Sgd::new(growing);
    let mut p = params(&[0.5, -1.0]);
    let tiny = Grads::zeros_like(&p)
        .map(|_, g| g.mapv(|_| 1e-300))
        .unwrap();
    for _ in 0..2 {
        sgd.update(&mut p, &tiny).unwrap(); // steps 0 and 1: rates 1 and 1e300
    }
    let before = p.clone();
    let err = sgd.update(&mut p, &tiny).unwrap_err();
    assert!(err.to_string().contains("learning rate at step 2"), "{err}");
    assert_eq!(p, before);
}
