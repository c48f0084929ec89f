//! The sharpest direction of a trained network's loss: the dominant eigenvalue of its
//! Hessian by power iteration, one Hessian-vector product (`tapegrad::hvp`) a step, never
//! forming the matrix. A curvature probe as sharpness studies and learning-rate choices use
//! it: plain gradient descent on a quadratic diverges beyond a step of `2 / λ_max`.
//!
//! An MLP with BatchNorm is trained on the red-wine data in float64; then the loss over the
//! whole training split, in training mode (BatchNorm normalising with the split's own
//! statistics, differentiated through them), is probed. The params, the inputs and the
//! result are written to `out/hessian_wine.safetensors`, from which
//! `scripts/hessian_eigenvalue.py` computes the same eigenvalue with JAX and PyTorch.
//!
//! `cargo run --release -p tapegrad-examples --example 09_hessian_eigenvalue`

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use ndarray::{ArrayD, Axis};
use rand::seq::SliceRandom;
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::{
    ApplyOptions, Grads, ModuleExt, Mutable, ParamTensors, Params, SplitMix64, Tensor, Variables,
    hvp, softmax_cross_entropy, value_and_grad, value_and_grad_with_aux,
};

#[path = "../05_train_batchnorm/data.rs"]
mod data;
#[path = "../05_train_batchnorm/exit.rs"]
mod exit;
use data::Data;

/// The dominant Hessian eigenvalue of an MLP with BatchNorm on the wine data.
#[derive(Parser, Debug)]
struct Args {
    /// Passes over the training split before probing.
    #[arg(long, default_value_t = 20)]
    epochs: usize,
    /// Power-iteration steps at most (it stops earlier once the estimate settles).
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Hidden width of the two hidden layers.
    #[arg(long, default_value_t = 16)]
    hidden: usize,
    /// Seed of the split, the shuffling, the initialisation and the starting vector.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder for the safetensors file the comparison script reads.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../out"))]
    out: PathBuf,
    /// The data file (CSV with a header, the quality in the last column).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/winequality-red.csv"))]
    data: PathBuf,
}

