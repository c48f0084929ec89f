//! A resumed run is the same run: 2N steps straight against N steps, a training checkpoint,
//! fresh objects loaded from it, and N more steps give bit-identical params, batch_stats and
//! optimizer state. And a training checkpoint that does not fit is refused, all or nothing.

use tapegrad::checkpoint::{LoadMode, load_into, load_training_into, save_training};
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Adam, LearningRate, Optimizer, Sgd};
use tapegrad::{
    ApplyOptions, Error, ModuleExt, Mutable, Tensor, Variables, softmax_cross_entropy,
    value_and_grad_with_aux,
};

fn model() -> Mlp {
    Mlp::new(&[6, 5], 3).with_batch_norm(BatchNorm::new().momentum(0.8))
}

fn batch(step: usize) -> (Tensor<f64>, Vec<usize>) {
    let x = (0..16)
        .map(|i| ((i * 7 + step * 3) as f64 * 0.37).sin())
        .collect();
    let labels = (0..8).map(|i| (i + step) % 3).collect();
    (Tensor::from_vec(&[8, 2], x).unwrap(), labels)
}

fn step(variables: &mut Variables<f64>, optimizer: &mut dyn Optimizer<f64>, at: usize) {
    let (x, labels) = batch(at);
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let (_, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
        let (logits, updates) = model().apply_tracked(p, variables, &x, &train)?;
        Ok((softmax_cross_entropy(&logits, &labels)?, updates))
    })
    .unwrap();
    optimizer.update(variables.params_mut(), &grads).unwrap();
    variables.merge(updates).unwrap();
}

fn schedule() -> LearningRate {
    LearningRate::WarmupCosine {
        peak: 0.2,
        warmup: 3,
        steps: 12,
        final_value: 0.01,
    }
}

/// A way to make a fresh optimizer, the same each time.
type MakeOptimizer = fn() -> Box<dyn Optimizer<f64>>;

fn optimizers() -> Vec<(&'static str, MakeOptimizer)> {
    vec![
        ("sgd momentum", || {
            Box::new(Sgd::new(schedule()).momentum(0.9).nesterov(true))
        }),
        ("adam", || Box::new(Adam::new(schedule()))),
        ("adamw", || Box::new(Adam::adamw(schedule()))),
    ]
}

#[test]
fn n_steps_a_checkpoint_and_n_more_equal_2n_steps_bit_for_bit() {
    const N: usize = 5;
    let x0 = batch(0).0;
    let folder = tempfile::tempdir().unwrap();
    for (name, make) in optimizers() {
        let mut straight = model().init(0, &x0).unwrap();
        let mut straight_optimizer = make();
        for at in 0..2 * N {
            step(&mut straight, straight_optimizer.as_mut(), at);
        }

        let mut first = model().init(0, &x0).unwrap();
        let mut first_optimizer = make();
        for at in 0..N {
            step(&mut first, first_optimizer.as_mut(), at);
        }
        let path = folder.path().join(format!("{name}.safetensors"));
        save_training(&first, first_optimizer.as_ref(), &path).unwrap();
        drop((first, first_optimizer));

        // Fresh objects: other initial values, an optimizer that has taken no step.
        let mut resumed = model().init(7, &x0).unwrap();
        let mut resumed_optimizer = make();
        load_training_into(
            &mut resumed,
            resumed_optimizer.as_mut(),
            &path,
            LoadMode::Strict,
        )
        .unwrap();
        assert_eq!(resumed_optimizer.steps(), N, "{name}");
        for at in N..2 * N {
            step(&mut resumed, resumed_optimizer.as_mut(), at);
        }

        let bits = |v: &Variables<f64>| -> Vec<(String, Vec<u64>)> {
            v.iter()
                .map(|(n, a)| (n, a.iter().map(|x| x.to_bits()).collect()))
                .collect()
        };
        assert_eq!(
            bits(&resumed),
            bits(&straight),
            "{name}: params and batch_stats"
        );
        assert_eq!(
            resumed_optimizer.state(),
            straight_optimizer.state(),
            "{name}: optimizer state"
        );
    }
}

#[test]
fn a_training_checkpoint_of_another_optimizer_or_model_changes_nothing() {
    let x0 = batch(0).0;
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("sgd.safetensors");
    let mut variables = model().init(0, &x0).unwrap();
    let mut sgd: Box<dyn Optimizer<f64>> = Box::new(Sgd::new(0.1).momentum(0.9));
    step(&mut variables, sgd.as_mut(), 0);
    save_training(&variables, sgd.as_ref(), &path).unwrap();

    // Into Adam: the kind differs. Neither the variables nor Adam change.
    let mut target = model().init(3, &x0).unwrap();
    let before = target.clone();
    let mut adam: Box<dyn Optimizer<f64>> = Box::new(Adam::new(0.1));
    step(&mut target, adam.as_mut(), 1);
    let (target_before, adam_before) = (target.clone(), adam.state());
    let err = load_training_into(&mut target, adam.as_mut(), &path, LoadMode::Strict).unwrap_err();
    assert!(err.to_string().contains("Sgd"), "{err}");
    assert_eq!(target, target_before);
    assert_eq!(adam.state(), adam_before);
    assert_ne!(before, target_before);

    // Into a model of other sizes: every problem listed, the optimizer's too; nothing moves.
    let other = Mlp::new(&[4, 5], 3).with_batch_norm(BatchNorm::new());
    let mut other_vars = other.init(0, &x0).unwrap();
    let other_before = other_vars.clone();
    let mut fresh: Box<dyn Optimizer<f64>> = Box::new(Sgd::new(0.1).momentum(0.9));
    let err =
        load_training_into(&mut other_vars, fresh.as_mut(), &path, LoadMode::Strict).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("#optimizer/velocity/Dense_0/kernel"),
        "{message}"
    );
    assert!(message.contains("params/Dense_0/kernel"), "{message}");
    assert_eq!(other_vars, other_before);
    assert_eq!(fresh.steps(), 0);

    // A plain variables load reads a training checkpoint's variables and skips the rest.
    let mut plain = model().init(5, &x0).unwrap();
    load_into(&mut plain, &path, LoadMode::Strict).unwrap();
    assert_eq!(plain, variables);
}

#[test]
fn a_variables_checkpoint_has_no_optimizer_state_to_resume() {
    let x0 = batch(0).0;
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("vars.safetensors");
    let variables = model().init(0, &x0).unwrap();
    tapegrad::checkpoint::save(&variables, &path).unwrap();
    let mut sgd = Sgd::new(0.1);
    let mut target = model().init(1, &x0).unwrap();
    let err = load_training_into(&mut target, &mut sgd, &path, LoadMode::Strict).unwrap_err();
    assert!(
        matches!(err, Error::Checkpoint { .. }) && err.to_string().contains("optimizer state"),
        "{err}"
    );
    assert_eq!(target, model().init(1, &x0).unwrap());
}
