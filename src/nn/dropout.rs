//! `Dropout`, with its own random stream.

use ndarray::ArrayD;
use rand::RngExt;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::tensor::Tensor;

/// Zeroes each element with probability `rate` in training mode and scales the rest by
/// `1 / (1 - rate)`; the identity in evaluation mode. The mask comes from the `"dropout"`
/// random stream, which `apply` must be given (`ApplyOptions::train().rng("dropout", seed)`);
/// each element keeps with `rand`'s `random_bool(1 - rate)` on that stream.
/// Flax: `nn.Dropout(rate)`; PyTorch: `nn.Dropout(p=rate)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropout {
    /// The probability of dropping an element, in `[0, 1]`.
    pub rate: f64,
}

impl Dropout {
    /// Drops with probability `rate`.
    #[must_use]
    pub fn new(rate: f64) -> Self {
        Dropout { rate }
    }
}

impl<A: Float> Module<A> for Dropout {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Dropout"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(Error::invalid(
                "Dropout",
                x.shape(),
                format!("rate {} is not in [0, 1]", self.rate),
            ));
        }
        if !scope.is_training() || self.rate == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 - self.rate;
        let mut rng = scope.rng("dropout")?;
        let scale = if keep > 0.0 { 1.0 / keep } else { 0.0 };
        let mask = ArrayD::from_shape_simple_fn(x.shape(), || {
            A::of(if rng.random_bool(keep) { scale } else { 0.0 })
        });
        x.mul(&Tensor::constant(mask))
    }
}
