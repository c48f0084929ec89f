//! Replicas as threads of one process, reducing through shared memory.

use std::sync::{Arc, Barrier, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::replicas::communicator::{Communicator, ReduceOp};

/// One replica of an in-process group: `InProcess::group(r)` makes `r` of them, one per
/// thread (each is `Send`: move it into its thread, and wrap it in an `Rc` there for a
/// [`ReplicaAxis`](crate::replicas::ReplicaAxis)). Each all-reduce is two barrier waits: every replica deposits its values, then
/// every replica reduces all of them in rank order (the same bits everywhere), then all
/// leave together.
///
/// ```
/// use tapegrad::replicas::{Communicator, InProcess, ReduceOp};
/// let sums: Vec<Vec<f64>> = std::thread::scope(|s| {
///     let handles: Vec<_> = InProcess::group(3)
///         .into_iter()
///         .map(|replica| s.spawn(move || {
///             let mut values = vec![replica.rank() as f64, 1.0];
///             replica.all_reduce(&mut values, ReduceOp::Sum).map(|()| values)
///         }))
///         .collect();
///     handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
/// });
/// assert!(sums.iter().all(|v| v == &[3.0, 3.0])); // 0 + 1 + 2, and 1 + 1 + 1
/// ```
#[derive(Clone)]
pub struct InProcess {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    barrier: Barrier,
    /// Each replica's contribution to the current all-reduce.
    deposits: Mutex<Vec<Vec<f64>>>,
}

impl InProcess {
    /// `replicas` communicators that reduce with each other (at least one).
    #[must_use]
    pub fn group(replicas: usize) -> Vec<InProcess> {
        let size = replicas.max(1);
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            deposits: Mutex::new(vec![Vec::new(); size]),
        });
        (0..size)
            .map(|rank| InProcess {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }
}

impl Communicator for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce(&self, values: &mut [f64], op: ReduceOp) -> Result<()> {
        let lock = || {
            self.shared
                .deposits
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        lock()[self.rank] = values.to_vec();
        self.shared.barrier.wait();
        let outcome = {
            let deposits = lock();
            if deposits.iter().any(|d| d.len() != values.len()) {
                let lengths: Vec<usize> = deposits.iter().map(Vec::len).collect();
                Err(Error::ReplicasDisagree {
                    op: "all_reduce",
                    detail: format!("lengths by rank {lengths:?}"),
                })
            } else {
                for (i, value) in values.iter_mut().enumerate() {
                    let column = deposits.iter().map(|d| d[i]);
                    *value = match op {
                        ReduceOp::Sum => column.fold(0.0, |a, b| a + b),
                        ReduceOp::Max => column.fold(f64::NEG_INFINITY, f64::max),
                        ReduceOp::Min => column.fold(f64::INFINITY, f64::min),
                    };
                }
                Ok(())
            }
        };
        // Nobody deposits for the next reduction before everybody has read this one.
        self.shared.barrier.wait();
        outcome
    }
}
