//! Replicas as threads of one process, reducing through shared memory.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};
use crate::replicas::communicator::{Communicator, ReduceOp};

/// One replica of an in-process group: `InProcess::group(r)` makes `r` of them, one per
/// thread (each is `Send`: move it into its thread, and wrap it in an `Rc` there for a
/// [`ReplicaAxis`](crate::replicas::ReplicaAxis)). In each all-reduce every replica deposits its
/// values, waits for all the others', and reduces them in rank order (the same bits
/// everywhere); the next reduction starts when every replica has read this one's.
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
///
/// A replica that is gone (its last handle dropped: its thread returned, with an error say,
/// or panicked) can never join another reduction, so every reduction it has not joined fails
/// on the others with [`Error::ReplicasDisagree`] naming it: a data-parallel run fails as a
/// whole, on every replica, and says why, instead of waiting for ever.
#[derive(Clone)]
pub struct InProcess {
    rank: usize,
    shared: Arc<Shared>,
    /// Held by every clone of this rank's handle: when the last goes, the rank is gone.
    _presence: Arc<Presence>,
}

/// What the replicas of a group share: the reduction under way, and who is gone.
struct Shared {
    size: usize,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    /// Each replica's contribution to the current reduction, `None` until it deposits.
    deposits: Vec<Option<Vec<f64>>>,
    /// How many of the current reduction's replicas have read the result (the next one
    /// starts when all have).
    read: usize,
    /// Counts reductions, so that a waiter can tell its own from the next.
    generation: u64,
    /// Ranks whose every handle was dropped.
    gone: Vec<bool>,
}

/// Marks its rank gone when dropped, and wakes everyone waiting.
struct Presence {
    rank: usize,
    shared: Arc<Shared>,
}

impl Drop for Presence {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.gone[self.rank] = true;
        self.shared.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state whole: a panic elsewhere while it was held leaves it
        // valid.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl InProcess {
    /// `replicas` communicators that reduce with each other (at least one).
    #[must_use]
    pub fn group(replicas: usize) -> Vec<InProcess> {
        let size = replicas.max(1);
        let shared = Arc::new(Shared {
            size,
            state: Mutex::new(State {
                deposits: vec![None; size],
                read: 0,
                generation: 0,
                gone: vec![false; size],
            }),
            changed: Condvar::new(),
        });
        (0..size)
            .map(|rank| InProcess {
                rank,
                shared: Arc::clone(&shared),
                _presence: Arc::new(Presence {
                    rank,
                    shared: Arc::clone(&shared),
                }),
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
        let shared = &self.shared;
        let mut state = shared.lock();
        // Wait until the previous reduction's result has been read by everyone.
        while state.read != 0 {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let generation = state.generation;
        state.deposits[self.rank] = Some(values.to_vec());
        shared.changed.notify_all();
        // Wait for every replica's deposit, or for one that can never come.
        loop {
            if state.generation != generation || state.deposits.iter().all(Option::is_some) {
                break;
            }
            let missing_and_gone: Vec<usize> = (0..shared.size)
                .filter(|&r| state.deposits[r].is_none() && state.gone[r])
                .collect();
            if !missing_and_gone.is_empty() {
                // Withdraw, so that a later reduction does not read this one's deposit.
                state.deposits[self.rank] = None;
                shared.changed.notify_all();
                return Err(Error::ReplicasDisagree {
                    op: "all_reduce",
                    detail: format!(
                        "replica {missing_and_gone:?} of {} is gone (it returned or panicked) \
                         without joining this reduction",
                        shared.size
                    ),
                });
            }
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let outcome = reduce(&state.deposits, values, op);
        // The last to read starts the next reduction.
        state.read += 1;
        if state.read == shared.size {
            state.read = 0;
            state.generation += 1;
            state.deposits.iter_mut().for_each(|d| *d = None);
        }
        shared.changed.notify_all();
        outcome
    }
}

/// Every replica's deposit reduced into `values`, in rank order (the same bits on every
/// replica); an error if their lengths differ.
fn reduce(deposits: &[Option<Vec<f64>>], values: &mut [f64], op: ReduceOp) -> Result<()> {
    let deposits: Vec<&Vec<f64>> = deposits.iter().flatten().collect();
    if deposits.iter().any(|d| d.len() != values.len()) {
        let lengths: Vec<usize> = deposits.iter().map(|d| d.len()).collect();
        return Err(Error::ReplicasDisagree {
            op: "all_reduce",
            detail: format!("lengths by rank {lengths:?}"),
        });
    }
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
