//! Lesson 3: parameters and buffers.
//!
//! An MLP with BatchNorm has two collections: `params` (what gradients and optimizers see)
//! and `batch_stats` (BatchNorm's running mean and variance, PyTorch's buffers). This lesson
//! prints them, takes one training step, shows that the gradients are keyed exactly like the
//! params, and writes the tape of an evaluation-mode loss as Graphviz DOT: the running
//! statistics enter it only as constants.
//!
//! Run: `cargo run --example 03_params_and_buffers`, then
//! `dot -Tsvg out/bn_eval_tape.dot -o out/bn_eval_tape.svg` to draw the tape.

use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{
    ApplyOptions, ModuleExt, Mutable, Tensor, softmax_cross_entropy, value_and_grad,
    value_and_grad_with_aux,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = Mlp::new(&[3], 2).with_batch_norm(BatchNorm::new().momentum(0.9));
    let x =
        Tensor::from_vec(&[4, 2], vec![0.5, -1.0, 2.0, 0.1, -0.3, 0.8, 1.5, -2.0])?.with_label("x");
    let labels = [0, 1, 1, 0];
    let mut variables = model.init(0, &x)?;
    println!("variables after init:");
    for (name, value) in variables.iter() {
        println!("  {name:<32} {:?}", value.shape());
    }

    // One training step: gradients with respect to params only; new statistics as aux.
    let train = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let (loss, new_stats, grads) = value_and_grad_with_aux(variables.params(), |p| {
        let (logits, new_stats) = model.apply_tracked(p, &variables, &x, &train)?;
        Ok((softmax_cross_entropy(&logits, &labels)?, new_stats))
    })?;
    println!(
        "\nloss {loss:.4}; gradient keys: {:?}",
        grads.paths().collect::<Vec<_>>()
    );
    Sgd::new(0.1)
        .momentum(0.9)
        .update(variables.params_mut(), &grads)?;
    variables.merge(new_stats)?;
    println!(
        "running mean after one step: {}",
        variables.get("batch_stats/BatchNorm_0/mean").unwrap()
    );

    // The tape of an evaluation-mode loss: the running statistics are read, as constants.
    let mut tape = None;
    value_and_grad(variables.params(), |p| {
        tape = p.tape().cloned();
        let (logits, _) = model.apply_tracked(p, &variables, &x, &ApplyOptions::eval())?;
        softmax_cross_entropy(&logits, &labels)
    })?;
    let tape = tape.expect("params are tracked");
    println!("\nthe evaluation-mode tape:\n{tape}");
    std::fs::create_dir_all("out")?;
    std::fs::write("out/bn_eval_tape.dot", tape.to_dot())?;
    println!("written out/bn_eval_tape.dot");
    Ok(())
}
