//! One data-parallel training step, shared by the in-process and the MPI replica tests.

use std::rc::Rc;

use ndarray::ArrayD;
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::replicas::{Communicator, ReduceOp, ReplicaAxis, agree_on, begin_step, mean_grads};
use tapegrad::{
    ApplyOptions, Grads, Module, ModuleExt, Mutable, Tensor, Variables, softmax_cross_entropy,
    value_and_grad_with_aux,
};

pub const CLASSES: usize = 3;

/// An MLP of `hidden` widths with a BatchNorm after each hidden Dense.
pub fn model_of(hidden: &[usize], cross_replica: bool) -> Mlp {
    let norm = BatchNorm::new().momentum(0.8);
    let norm = if cross_replica {
        norm.axis_name("batch")
    } else {
        norm
    };
    Mlp::new(hidden, CLASSES).with_batch_norm(norm)
}

/// One hidden layer of 5.
pub fn model(cross_replica: bool) -> Mlp {
    model_of(&[5], cross_replica)
}

/// What one replica ends a step with.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub loss: f64,
    pub grads: Grads<f64>,
    pub variables: Variables<f64>,
    pub velocities: Vec<ArrayD<f64>>,
}

/// One SGD-momentum step of `model` on rows `x` with `labels`, as a replica of `axis` (or
/// alone), with gradients averaged over the replicas: the agreement checks first, the loss
/// joined with `agree_on`, so that a replica that fails anywhere fails them all.
pub fn step(
    model: &impl Module<f64, Input = Tensor<f64>, Output = Tensor<f64>>,
    variables: &Variables<f64>,
    x: &ArrayD<f64>,
    labels: &[usize],
    communicator: &Rc<dyn Communicator>,
    axis: Option<ReplicaAxis>,
) -> tapegrad::Result<Outcome> {
    let mut options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    if let Some(axis) = axis {
        options = options.replica_axis(axis);
    }
    let mut optimizer = Sgd::new(0.1).momentum(0.9);
    begin_step(
        &**communicator,
        variables.params(),
        x.shape(),
        optimizer.steps(),
    )?;
    let x = Tensor::constant(x);
    let (loss, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
        let (logits, updates) = model.apply_tracked(p, variables, &x, &options)?;
        let loss = agree_on(
            &**communicator,
            "loss",
            softmax_cross_entropy(&logits, labels),
        )?;
        Ok((loss, updates))
    })?;
    let grads = mean_grads(&**communicator, &grads, optimizer.steps())?;
    let mut loss_mean = [loss / communicator.size() as f64];
    communicator.all_reduce(&mut loss_mean, ReduceOp::Sum)?;
    let mut after = variables.clone();
    optimizer.update(after.params_mut(), &grads)?;
    after.merge(updates)?;
    let velocities = grads
        .paths()
        .map(|p| optimizer.velocity(p).unwrap().clone())
        .collect();
    Ok(Outcome {
        loss: loss_mean[0],
        grads,
        variables: after,
        velocities,
    })
}

pub fn worst(a: &ArrayD<f64>, b: &ArrayD<f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f64::max)
}

pub fn close(a: &Outcome, b: &Outcome) -> Result<(), String> {
    let mut worst_seen = ((a.loss - b.loss) / b.loss.abs().max(1.0)).abs();
    for ((_, x), (_, y)) in a.grads.iter().zip(b.grads.iter()) {
        worst_seen = worst_seen.max(worst(x, y));
    }
    for ((_, x), (_, y)) in a.variables.iter().zip(b.variables.iter()) {
        worst_seen = worst_seen.max(worst(x, y));
    }
    for (x, y) in a.velocities.iter().zip(&b.velocities) {
        worst_seen = worst_seen.max(worst(x, y));
    }
    if worst_seen <= 1e-12 {
        Ok(())
    } else {
        Err(format!("worst scaled difference {worst_seen:e}"))
    }
}
