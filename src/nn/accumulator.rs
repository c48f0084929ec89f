//! `Accumulator`: a layer with state that persists across calls.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::nn::init;
use crate::tensor::Tensor;

/// Adds the batch mean of its input to a running `sum` in the `state` collection on every
/// call, and returns `x + sum` (the updated sum). The "stateful layer" of the Flax examples
/// users port.
///
/// Each call writes `state`, so `apply` needs `Mutable::only(["state"])`; without it the
/// call is [`Error::ImmutableCollection`](crate::Error::ImmutableCollection). `init` does
/// not accumulate, so after `n` applies (merging each update) `sum` is `n` batch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Accumulator;

impl<A: Float> Module<A> for Accumulator {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Accumulator"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let Some(&features) = x.shape().last().filter(|_| x.ndim() == 2) else {
            return Err(Error::invalid(
                "Accumulator",
                x.shape(),
                "expected (batch, features)",
            ));
        };
        if x.shape()[0] == 0 {
            // The mean of no rows is 0 / 0: NaN, which would be added to the sum for good.
            return Err(Error::invalid(
                "Accumulator",
                x.shape(),
                "an empty batch has no mean to accumulate",
            ));
        }
        let sum = scope.variable("state", "sum", &[features], init::zeros())?;
        let updated = sum.value().add(&x.mean_axes(&[0], false)?.detach())?;
        if !scope.is_initializing() && !scope.is_recomputing() {
            sum.set_finite("Accumulator", updated.value().clone())?;
        }
        x.add(&updated)
    }
}
