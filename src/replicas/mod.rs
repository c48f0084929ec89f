//! Data-parallel replicas: one model trained over R replicas, each given its share of every
//! batch, in the Flax/JAX spirit: a named replica axis and a communicator passed in
//! explicitly ([`ReplicaAxis`]), no hidden global state.
//!
//! A step on each replica: [`begin_step`] (the replicas agree on params, shard shapes and
//! step count before any collective), the loss and gradients of its shard (with
//! `ApplyOptions::replica_axis` so that a cross-replica `BatchNorm` reduces its statistics
//! over the global batch), then [`mean_grads`] (gradients averaged across replicas, after
//! checking that the replicas agree), then the optimizer, on params alone as ever. Params and
//! optimizer state stay identical on every replica because every replica applies the same
//! update to the same values. A replica that fails still joins the collectives and
//! reports: wrap the loss in [`agree_on`] inside `value_and_grad`'s closure, and every
//! replica returns an error instead of one waiting forever for another.
//!
//! BatchNorm over replicas, two ways:
//!
//! * **cross-replica** (`BatchNorm::axis_name("batch")`; PyTorch's `SyncBatchNorm`, Flax's
//!   `axis_name`): the per-channel sums are all-reduced in the forward pass, and by the VJP
//!   of [`Tensor::psum`](crate::Tensor::psum) the matching sums of the gradient in the
//!   backward pass, so R replicas with B/R rows compute exactly what one replica with B rows
//!   computes, and their running statistics are equal by construction;
//! * **per replica** (no `axis_name`, PyTorch DDP's default): each replica normalises with
//!   its own shard's statistics; [`mean_collection`] then averages the running statistics
//!   across replicas after each step (the documented rule here; DDP instead broadcasts
//!   replica 0's), so buffers are bit-identical on every replica.
//!
//! [`InProcess`] runs replicas as threads of one process; with the `mpi` feature, `Mpi` runs
//! them as MPI processes (`mpirun -np R`), on one machine or many.

mod communicator;
mod in_process;
#[cfg(feature = "mpi")]
mod mpi;
mod sync;

pub use communicator::{Communicator, ReduceOp, ReplicaAxis};
pub use in_process::InProcess;
#[cfg(feature = "mpi")]
pub use mpi::Mpi;
pub use sync::{agree_on, begin_step, check_agreement, mean_collection, mean_grads};
