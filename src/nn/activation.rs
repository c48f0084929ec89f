//! Activation functions as a value (for builders) and as stateless modules.

use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::tensor::Tensor;

/// An elementwise activation. As a [`Module`] it has no variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    /// `max(x, 0)`.
    #[default]
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `x`.
    Identity,
}

impl Activation {
    /// Applies the activation.
    #[must_use]
    pub fn apply<A: Float>(self, x: &Tensor<A>) -> Tensor<A> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Identity => x.clone(),
        }
    }
}

impl<A: Float> Module<A> for Activation {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::Tanh => "Tanh",
            Activation::Sigmoid => "Sigmoid",
            Activation::Identity => "Identity",
        }
    }

    fn forward(&self, _: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        Ok(self.apply(x))
    }
}
