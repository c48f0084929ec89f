//! A gradient penalty on a classifier with BatchNorm: the loss plus `λ` times the squared
//! norm of its gradient with respect to the input batch (Drucker and LeCun's double
//! backpropagation; R1 is the same penalty on a GAN critic's real inputs). The inner gradient
//! is taken with respect to the input, inside the step, and recorded (`grad_of`); the outer
//! one with respect to the params differentiates through it: a second derivative through
//! BatchNorm's batch statistics.
//!
//! Two MLPs with BatchNorm are trained on the digits from the same start, without and with
//! the penalty, and compared on the test split: accuracy, the mean norm of the loss's input
//! gradient, and accuracy under the fast gradient sign attack (each pixel moved by `ε` along
//! the sign of that gradient), which a small input gradient resists. Every step checks that
//! the running statistics are updated once, exactly as by one plain forward of the batch.
//!
//! `cargo run --release -p tapegrad-examples --example 08_gradient_penalty`

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use ndarray::{ArrayD, Axis};
use rand::seq::SliceRandom;
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{
    ApplyOptions, ModuleExt, Mutable, ParamTensors, SplitMix64, Tensor, Variables, grad_of,
    softmax_cross_entropy, value_and_grad_with_aux,
};

#[path = "../06_train_cnn/data.rs"]
mod data;
#[path = "../05_train_batchnorm/exit.rs"]
mod exit;
use data::Digits;

/// A gradient penalty on the digits, with BatchNorm.
#[derive(Parser, Debug)]
struct Args {
    /// Passes over the training split.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Images per mini-batch (at least 2: BatchNorm needs a batch).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..))]
    batch_size: u32,
    /// Learning rate of SGD with momentum 0.9.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// The penalty's weight `λ` in `loss + λ · mean_b ‖∂ℓ_b/∂x_b‖²`.
    #[arg(long, default_value_t = 0.1)]
    lambda: f64,
    /// The attack's step `ε`, in pixel intensity (pixels are in `[0, 1]`).
    #[arg(long, default_value_t = 0.1)]
    epsilon: f32,
    /// Seed of the split, the shuffling and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The data file.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv"))]
    data: PathBuf,
}

/// What a trained model scores on the test split.
struct Scores {
    accuracy: f64,
    attacked: f64,
    input_gradient: f64,
}

