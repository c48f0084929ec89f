//! Lesson 7: the main example, data-parallel over MPI, with cross-replica BatchNorm.
//!
//! The MLP of example 05 (Dense → BatchNorm → ReLU, twice, then Dense) on the red
//! wine-quality data, trained by R processes at once: each rank takes its share of every
//! batch, its BatchNorm reduces the batch statistics over all ranks (`axis_name("batch")`,
//! PyTorch's SyncBatchNorm), gradients are averaged over the ranks, and every rank applies
//! the same SGD step. So the run is the single-process run with the global batch (to
//! rounding), and every rank ends with bit-identical params and running statistics, which it
//! checks at the end.
//!
//! Run (MPI and libclang installed, e.g. `apt-get install libopenmpi-dev openmpi-bin
//! libclang-dev`):
//!
//! ```text
//! cargo build --release --features mpi --example 07_data_parallel
//! mpirun -np 2 target/release/examples/07_data_parallel
//! ```

use std::error::Error;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use clap::Parser;
use rand::seq::SliceRandom;
use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{LearningRate, Optimizer, Sgd};
use tapegrad::replicas::{
    Communicator, Mpi, ReduceOp, ReplicaAxis, agree_on, begin_step, check_agreement, mean_grads,
};
use tapegrad::{
    ApplyOptions, ModuleExt, Mutable, SplitMix64, softmax_cross_entropy, value_and_grad_with_aux,
};

#[path = "../05_train_batchnorm/data.rs"]
mod data;

use data::Data;

/// Train example 05's BatchNorm MLP data-parallel over the MPI ranks, with cross-replica
/// BatchNorm statistics; run under `mpirun -np R`.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Examples per global mini-batch, shared equally by the ranks.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Initial learning rate (cosine-decayed to 1% of it).
    #[arg(long, default_value_t = 0.05)]
    lr: f64,
    /// Seed of the split, the shuffling and the initialisation (the same on every rank).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The data file.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/winequality-red.csv"))]
    data: PathBuf,
}

fn main() -> std::process::ExitCode {
    // Keep freed arrays' memory for the next step instead of faulting it in again
    // (`runtime::retain_freed_memory`: a program's choice, so the program makes it).
    tapegrad::runtime::retain_freed_memory();
    let args = Args::parse();
    let Some(mpi) = Mpi::init() else {
        eprintln!("error: MPI was already initialised");
        return std::process::ExitCode::FAILURE;
    };
    let mpi = Rc::new(mpi);
    match run(args, Rc::clone(&mpi) as Rc<dyn Communicator>) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The other ranks may be waiting in a collective this rank will never join: end
        // them all, rather than leave them waiting.
        Err(error) if mpi.size() > 1 => mpi.abort(&format!("error: {error}"), 1),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args, communicator: Rc<dyn Communicator>) -> Result<(), Box<dyn Error>> {
    let (rank, ranks) = (communicator.rank(), communicator.size());
    if !args.batch_size.is_multiple_of(ranks) || args.batch_size < ranks {
        return Err(format!(
            "--batch-size {} does not split over {ranks} ranks",
            args.batch_size
        )
        .into());
    }
    let say = |line: String| {
        if rank == 0 {
            println!("{line}");
        }
    };
    say(format!("{} (each rank)", tapegrad::runtime::summary()));
    let data = Data::load(&args.data)?;
    let mut idx: Vec<usize> = (0..data.y.len()).collect();
    idx.shuffle(&mut SplitMix64::new(args.seed));
    let (train_idx, test_idx) = idx.split_at(data.y.len() * 4 / 5);
    say(format!(
        "{ranks} ranks, global batch {} ({} rows each), {} training wines",
        args.batch_size,
        args.batch_size / ranks,
        train_idx.len()
    ));

    let model =
        Mlp::new(&[64, 64], 6).with_batch_norm(BatchNorm::new().momentum(0.9).axis_name("batch"));
    let (x0, _) = data.rows(&train_idx[..2]);
    let mut variables = model.init(args.seed, &x0)?;
    let batches_per_epoch = train_idx.len() / args.batch_size;
    let mut optimizer = Sgd::new(LearningRate::Cosine {
        initial: args.lr,
        final_value: args.lr / 100.0,
        steps: args.epochs * batches_per_epoch,
    })
    .momentum(0.9);
    let options = ApplyOptions::train()
        .mutable(Mutable::only(["batch_stats"]))
        .replica_axis(ReplicaAxis::new("batch", Rc::clone(&communicator)));
    let share = args.batch_size / ranks;
    let mut rng = SplitMix64::new(args.seed ^ 0x5EED);
    let mut order = train_idx.to_vec();
    let started = Instant::now();
    for epoch in 1..=args.epochs {
        order.shuffle(&mut rng); // the same order on every rank: same seed
        let mut loss_sum = 0.0;
        for batch in order.chunks_exact(args.batch_size) {
            let (x, y) = data.rows(&batch[rank * share..(rank + 1) * share]);
            // Every rank agrees before the forward pass, and on the loss before the backward
            // pass: a rank that fails makes them all fail, instead of leaving them waiting.
            begin_step(
                &*communicator,
                variables.params(),
                x.shape(),
                optimizer.steps(),
            )?;
            let (loss, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
                let (logits, updates) = model.apply_tracked(p, &variables, &x, &options)?;
                let loss = agree_on(&*communicator, "loss", softmax_cross_entropy(&logits, &y))?;
                Ok((loss, updates))
            })?;
            let grads = mean_grads(&*communicator, &grads, optimizer.steps())?;
            optimizer.update(variables.params_mut(), &grads)?;
            variables.merge(updates)?;
            loss_sum += f64::from(loss);
        }
        let mut mean_loss = [loss_sum / (batches_per_epoch * ranks) as f64];
        communicator.all_reduce(&mut mean_loss, ReduceOp::Sum)?;
        if rank == 0 && (epoch % 10 == 0 || epoch == 1) {
            let (x, y) = data.rows(test_idx);
            let (logits, _) = model.apply(&variables, &x, &ApplyOptions::eval())?;
            let correct = logits
                .value()
                .outer_iter()
                .zip(&y)
                .filter(|(row, label)| {
                    let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
                    best.map(|(i, _)| i) == Some(**label)
                })
                .count();
            println!(
                "epoch {epoch:>3}  train loss {:.4}  test accuracy {:.1}%",
                mean_loss[0],
                100.0 * correct as f64 / y.len() as f64
            );
        }
    }
    let steps = args.epochs * batches_per_epoch;
    let step_time = started.elapsed().as_secs_f64() / steps as f64;

    // Every rank must hold the same bits: compare a fingerprint of every value on all ranks.
    let bits: Vec<(String, Vec<usize>)> = variables
        .iter()
        .map(|(name, array)| {
            let hash = array
                .iter()
                .fold(0usize, |h, v| h.rotate_left(5) ^ v.to_bits() as usize);
            (format!("{name}#{hash}"), array.shape().to_vec())
        })
        .collect();
    check_agreement(
        &*communicator,
        "07_data_parallel",
        bits.iter()
            .map(|(name, shape)| (name.as_str(), shape.as_slice())),
        optimizer.steps(),
    )?;
    let on = match ranks {
        1 => "on the one rank".to_string(),
        2 => "on both ranks".to_string(),
        _ => format!("on all {ranks} ranks"),
    };
    say(format!(
        "params, batch_stats and step counts bit-identical {on} after {steps} steps"
    ));
    say(format!(
        "{:.0} µs per step (wall clock, rank 0, including the reductions)",
        step_time * 1e6
    ));
    Ok(())
}
