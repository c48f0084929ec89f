//! What keeps replicas identical: an agreement check, gradients averaged, buffers averaged.

use crate::collection::{Collection, Params};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::grads::Grads;
use crate::replicas::communicator::{Communicator, ReduceOp};
use crate::variables::Variables;

/// A fingerprint of `(path, shape)` pairs and a step count, as exactly representable f64s:
/// a 64-bit FNV-1a hash in four 16-bit pieces, the number of entries, the step count.
fn fingerprint<'a>(
    entries: impl Iterator<Item = (&'a str, &'a [usize])>,
    steps: usize,
) -> [f64; 6] {
    let (mut hash, mut count) = (0xcbf2_9ce4_8422_2325u64, 0usize);
    for (path, shape) in entries {
        let text = format!("{path}{shape:?};");
        for byte in text.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        count += 1;
    }
    let piece = |i: u32| ((hash >> (16 * i)) & 0xffff) as f64;
    [
        piece(0),
        piece(1),
        piece(2),
        piece(3),
        count as f64,
        steps as f64,
    ]
}

/// Checks that every replica has the same entries (paths and shapes) and the same step
/// count, with two all-reduces (max and min) that every replica takes part in, so a replica
/// that differs gets the error too instead of being left waiting.
///
/// # Errors
///
/// [`Error::ReplicasDisagree`] naming `op` and what differs, on every replica.
pub fn check_agreement<'a>(
    communicator: &dyn Communicator,
    op: &'static str,
    entries: impl Iterator<Item = (&'a str, &'a [usize])>,
    steps: usize,
) -> Result<()> {
    let mine = fingerprint(entries, steps);
    let (mut highest, mut lowest) = (mine, mine);
    communicator.all_reduce(&mut highest, ReduceOp::Max)?;
    communicator.all_reduce(&mut lowest, ReduceOp::Min)?;
    if highest[..5] != lowest[..5] {
        return Err(Error::ReplicasDisagree {
            op,
            detail: "their names or shapes differ".to_string(),
        });
    }
    if highest[5] != lowest[5] {
        return Err(Error::ReplicasDisagree {
            op,
            detail: format!("step counts from {} to {}", lowest[5], highest[5]),
        });
    }
    Ok(())
}

/// All of `arrays`, concatenated in order, summed over replicas and divided by their number.
fn mean_over_replicas<'a, A: Float + 'a>(
    communicator: &dyn Communicator,
    arrays: impl Iterator<Item = &'a ndarray::ArrayD<A>>,
) -> Result<Vec<f64>> {
    let mut flat: Vec<f64> = arrays.flat_map(|a| a.iter().map(|x| x.as_f64())).collect();
    communicator.all_reduce(&mut flat, ReduceOp::Sum)?;
    let replicas = communicator.size() as f64;
    Ok(flat.into_iter().map(|x| x / replicas).collect())
}

/// The gradients averaged over the replicas (each replica passes its shard's), after
/// [`check_agreement`] on their paths and shapes and the optimizer's `steps`. Handed to the
/// optimizer on every replica, the same averaged gradients keep params and optimizer state
/// identical everywhere. (With equal shards and a loss that is a mean over rows, the mean
/// of the shards' gradients is the gradient of the global batch's loss.)
///
/// # Errors
///
/// [`Error::ReplicasDisagree`] on every replica if they differ; nothing is averaged then.
pub fn mean_grads<A: Float>(
    communicator: &dyn Communicator,
    grads: &Grads<A>,
    steps: usize,
) -> Result<Grads<A>> {
    let entries = grads.iter().map(|(path, g)| (path, g.shape()));
    check_agreement(communicator, "mean_grads", entries, steps)?;
    let mean = mean_over_replicas(communicator, grads.iter().map(|(_, g)| g))?;
    let mut offset = 0;
    grads.map(|_, g| {
        let values = &mean[offset..offset + g.len()];
        offset += g.len();
        ndarray::ArrayD::from_shape_vec(g.raw_dim(), values.iter().map(|&x| A::of(x)).collect())
            .expect("each gradient keeps its length")
    })
}