fn main() -> std::process::ExitCode {
    tapegrad::runtime::retain_freed_memory();
    exit::report(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    if !(args.lambda >= 0.0 && args.lambda.is_finite()) {
        return Err(format!("--lambda {}: a weight of 0 or more", args.lambda).into());
    }
    let digits = Digits::load(&args.data)?;
    let mut idx: Vec<usize> = (0..digits.labels.len()).collect();
    idx.shuffle(&mut SplitMix64::new(args.seed));
    let (test, train) = idx.split_at(idx.len() / 5);
    println!("digits: {} train, {} test", train.len(), test.len());

    let model = Mlp::new(&[64, 64], 10).with_batch_norm(BatchNorm::new().momentum(0.9));
    let mut rows = Vec::new();
    for lambda in [0.0, args.lambda] {
        let vars = train_model(&model, &digits, train, lambda, &args)?;
        let scores = score(&model, &vars, &digits, test, args.epsilon)?;
        rows.push((lambda, scores));
    }
    println!();
    println!(
        "{:>8}  {:>9}  {:>16}  {:>14}",
        "lambda",
        "accuracy",
        format!("FGSM eps={}", args.epsilon),
        "mean |dL/dx|"
    );
    for (lambda, s) in &rows {
        println!(
            "{lambda:>8}  {:>8.1}%  {:>15.1}%  {:>14.4}",
            100.0 * s.accuracy,
            100.0 * s.attacked,
            s.input_gradient
        );
    }
    println!(
        "running statistics: updated once per step, as by one plain forward, at every step of both runs"
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Trains `model` with the penalty weighted by `lambda`; checks at every step that the
/// statistics' update is one forward's.
fn train_model(
    model: &Mlp,
    digits: &Digits,
    train: &[usize],
    lambda: f64,
    args: &Args,
) -> Result<Variables<f32>, Box<dyn Error>> {
    let flat = |x: &Tensor<f32>| x.reshape(&[x.shape()[0], 64]);
    let (x0, _) = digits.batch(&train[..2]);
    let mut vars = model.init(args.seed, &flat(&x0)?)?;
    let mut optimizer = Sgd::new(args.lr).momentum(0.9);
    let options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let mut order = train.to_vec();
    let mut rng = SplitMix64::new(args.seed ^ 0x5EED);
    let batch = args.batch_size as usize;
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut penalty_sum, mut steps) = (0.0, 0.0, 0);
        for chunk in order.chunks_exact(batch) {
            let (images, labels) = digits.batch(chunk);
            let x = flat(&images)?;
            let (_, (updates, loss, penalty), grads) =
                value_and_grad_with_aux(vars.params(), |p: &ParamTensors<f32>| {
                    let x = p.track("x", x.value());
                    let (logits, updates) = model.apply_tracked(p, &vars, &x, &options)?;
                    let loss = softmax_cross_entropy(&logits, &labels)?;
                    // ∂L/∂x_b is (1/B) ∂ℓ_b/∂x_b: B Σ ‖∂L/∂x_b‖² is the mean of ‖∂ℓ_b/∂x_b‖².
                    let dx = grad_of(&loss, &[&x])?.remove(0);
                    let penalty = dx.square().sum_all().mul_scalar(chunk.len() as f32);
                    let total = loss.add(&penalty.mul_scalar(lambda as f32))?;
                    Ok((total, (updates, loss.item()?, penalty.item()?)))
                })?;
            let (_, plain) = model.apply(&vars, &x, &options)?;
            if updates != plain {
                return Err("the step's statistics differ from one forward's".into());
            }
            optimizer.update(vars.params_mut(), &grads)?;
            vars.merge(updates)?;
            loss_sum += f64::from(loss);
            penalty_sum += f64::from(penalty);
            steps += 1;
        }
        if epoch == 1 || epoch % 5 == 0 || epoch == args.epochs {
            println!(
                "lambda {lambda}: epoch {epoch:>3}  loss {:.4}  mean |dl/dx|^2 {:.4}",
                loss_sum / f64::from(steps),
                penalty_sum / f64::from(steps)
            );
        }
    }
    Ok(vars)
}

/// Accuracy, accuracy under the attack, and the mean input-gradient norm, in evaluation mode.
fn score(
    model: &Mlp,
    vars: &Variables<f32>,
    digits: &Digits,
    test: &[usize],
    epsilon: f32,
) -> Result<Scores, Box<dyn Error>> {
    let (images, labels) = digits.batch(test);
    let n = labels.len();
    let x = images.value().clone().into_shape_with_order(vec![n, 64])?;
    let eval = ApplyOptions::eval();
    // ∂ℓ_b/∂x_b for each test image: the gradient of the summed loss (rows are independent
    // in evaluation mode).
    let params = ParamTensors::constants(vars.params());
    let tape = tapegrad::Tape::new();
    let leaf = tape.leaf("x", &x);
    let (logits, _) = model.apply_tracked(&params, vars, &leaf, &eval)?;
    let summed = softmax_cross_entropy(&logits, &labels)?.mul_scalar(n as f32);
    let dx = summed.backward()?.wrt(&leaf)?;
    let input_gradient = dx
        .axis_iter(Axis(0))
        .map(|row| f64::from(row.iter().map(|v| v * v).sum::<f32>()).sqrt())
        .sum::<f64>()
        / n as f64;
    let attacked: ArrayD<f32> =
        (&x + &dx.mapv(|g| epsilon * g.signum())).mapv(|v| v.clamp(0.0, 1.0));
    let accuracy_of = |x: &ArrayD<f32>| -> Result<f64, Box<dyn Error>> {
        let (logits, _) = model.apply(vars, &Tensor::constant(x), &eval)?;
        let correct = logits
            .value()
            .outer_iter()
            .zip(&labels)
            .filter(|(row, label)| {
                let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                best.map(|(i, _)| i) == Some(**label)
            })
            .count();
        Ok(correct as f64 / n as f64)
    };
    Ok(Scores {
        accuracy: accuracy_of(&x)?,
        attacked: accuracy_of(&attacked)?,
        input_gradient,
    })
}