fn main() -> std::process::ExitCode {
    tapegrad::runtime::retain_freed_memory();
    exit::report(run(Args::parse()))
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    if args.hidden == 0 || args.iterations == 0 {
        return Err("--hidden and --iterations must be at least 1".into());
    }
    let data = Data::load(&args.data)?;
    let mut idx: Vec<usize> = (0..data.y.len()).collect();
    idx.shuffle(&mut SplitMix64::new(args.seed));
    let train = &idx[idx.len() / 5..];
    let (rows, labels) = data.rows(train);
    let x = rows.value().mapv(f64::from);
    println!(
        "red wine quality: {} training rows, {} features",
        labels.len(),
        x.shape()[1]
    );

    let model =
        Mlp::new(&[args.hidden, args.hidden], 6).with_batch_norm(BatchNorm::new().momentum(0.9));
    let vars = train_model(&model, &x, &labels, &args)?;
    let train_mode = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let inputs = Tensor::constant(&x);
    let loss = |p: &ParamTensors<f64>| {
        let (logits, _) = model.apply_tracked(p, &vars, &inputs, &train_mode)?;
        softmax_cross_entropy(&logits, &labels)
    };

    // Power iteration: v ← Hv / ‖Hv‖, the estimate the Rayleigh quotient vᵀHv.
    let mut rng = SplitMix64::new(args.seed ^ 0xE16E);
    let mut v = normalized(
        vars.params()
            .iter()
            .map(|(p, a)| (p.to_string(), a.mapv(|_| rng.normal())))
            .collect(),
    );
    let (mut estimate, mut steps) = (0.0f64, 0);
    let probe = Instant::now();
    for step in 1..=args.iterations {
        let hv = hvp(vars.params(), &v, loss)?;
        let next = dot(&v, &hv);
        v = normalized(as_params(&hv));
        steps = step;
        let settled = (next - estimate).abs() <= 1e-12 * next.abs();
        estimate = next;
        if settled {
            break;
        }
    }
    let per_hvp = probe.elapsed().as_secs_f64() / f64::from(steps as u32);
    let hv = hvp(vars.params(), &v, loss)?;
    let residual = dot_self(&axpy(&hv, -estimate, &v)).sqrt();
    let gradient_time = {
        let start = Instant::now();
        for _ in 0..10 {
            value_and_grad(vars.params(), loss)?;
        }
        start.elapsed().as_secs_f64() / 10.0
    };
    println!(
        "dominant Hessian eigenvalue of the training loss: {estimate:.10} after {steps} products \
         (residual |Hv - lambda v| = {residual:.1e})"
    );
    println!(
        "plain gradient descent on this loss diverges for steps beyond 2 / lambda = {:.3}",
        2.0 / estimate.abs()
    );
    println!(
        "one Hessian-vector product {:.2} ms, one gradient {:.2} ms: {:.1}x",
        1e3 * per_hvp,
        1e3 * gradient_time,
        per_hvp / gradient_time
    );

    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("hessian_wine.safetensors");
    let mut saved = vars.clone();
    saved.insert("data", "x", x)?;
    saved.insert(
        "data",
        "labels",
        labels
            .iter()
            .map(|&l| l as f64)
            .collect::<ndarray::Array1<f64>>(),
    )?;
    saved.insert("result", "eigenvalue", ArrayD::from_elem(vec![], estimate))?;
    tapegrad::checkpoint::save(&saved, &path)?;
    println!(
        "wrote {} (compare: python3 scripts/hessian_eigenvalue.py {})",
        path.display(),
        path.display()
    );
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// SGD with momentum over mini-batches of 32, the statistics merged each step.
fn train_model(
    model: &Mlp,
    x: &ArrayD<f64>,
    labels: &[usize],
    args: &Args,
) -> Result<Variables<f64>, Box<dyn Error>> {
    let mut vars = model.init(args.seed, &Tensor::constant(x))?;
    let mut optimizer = Sgd::new(0.05).momentum(0.9);
    let options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    let mut order: Vec<usize> = (0..labels.len()).collect();
    let mut rng = SplitMix64::new(args.seed ^ 0x5EED);
    for _ in 0..args.epochs {
        order.shuffle(&mut rng);
        for chunk in order.chunks_exact(32) {
            let batch = Tensor::constant(x.select(Axis(0), chunk));
            let y: Vec<usize> = chunk.iter().map(|&i| labels[i]).collect();
            let (_, updates, grads) = value_and_grad_with_aux(vars.params(), |p| {
                let (logits, updates) = model.apply_tracked(p, &vars, &batch, &options)?;
                Ok((softmax_cross_entropy(&logits, &y)?, updates))
            })?;
            optimizer.update(vars.params_mut(), &grads)?;
            vars.merge(updates)?;
        }
    }
    Ok(vars)
}

fn as_params(g: &Grads<f64>) -> Params<f64> {
    g.iter().map(|(p, a)| (p.to_string(), a.clone())).collect()
}

fn dot(a: &Params<f64>, b: &Grads<f64>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|((_, x), (_, y))| (x * y).sum())
        .sum()
}

fn dot_self(a: &Params<f64>) -> f64 {
    a.iter().map(|(_, x)| x.mapv(|v| v * v).sum()).sum()
}

/// `a + s·b`, keyed like `a`.
fn axpy(a: &Grads<f64>, s: f64, b: &Params<f64>) -> Params<f64> {
    a.iter()
        .zip(b.iter())
        .map(|((p, x), (_, y))| (p.to_string(), x + &(y * s)))
        .collect()
}

fn normalized(v: Params<f64>) -> Params<f64> {
    let norm = dot_self(&v).sqrt();
    v.iter().map(|(p, a)| (p.to_string(), a / norm)).collect()
}
