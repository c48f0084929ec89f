//! `Sequential`: layers applied one after another.

use std::any::Any;

use crate::checkpoint::TorchMapping;
use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::nn::activation::Activation;
use crate::nn::batch_norm::{BatchNorm, BatchNormRelu};
use crate::tensor::Tensor;

/// A boxed tensor-to-tensor module, what a [`Sequential`] holds.
pub type Layer<A> = Box<dyn Module<A, Input = Tensor<A>, Output = Tensor<A>>>;

/// Layers applied in order. Each runs in a child scope with its default name (`Dense_0`,
/// `BatchNorm_0`, `Dense_1`, …), as in a Flax compact module, so the variable paths are the
/// ones Flax would give. (Flax's own `nn.Sequential` names its layers `layers_0`, … instead.)
///
/// ```
/// use tapegrad::nn::{Activation, BatchNorm, Dense, Sequential};
/// use tapegrad::{ModuleExt, Tensor};
/// let model = Sequential::<f64>::new()
///     .push(Dense::new(4))
///     .push(BatchNorm::new())
///     .push(Activation::Relu)
///     .push(Dense::new(2));
/// let vars = model.init(0, &Tensor::from_vec(&[3, 5], vec![0.5; 15])?)?;
/// assert!(vars.get("batch_stats/BatchNorm_0/mean").is_some());
/// assert!(vars.get("params/Dense_1/kernel").is_some());
/// # Ok::<(), tapegrad::Error>(())
/// ```
pub struct Sequential<A: Float> {
    layers: Vec<Entry<A>>,
}

/// A layer, with the two kinds `Sequential` recognises: a `BatchNorm` followed by a ReLU runs
/// as one `BatchNormRelu` (the ReLU inside BatchNorm's fused node, as in [`Mlp`](crate::nn::Mlp)).
enum Entry<A: Float> {
    BatchNorm(BatchNorm),
    Relu,
    Other(Layer<A>),
}

impl<A: Float> Default for Sequential<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Float> Sequential<A> {
    /// No layers (the identity).
    #[must_use]
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }

    /// Appends a layer.
    #[must_use]
    pub fn push(
        mut self,
        layer: impl Module<A, Input = Tensor<A>, Output = Tensor<A>> + 'static,
    ) -> Self {
        let any: &dyn Any = &layer;
        let entry = if let Some(bn) = any.downcast_ref::<BatchNorm>() {
            Entry::BatchNorm(bn.clone())
        } else if any.downcast_ref::<Activation>() == Some(&Activation::Relu) {
            Entry::Relu
        } else {
            Entry::Other(Box::new(layer))
        };
        self.layers.push(entry);
        self
    }

    /// The number of layers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// How these layers' variables map onto a PyTorch `nn.Sequential` of the same layers in
    /// the same order (`Dense` ↔ `nn.Linear`, `Conv` ↔ `nn.Conv2d`, `BatchNorm` ↔
    /// `nn.BatchNorm1d/2d`, `Embed` ↔ `nn.Embedding`; activations, pooling and flatten hold
    /// their places): module `i` here is module `i` there. For
    /// [`export_pytorch`](crate::checkpoint::export_pytorch) and
    /// [`import_pytorch_into`](crate::checkpoint::import_pytorch_into).
    #[must_use]
    pub fn torch_mapping(&self) -> TorchMapping {
        TorchMapping::from_kinds(self.layers.iter().map(|layer| match layer {
            Entry::BatchNorm(_) => "BatchNorm",
            Entry::Relu => "Activation",
            Entry::Other(layer) => layer.kind(),
        }))
    }
}

impl<A: Float> Module<A> for Sequential<A> {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Sequential"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let mut x = x.clone();
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            x = match layer {
                Entry::BatchNorm(bn) if matches!(layers.peek(), Some(Entry::Relu)) => {
                    layers.next(); // the ReLU runs inside BatchNorm's node: same variables
                    scope.call(&BatchNormRelu(bn), &x)?
                }
                Entry::BatchNorm(bn) => scope.call(bn, &x)?,
                Entry::Relu => scope.call(&Activation::Relu, &x)?,
                Entry::Other(layer) => scope.call(layer.as_ref(), &x)?,
            };
        }
        Ok(x)
    }
}
