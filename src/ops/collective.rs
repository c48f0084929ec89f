//! `psum`: the sum over replicas, as an op on the tape (JAX's `lax.psum`); and the global
//! count of a batch split over replicas.

use ndarray::ArrayD;

use crate::error::Result;
use crate::float::Float;
use crate::ops::tangent::only;
use crate::record::{Primal, Rules, record_one};
use crate::replicas::{Communicator, ReduceOp, ReplicaAxis};
use crate::tensor::Tensor;

/// `array` summed element-wise over every replica of `communicator` (in f64).
fn all_reduce_sum<A: Float>(
    communicator: &dyn Communicator,
    array: &ArrayD<A>,
) -> Result<ArrayD<A>> {
    let mut values: Vec<f64> = array.iter().map(|x| x.as_f64()).collect();
    communicator.all_reduce(&mut values, ReduceOp::Sum)?;
    Ok(
        ArrayD::from_shape_vec(array.raw_dim(), values.into_iter().map(A::of).collect())
            .expect("the reduction keeps the length"),
    )
}

impl<A: Float> Tensor<A> {
    /// The element-wise sum of this tensor over every replica of `axis`: every replica gets
    /// the same result. JAX: `lax.psum(x, axis_name)`.
    ///
    /// Its VJP is a `psum` of the output's gradient: replica `s`'s value reaches every
    /// replica's output, so its gradient is the sum of theirs. This is what makes a
    /// cross-replica BatchNorm's backward pass reduce the matching gradient sums, and it
    /// holds because every replica walks the same tape (the same collectives, in the same
    /// order).
    ///
    /// # Errors
    ///
    /// [`Error::ReplicasDisagree`](crate::Error::ReplicasDisagree) if the replicas' tensors
    /// have different numbers of elements; nothing is recorded.
    pub fn psum(&self, axis: &ReplicaAxis) -> Result<Tensor<A>> {
        let value = all_reduce_sum(axis.communicator(), self.value())?;
        // The forward reduction agreed on this length on every replica, and a gradient or a
        // tangent has the same shape: the later reductions cannot disagree.
        let agreed = "replicas agreed in the forward pass";
        let rules = Rules {
            saved: axis.clone(),
            vjp: move |axis: &ReplicaAxis, g: ArrayD<A>, _: &[bool]| {
                all_reduce_sum(axis.communicator(), &g).expect(agreed)
            },
            recorded: |axis: &ReplicaAxis, g: &Tensor<A>, _: &Primal<'_, A>| g.psum(axis),
            jvp: |axis: &ReplicaAxis, t: &[Option<&ArrayD<A>>]| {
                all_reduce_sum(axis.communicator(), only(t))
            },
        };
        Ok(record_one("psum", self, value, rules))
    }
}

pub(crate) fn global_count(axis: &ReplicaAxis, local: f64) -> Result<f64> {
    let mut global = [local];
    axis.communicator().all_reduce(&mut global, ReduceOp::Sum)?;
    Ok(global[0])
}
