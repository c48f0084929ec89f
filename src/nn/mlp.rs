//! `Mlp`: the multi-layer perceptron builder.

use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::nn::activation::Activation;
use crate::nn::batch_norm::BatchNorm;
use crate::nn::dense::Dense;
use crate::nn::dropout::Dropout;
use crate::tensor::Tensor;

/// A multi-layer perceptron: for each hidden width, `Dense`, optionally `BatchNorm`, the
/// activation and optionally `Dropout`; then a final `Dense` to the outputs.
///
/// With `BatchNorm` and ReLU this is the benchmark workload's model, with the same variable
/// paths (`params/Dense_0/kernel`, `batch_stats/BatchNorm_0/mean`, …).
///
/// ```
/// use tapegrad::nn::{BatchNorm, Mlp};
/// let model = Mlp::new(&[64, 64], 10).with_batch_norm(BatchNorm::new().momentum(0.9));
/// assert_eq!(model.hidden, vec![64, 64]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Output width.
    pub outputs: usize,
    /// BatchNorm after each hidden `Dense`, if any.
    pub batch_norm: Option<BatchNorm>,
    /// The hidden activation (ReLU by default).
    pub activation: Activation,
    /// Dropout rate after each hidden activation, if any.
    pub dropout: Option<f64>,
}

impl Mlp {
    /// An MLP with ReLU, no BatchNorm, no dropout.
    #[must_use]
    pub fn new(hidden: &[usize], outputs: usize) -> Self {
        Mlp {
            hidden: hidden.to_vec(),
            outputs,
            batch_norm: None,
            activation: Activation::Relu,
            dropout: None,
        }
    }

    /// Adds `batch_norm` after each hidden `Dense`.
    #[must_use]
    pub fn with_batch_norm(self, batch_norm: BatchNorm) -> Self {
        Mlp {
            batch_norm: Some(batch_norm),
            ..self
        }
    }

    /// Uses another hidden activation.
    #[must_use]
    pub fn with_activation(self, activation: Activation) -> Self {
        Mlp { activation, ..self }
    }

    /// Adds dropout after each hidden activation.
    #[must_use]
    pub fn with_dropout(self, rate: f64) -> Self {
        Mlp {
            dropout: Some(rate),
            ..self
        }
    }
}

impl<A: Float> Module<A> for Mlp {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Mlp"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let mut x = x.clone();
        for &width in &self.hidden {
            x = scope.call(&Dense::new(width), &x)?;
            match &self.batch_norm {
                // The ReLU may run inside BatchNorm's fused node: same variables.
                Some(bn) if self.activation == Activation::Relu => {
                    x = scope.call(&bn.clone().with_relu(), &x)?;
                }
                Some(bn) => {
                    x = scope.call(bn, &x)?;
                    x = self.activation.apply(&x);
                }
                None => x = self.activation.apply(&x),
            }
            if let Some(rate) = self.dropout {
                x = scope.call(&Dropout::new(rate), &x)?;
            }
        }
        scope.call(&Dense::new(self.outputs), &x)
    }
}
