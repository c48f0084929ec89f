//! One training step, its gradient taken directly or accumulated over micro-batches: shared
//! by the training examples (05 and 06).

use ndarray::Axis;
use tapegrad::accumulate::{StatsPolicy, accumulate};
use tapegrad::average::Ema;
use tapegrad::optim::Optimizer;
use tapegrad::{
    ApplyOptions, Grads, Module, ModuleExt, Tensor, Updates, Variables, softmax_cross_entropy,
    value_and_grad_with_aux,
};

/// The loss, the statistics' updates and the gradient of one step of `model` on the batch
/// `x, y`: directly, or with `--accumulate K` over its `K` micro-batches (rows along the
/// first axis), whose BatchNorm moments are merged into one update of the running
/// statistics (each micro-batch normalised with its own).
pub fn gradient_step<M>(
    model: &M,
    vars: &Variables<f32>,
    (x, y): (&Tensor<f32>, &[usize]),
    micro_batches: usize,
    options: &ApplyOptions,
) -> tapegrad::Result<(f32, Updates<f32>, Grads<f32>)>
where
    M: Module<f32, Input = Tensor<f32>, Output = Tensor<f32>>,
{
    if micro_batches <= 1 {
        return value_and_grad_with_aux(vars.params(), |p| {
            let (logits, updates) = model.apply_tracked(p, vars, x, options)?;
            Ok((softmax_cross_entropy(&logits, y)?, updates))
        });
    }
    let rows = y.len() / micro_batches;
    let step = accumulate(
        vars,
        micro_batches,
        StatsPolicy::MergedPerStep,
        |i, p, vars, options| {
            let part = i * rows..(i + 1) * rows;
            let micro = Tensor::constant(
                x.value()
                    .slice_axis(Axis(0), part.clone().into())
                    .to_owned(),
            );
            let (logits, updates) = model.apply_tracked(p, vars, &micro, options)?;
            Ok((softmax_cross_entropy(&logits, &y[part])?, updates))
        },
    )?;
    Ok((step.loss, step.updates, step.grads))
}

/// One training step: the gradient ([`gradient_step`]), the optimizer's update, the new
/// statistics merged and the average updated. Returns the loss and how many gradient
/// entries name a `batch_stats` variable (always 0: the examples check it).
pub fn train_step<M>(
    model: &M,
    vars: &mut Variables<f32>,
    optimizer: &mut dyn Optimizer<f32>,
    ema: Option<&Ema>,
    batch: (&Tensor<f32>, &[usize]),
    micro_batches: usize,
    options: &ApplyOptions,
) -> tapegrad::Result<(f32, usize)>
where
    M: Module<f32, Input = Tensor<f32>, Output = Tensor<f32>>,
{
    let (loss, updates, grads) = gradient_step(model, vars, batch, micro_batches, options)?;
    let stats = vars.collection("batch_stats");
    let stats_in_grads = grads
        .paths()
        .filter(|p| stats.is_some_and(|c| c.contains(p)))
        .count();
    optimizer.update(vars.params_mut(), &grads)?;
    vars.merge(updates)?;
    if let Some(ema) = ema {
        ema.update(vars)?;
    }
    Ok((loss, stats_in_grads))
}
