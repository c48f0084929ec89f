//! `Mlp`: the multi-layer perceptron builder.

use std::rc::Rc;

use crate::error::{Error, Result};
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
    /// Into how many segments the hidden blocks are grouped, each but the last recomputed
    /// during backward (see [`Sequential::remat_segments`](crate::nn::Sequential::remat_segments)),
    /// if any.
    pub remat_segments: Option<usize>,
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
            remat_segments: None,
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

impl Mlp {
    /// Groups the hidden blocks (Dense, BatchNorm, activation, dropout) into `segments`
    /// consecutive segments, each but the last recomputed during backward: the same
    /// variables, values and gradients, for less memory and one more forward's time.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `segments` is 0.
    pub fn with_remat_segments(self, segments: usize) -> Result<Self> {
        if segments == 0 {
            return Err(Error::invalid(
                "Mlp::with_remat_segments",
                &[self.hidden.len()],
                "at least one segment",
            ));
        }
        Ok(Mlp {
            remat_segments: Some(segments),
            ..self
        })
    }

    /// The hidden block of `width`: Dense, BatchNorm if any, the activation, dropout if any.
    fn block<A: Float>(
        &self,
        scope: &mut Scope<'_, A>,
        x: &Tensor<A>,
        width: usize,
    ) -> Result<Tensor<A>> {
        let mut x = scope.call(&Dense::new(width), x)?;
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
        Ok(x)
    }

    fn blocks<A: Float>(
        &self,
        scope: &mut Scope<'_, A>,
        x: &Tensor<A>,
        widths: &[usize],
    ) -> Result<Tensor<A>> {
        let mut x = x.clone();
        for &width in widths {
            x = self.block(scope, &x, width)?;
        }
        Ok(x)
    }
}

impl<A: Float> Module<A> for Mlp {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Mlp"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let segments = self.remat_segments.unwrap_or(1);
        let length = self.hidden.len().div_ceil(segments).max(1);
        let mut x = x.clone();
        let mut chunks = self.hidden.chunks(length).peekable();
        while let Some(widths) = chunks.next() {
            x = match (self.remat_segments, chunks.peek()) {
                (Some(_), Some(_)) => {
                    let (model, widths) = (self.clone(), widths.to_vec());
                    let segment =
                        move |s: &mut Scope<'_, A>, x: &Tensor<A>| model.blocks(s, x, &widths);
                    scope.run_recomputed(&x, Rc::new(segment))?
                }
                _ => self.blocks(scope, &x, widths)?,
            };
        }
        scope.call(&Dense::new(self.outputs), &x)
    }
}
