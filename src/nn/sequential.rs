//! `Sequential`: layers applied one after another.

use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
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
/// assert_eq!(model.kinds().collect::<Vec<_>>(), ["Dense", "BatchNorm", "Relu", "Dense"]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// Each layer runs as it is: a `BatchNorm` followed by `Activation::Relu` is two layers and
/// two ops; [`BatchNorm::with_relu`](crate::nn::BatchNorm::with_relu) is one layer, with the
/// same variables, that runs the ReLU inside the normalisation's fused node (faster in
/// training; the same values).
pub struct Sequential<A: Float> {
    layers: Vec<Layer<A>>,
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
        self.layers.push(Box::new(layer));
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

    /// The kinds of the layers, in order ([`Module::layer_kinds`] of each: a
    /// [`BatchNormRelu`](crate::nn::BatchNormRelu) is `"BatchNorm"`, `"Relu"`): what
    /// [`TorchMapping::of_sequential`](crate::checkpoint::TorchMapping::of_sequential) maps
    /// onto a PyTorch `nn.Sequential`, module `i` there being kind `i` here.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.layers.iter().flat_map(|layer| layer.layer_kinds())
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
        for layer in &self.layers {
            x = scope.call(layer.as_ref(), &x)?;
        }
        Ok(x)
    }
}
