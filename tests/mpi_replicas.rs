//! Design invariant 10 over MPI (feature `mpi`; run as several ranks):
//!
//! ```text
//! cargo test --features mpi --test mpi_replicas --no-run
//! mpirun -np 2 target/debug/deps/mpi_replicas-<hash>
//! ```
//!
//! Each rank takes its share of the same random batches; with cross-replica BatchNorm the
//! step (loss, gradients, running statistics, params, momentum) must equal the
//! single-process step on the whole batch within 1e-12, and every rank must hold the same
//! bits afterwards. Replicas whose params differ must all get the error. A plain `main`
//! (no test harness): MPI is initialised once per process, and every rank runs every check.

use std::process::ExitCode;
use std::rc::Rc;

use ndarray::{ArrayD, Axis};
use tapegrad::nn::Mlp;
use tapegrad::replicas::{Communicator, InProcess, Mpi, ReduceOp, ReplicaAxis, check_agreement};
use tapegrad::{Error, ModuleExt, SplitMix64, Tensor};

mod support;
use support::{CLASSES, close, model, step};

/// Every rank computes the same batch from the same seed.
fn batch(seed: u64, rows: usize) -> (ArrayD<f64>, Vec<usize>) {
    let mut rng = SplitMix64::new(seed);
    let x = ArrayD::from_shape_simple_fn(vec![rows, 4], || 3.0 * rng.normal());
    let labels = (0..rows)
        .map(|_| rng.below(CLASSES as u64) as usize)
        .collect();
    (x, labels)
}

fn main() -> ExitCode {
    let communicator: Rc<dyn Communicator> = Rc::new(Mpi::init().expect("MPI initialises once"));
    let (rank, ranks) = (communicator.rank(), communicator.size());
    let single: Rc<dyn Communicator> = Rc::new(InProcess::group(1).remove(0));
    let mut failures = Vec::new();

    for seed in 0..16u64 {
        let rows = 2 + (seed % 2) as usize; // per rank
        let (x, labels) = batch(seed, rows * ranks);
        let variables = model(true).init(seed, &Tensor::constant(&x)).unwrap();
        let whole = step(&model(false), &variables, &x, &labels, &single, None).unwrap();
        let shard = x
            .slice_axis(Axis(0), (rank * rows..(rank + 1) * rows).into())
            .to_owned();
        let axis = ReplicaAxis::new("batch", Rc::clone(&communicator));
        let shard_labels = &labels[rank * rows..(rank + 1) * rows];
        let mine = step(
            &model(true),
            &variables,
            &shard,
            shard_labels,
            &communicator,
            Some(axis),
        )
        .unwrap();
        if let Err(why) = close(&mine, &whole) {
            failures.push(format!(
                "seed {seed}, rank {rank}: against one process, {why}"
            ));
        }
        // Bit-identical across ranks: a fingerprint of every value's bits must agree.
        let fingerprint: Vec<(String, Vec<usize>)> = mine
            .variables
            .iter()
            .chain(mine.grads.iter().map(|(p, g)| (format!("grad/{p}"), g)))
            .map(|(name, a)| {
                let bits = a.iter().fold(0u64, |h, v| h.rotate_left(7) ^ v.to_bits());
                (format!("{name}#{bits:x}"), a.shape().to_vec())
            })
            .collect();
        let agreed = check_agreement(
            &*communicator,
            "mpi_replicas",
            fingerprint.iter().map(|(n, s)| (n.as_str(), s.as_slice())),
            0,
        );
        if let Err(why) = agreed {
            failures.push(format!("seed {seed}, rank {rank}: ranks differ: {why}"));
        }
    }

    // Replicas that disagree (rank 1 has a wider layer) all get the error: none hangs.
    let (x, labels) = batch(99, 2);
    let width = if rank == 1 { 6 } else { 5 };
    let other = Mlp::new(&[width], CLASSES);
    let variables = other.init(0, &Tensor::constant(&x)).unwrap();
    let mlp_step = step(&other, &variables, &x, &labels, &communicator, None);
    if !matches!(
        mlp_step,
        Err(Error::ReplicasDisagree {
            op: "begin_step",
            ..
        })
    ) {
        failures.push(format!(
            "rank {rank}: disagreeing replicas gave {mlp_step:?}"
        ));
    }

    // Every rank reports, and the run fails if any rank failed.
    let mut failed_ranks = [f64::from(u8::from(!failures.is_empty()))];
    communicator
        .all_reduce(&mut failed_ranks, ReduceOp::Sum)
        .unwrap();
    for failure in &failures {
        eprintln!("{failure}");
    }
    if failed_ranks[0] == 0.0 {
        println!(
            "rank {rank} of {ranks}: 16 replicated steps equal the single-process step; disagreement refused"
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
