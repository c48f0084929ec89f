//! The data-parallel step's cost: one process alone, against 2 replicas in process (threads)
//! and, built with `--features mpi` and started by `mpirun -np 2`, 2 MPI ranks. The model is
//! example 05's (Dense 64 → BatchNorm → ReLU, twice, Dense 6; f32) with cross-replica
//! BatchNorm, at global batches of 32 (the example's) and 512.
//!
//! ```text
//! cargo bench --bench replica_step                              # alone, 2 threads
//! cargo bench --bench replica_step --features mpi --no-run      # then, for MPI:
//! mpirun -np 2 target/release/deps/replica_step-<hash> --mpi
//! ```
//!
//! "plain" is the ordinary single-process step (fused BatchNorm, no averaging); "as 1
//! replica" adds the axis with one replica (the composite BatchNorm with `psum`, and the
//! agreement check); the ratios are against plain.
//!
//! A fixed number of steps per round (every replica must take the same number, which rules
//! out criterion's adaptive sampling across processes), the median of 7 rounds, µs per step.

use std::rc::Rc;
use std::time::Instant;

use tapegrad::nn::{BatchNorm, Mlp};
use tapegrad::optim::{Optimizer, Sgd};
use tapegrad::replicas::{Communicator, InProcess, ReplicaAxis, mean_grads};
use tapegrad::{
    ApplyOptions, ModuleExt, Mutable, SplitMix64, Tensor, Variables, softmax_cross_entropy,
    value_and_grad_with_aux,
};

const FEATURES: usize = 11;
const CLASSES: usize = 6;
const ROUNDS: usize = 7;

fn model(cross_replica: bool) -> Mlp {
    let norm = BatchNorm::new().momentum(0.9);
    let norm = if cross_replica {
        norm.axis_name("batch")
    } else {
        norm
    };
    Mlp::new(&[64, 64], CLASSES).with_batch_norm(norm)
}

/// `rows` rows of one replica's share, and labels.
fn shard(rows: usize, rank: usize) -> (Tensor<f32>, Vec<usize>) {
    let mut rng = SplitMix64::new(42 + rank as u64);
    let x = Tensor::from_vec(
        &[rows, FEATURES],
        (0..rows * FEATURES).map(|_| rng.normal() as f32).collect(),
    )
    .expect("rows × features values");
    (
        x,
        (0..rows)
            .map(|_| rng.below(CLASSES as u64) as usize)
            .collect(),
    )
}

/// Median µs per step over the rounds, for one replica taking `rows` rows per step; with
/// no communicator, the plain single-process step (no axis, no averaging: fused BatchNorm).
fn time_steps(communicator: Option<Rc<dyn Communicator>>, rows: usize, steps: usize) -> f64 {
    let model = model(communicator.is_some());
    let (x, labels) = shard(rows, communicator.as_ref().map_or(0, |c| c.rank()));
    let mut variables: Variables<f32> = model.init(0, &x).expect("init");
    let mut optimizer = Sgd::new(0.01).momentum(0.9);
    let mut options = ApplyOptions::train().mutable(Mutable::only(["batch_stats"]));
    if let Some(communicator) = &communicator {
        options = options.replica_axis(ReplicaAxis::new("batch", Rc::clone(communicator)));
    }
    let mut step = || {
        let (_, updates, grads) = value_and_grad_with_aux(variables.params(), |p| {
            let (logits, updates) = model.apply_tracked(p, &variables, &x, &options)?;
            Ok((softmax_cross_entropy(&logits, &labels)?, updates))
        })
        .expect("step");
        let grads = match &communicator {
            Some(c) => mean_grads(&**c, &grads, optimizer.steps()).expect("agree"),
            None => grads,
        };
        optimizer
            .update(variables.params_mut(), &grads)
            .expect("update");
        variables.merge(updates).expect("merge");
    };
    for _ in 0..steps / 4 {
        step(); // warm-up
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..steps {
                step();
            }
            started.elapsed().as_secs_f64() * 1e6 / steps as f64
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[ROUNDS / 2]
}

/// Median µs per step of `replicas` in-process replicas (threads), global batch `batch`.
fn in_process(replicas: usize, batch: usize, steps: usize) -> f64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = InProcess::group(replicas)
            .into_iter()
            .map(|replica| {
                s.spawn(move || time_steps(Some(Rc::new(replica)), batch / replicas, steps))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replica"))
            .fold(0.0, f64::max)
    })
}

fn main() {
    let steps_for = |batch: usize| if batch <= 32 { 400 } else { 60 };
    #[cfg(feature = "mpi")]
    if std::env::args().any(|a| a == "--mpi") {
        let world: Rc<dyn Communicator> = Rc::new(tapegrad::replicas::Mpi::init().expect("MPI"));
        let (rank, ranks) = (world.rank(), world.size());
        for batch in [32, 512] {
            let us = time_steps(Some(Rc::clone(&world)), batch / ranks, steps_for(batch));
            if rank == 0 {
                println!("mpi ranks {ranks}  global batch {batch:>4}: {us:>8.1} µs per step");
            }
        }
        return;
    }
    for batch in [32, 512] {
        let plain = time_steps(None, batch, steps_for(batch));
        let one = in_process(1, batch, steps_for(batch));
        let two = in_process(2, batch, steps_for(batch));
        println!(
            "global batch {batch:>4}: plain step {plain:>8.1} µs; as 1 replica {one:>8.1} µs \
             ({:.2}×); 2 replicas in process {two:>8.1} µs ({:.2}×)",
            one / plain,
            two / plain
        );
    }
}
