//! Composites: functions built from primitives only, so they need no VJP of their own and
//! the gradient checker covers them through their parts.

use crate::error::Result;
use crate::float::Float;
use crate::tensor::Tensor;

impl<A: Float> Tensor<A> {
    /// `log(sum(exp(x)))` over `axis`, computed stably: the maximum is subtracted first.
    ///
    /// The maximum is taken of the detached value and enters as a constant: mathematically
    /// the result does not depend on the shift, so no gradient needs to flow through it (and
    /// none flows through ties of the maximum). Over an empty axis it is `log 0 = −∞`, as in
    /// JAX, and [`softmax`](Self::softmax) over an empty axis is empty.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if `axis` is out of range; nothing
    /// is recorded.
    pub fn logsumexp(&self, axis: usize, keep_dims: bool) -> Result<Tensor<A>> {
        if self.shape().get(axis) == Some(&0) {
            // The sum of nothing, with no maximum to shift by.
            let sum = self.exp().sum_axes(&[axis], keep_dims)?;
            return Ok(sum.log());
        }
        // Taken from the detached value: nothing about the shift is recorded on the tape.
        let max = self
            .detach()
            .max_axes(&[axis], true)?
            .with_label("max (a constant shift)");
        let lse = self
            .sub(&max)?
            .exp()
            .sum_axes(&[axis], true)?
            .log()
            .add(&max)?;
        if keep_dims {
            Ok(lse)
        } else {
            let mut shape = self.shape().to_vec();
            shape.remove(axis);
            lse.reshape(&shape)
        }
    }

    /// `x - logsumexp(x)` over `axis`: log-probabilities, stable for large logits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if `axis` is out of range; nothing
    /// is recorded.
    pub fn log_softmax(&self, axis: usize) -> Result<Tensor<A>> {
        self.sub(&self.logsumexp(axis, true)?)
    }

    /// `exp(x) / sum(exp(x))` over `axis`, as `exp(log_softmax(x))`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) if `axis` is out of range; nothing
    /// is recorded.
    pub fn softmax(&self, axis: usize) -> Result<Tensor<A>> {
        Ok(self.log_softmax(axis)?.exp())
    }

    /// Biased variance over `axes` (divides by `n`, as `jnp.var` and BatchNorm do):
    /// `mean((x - mean(x))^2)`, the two-pass form.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming the op and the shape if an
    /// axis is out of range or repeated; nothing is recorded.
    pub fn var_axes(&self, axes: &[usize], keep_dims: bool) -> Result<Tensor<A>> {
        let centred = self.sub(&self.mean_axes(axes, true)?)?;
        centred.square().mean_axes(axes, keep_dims)
    }
}