/// Replaces `collection` of `variables` (e.g. `"batch_stats"`) by its mean over the replicas:
/// the rule that keeps per-replica BatchNorm statistics identical on every replica (PyTorch
/// DDP's `broadcast_buffers` copies replica 0's instead). A missing collection is an empty
/// one, and stays missing.
///
/// # Errors
///
/// [`Error::ReplicasDisagree`] on every replica if the collection's names or shapes differ;
/// nothing is changed then.
pub fn mean_collection<A: Float>(
    communicator: &dyn Communicator,
    variables: &mut Variables<A>,
    collection: &str,
) -> Result<()> {
    let empty = Collection::new();
    let stored = variables.collection(collection).unwrap_or(&empty);
    let entries = stored.iter().map(|(path, a)| (path, a.shape()));
    check_agreement(communicator, "mean_collection", entries, 0)?;
    let mean = mean_over_replicas(communicator, stored.iter().map(|(_, a)| a))?;
    if mean.is_empty() {
        return Ok(()); // every replica agreed there is nothing to average
    }
    let target = variables.collection_entry(collection);
    let mut offset = 0;
    for (_, array) in target.iter_mut() {
        for (x, &m) in array.iter_mut().zip(&mean[offset..]) {
            *x = A::of(m);
        }
        offset += array.len();
    }
    Ok(())
}

/// Call on every replica before a step's forward pass: an error on every replica, before
/// any collective of the forward pass could leave one waiting, if their params (names and
/// shapes), the shapes of their shards or their optimizers' step counts differ.
///
/// # Errors
///
/// [`Error::ReplicasDisagree`] naming `"begin_step"`, on every replica.
pub fn begin_step<A: Float>(
    communicator: &dyn Communicator,
    params: &Params<A>,
    shard_shape: &[usize],
    steps: usize,
) -> Result<()> {
    let entries = params
        .iter()
        .map(|(path, a)| (path, a.shape()))
        .chain(std::iter::once(("#shard", shard_shape)));
    check_agreement(communicator, "begin_step", entries, steps)
}

/// Joins the replicas on the outcome of a local computation: every replica learns whether
/// any failed, with one reduction every replica takes part in. A replica that failed gets
/// its own error back; the others get [`Error::ReplicasDisagree`], so that none goes on to
/// a collective the failed one will never join. Inside `value_and_grad`'s closure, around
/// the loss, this keeps a replica whose loss failed from leaving the others waiting in the
/// backward pass of a cross-replica BatchNorm.
///
/// ```
/// use tapegrad::replicas::{InProcess, agree_on};
/// let outcomes: Vec<Result<u8, tapegrad::Error>> = std::thread::scope(|s| {
///     let handles: Vec<_> = InProcess::group(2).into_iter().map(|replica| s.spawn(move || {
///         use tapegrad::replicas::Communicator;
///         let local = if replica.rank() == 1 {
///             Err(tapegrad::Error::ReplicasDisagree { op: "demo", detail: "mine failed".into() })
///         } else {
///             Ok(7)
///         };
///         agree_on(&replica, "loss", local)
///     })).collect();
///     handles.into_iter().map(|h| h.join().unwrap()).collect()
/// });
/// assert!(outcomes.iter().all(Result::is_err)); // replica 0 learned that 1 failed
/// ```
///
/// # Errors
///
/// The local error, or [`Error::ReplicasDisagree`] naming `op` if another replica failed.
pub fn agree_on<T>(
    communicator: &dyn Communicator,
    op: &'static str,
    local: Result<T>,
) -> Result<T> {
    let mut failed = [f64::from(u8::from(local.is_err()))];
    communicator.all_reduce(&mut failed, ReduceOp::Max)?;
    match local {
        Ok(_) if failed[0] > 0.0 => Err(Error::ReplicasDisagree {
            op,
            detail: "another replica failed".to_string(),
        }),
        outcome => outcome,
    }
}
