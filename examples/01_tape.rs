//! Lesson 1: a tape by hand.
//!
//! Builds `f(x, w) = sum(tanh(x * w) + w^2)` on a tape, prints the tape (one line per node:
//! its op, its inputs and its shape), runs backward, and prints the gradients next to the
//! ones derived by hand: `df/dw = x (1 - tanh²(x w)) + 2w`.
//!
//! Run: `cargo run --example 01_tape`

use ndarray::arr1;
use tapegrad::{Tape, Tensor};

fn main() -> tapegrad::Result<()> {
    let tape = Tape::<f64>::new();
    let w = tape.leaf("w", arr1(&[0.5, -1.0, 2.0]));
    let x = Tensor::constant(arr1(&[1.0, 2.0, 3.0])); // an input: a constant

    let f = ((&x * &w)?.tanh() + w.square())?.sum_all();

    println!("The tape (the constant x has no node; it shows as `const`):\n{tape}");
    println!("f = {}", f.item()?);

    let grads = f.backward()?;
    let dw = grads.get(&w).expect("f depends on w");
    println!("df/dw from the tape: {dw}");

    let by_hand: Vec<f64> = [(1.0f64, 0.5f64), (2.0, -1.0), (3.0, 2.0)]
        .iter()
        .map(|&(x, w)| x * (1.0 - (x * w).tanh().powi(2)) + 2.0 * w)
        .collect();
    println!("df/dw by hand:       {by_hand:?}");
    Ok(())
}
