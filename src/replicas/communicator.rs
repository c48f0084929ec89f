//! The communicator interface: all-reduce across replicas, and the named axis it serves.

use std::fmt;
use std::rc::Rc;

use crate::error::Result;

/// How [`Communicator::all_reduce`] combines the replicas' values, element by element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum (in rank order, so every replica gets the same bits).
    Sum,
    /// The largest value.
    Max,
    /// The smallest value.
    Min,
}

/// What replicas need from each other: an all-reduce. Every replica calls the same
/// collectives in the same order with the same lengths; a length that differs is
/// [`Error::ReplicasDisagree`](crate::Error::ReplicasDisagree) on every replica. A replica
/// that fails, and will not join the collectives its peers are in, must say so by going:
/// an [`InProcess`](crate::replicas::InProcess) replica whose handles are dropped (its thread
/// returned or panicked) fails every reduction of the others it did not join; an
/// [`Mpi`](crate::replicas) rank that panics, or calls `Mpi::abort`, ends the whole job.
pub trait Communicator {
    /// This replica's index, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of replicas.
    fn size(&self) -> usize;

    /// Replaces `values` on every replica by their element-wise reduction over all replicas.
    ///
    /// # Errors
    ///
    /// [`Error::ReplicasDisagree`](crate::Error::ReplicasDisagree) if the replicas passed
    /// slices of different lengths; `values` are unchanged then.
    fn all_reduce(&self, values: &mut [f64], op: ReduceOp) -> Result<()>;
}

/// A named replica axis (JAX's `axis_name`) and the communicator that reduces over it: what
/// `ApplyOptions::replica_axis` gives a run, and what a cross-replica `BatchNorm` asks for
/// by name.
#[derive(Clone)]
pub struct ReplicaAxis {
    name: String,
    communicator: Rc<dyn Communicator>,
}

impl ReplicaAxis {
    /// The axis `name` over the replicas of `communicator`.
    #[must_use]
    pub fn new(name: &str, communicator: Rc<dyn Communicator>) -> Self {
        ReplicaAxis {
            name: name.to_string(),
            communicator,
        }
    }

    /// The axis name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The communicator.
    #[must_use]
    pub fn communicator(&self) -> &dyn Communicator {
        &*self.communicator
    }
}

/// Two axes are the same if they have the same name and the same communicator object.
impl PartialEq for ReplicaAxis {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && std::ptr::addr_eq(
                Rc::as_ptr(&self.communicator),
                Rc::as_ptr(&other.communicator),
            )
    }
}

impl fmt::Debug for ReplicaAxis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReplicaAxis({:?}, rank {} of {})",
            self.name,
            self.communicator.rank(),
            self.communicator.size()
        )
    }
}
