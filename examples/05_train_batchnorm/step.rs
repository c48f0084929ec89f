//! One training step's gradient, directly or accumulated over micro-batches: shared by the
//! training examples (05 and 06).

use ndarray::Axis;
use tapegrad::accumulate::{StatsPolicy, accumulate};
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
