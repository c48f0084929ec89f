//! Replicas as MPI processes (feature `mpi`): the same [`Communicator`] over rsmpi.

use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator as _, CommunicatorCollectives as _};

use crate::error::{Error, Result};
use crate::replicas::communicator::{Communicator, ReduceOp};

/// The MPI world as a communicator: one replica per process (rank), as `mpirun -np R`
/// starts them. Reductions gather every rank's values and reduce them in rank order on each
/// rank, so every replica gets the same bits (an `MPI_Allreduce` of floats may differ in its
/// last bits from rank to rank, by the order its algorithm adds in).
///
/// Each all-reduce first all-reduces the length (as minimum and maximum), so ranks that pass
/// different lengths all get [`Error::ReplicasDisagree`], and none is left waiting.
///
/// A rank that fails must not leave the others waiting in a collective it will never join:
/// [`Mpi::abort`] ends every rank of the job (MPI's `MPI_Abort`, which `mpirun` reports),
/// and a rank that panics while it holds its `Mpi` aborts the job as it unwinds. A rank that
/// returns normally finalises MPI, which waits for the others.
pub struct Mpi {
    world: SimpleCommunicator,
    // Finalizes MPI when dropped: kept for as long as the communicator lives.
    _universe: Universe,
}

impl Mpi {
    /// Initialises MPI (single-threaded: one replica per process) and returns the world
    /// communicator; `None` if MPI was already initialised in this process.
    #[must_use]
    pub fn init() -> Option<Mpi> {
        let universe = mpi::initialize()?;
        Some(Mpi {
            world: universe.world(),
            _universe: universe,
        })
    }
}

impl Mpi {
    /// Ends every rank of the job with exit code `code`, after printing `reason` on this
    /// rank's standard error: for a rank that failed and will not join its peers' next
    /// collective (they would wait for it for ever).
    pub fn abort(&self, reason: &str, code: i32) -> ! {
        eprintln!("rank {}: {reason}; aborting every rank", self.rank());
        self.world.abort(code)
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.abort("panicked", 101);
        }
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        usize::try_from(self.world.rank()).expect("MPI ranks are non-negative")
    }

    fn size(&self) -> usize {
        usize::try_from(self.world.size()).expect("MPI sizes are positive")
    }

    fn all_reduce(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        let length = values.len() as u64;
        let mut lengths = vec![0u64; self.size()];
        self.world.all_gather_into(&length, &mut lengths[..]);
        if lengths.iter().any(|&l| l != length) {
            return Err(Error::ReplicasDisagree {
                op: "all_reduce",
                detail: format!("lengths by rank {lengths:?}"),
            });
        }
        let n = values.len();
        if n == 0 {
            return Ok(()); // every rank agreed on nothing to reduce
        }
        let mut gathered = vec![0.0f64; n * self.size()];
        self.world.all_gather_into(&values[..], &mut gathered[..]);
        for (i, value) in values.iter_mut().enumerate() {
            let column = gathered.chunks_exact(n).map(|rank| rank[i]);
            *value = match op {
                ReduceOp::Sum => column.fold(0.0, |a, b| a + b),
                ReduceOp::Max => column.fold(f64::NEG_INFINITY, f64::max),
                ReduceOp::Min => column.fold(f64::INFINITY, f64::min),
            };
        }
        Ok(())
    }
}
