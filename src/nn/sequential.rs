//! `Sequential`: layers applied one after another.

use std::rc::Rc;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::tensor::Tensor;

/// A shared tensor-to-tensor module, what a [`Sequential`] holds (shared so that a
/// recomputed segment can run its layers again during backward).
pub type Layer<A> = Rc<dyn Module<A, Input = Tensor<A>, Output = Tensor<A>>>;

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
    /// How many segments to run, all but the last recomputed during backward (`None`: the
    /// layers run as they are).
    remat_segments: Option<usize>,
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
        Sequential {
            layers: Vec::new(),
            remat_segments: None,
        }
    }

    /// Appends a layer.
    #[must_use]
    pub fn push(
        mut self,
        layer: impl Module<A, Input = Tensor<A>, Output = Tensor<A>> + 'static,
    ) -> Self {
        self.layers.push(Rc::new(layer));
        self
    }

    /// The same layers, run in `segments` consecutive segments of equal length (the last
    /// may be shorter), each but the last recomputed during backward as by
    /// [`Remat`](crate::nn::Remat): the backward pass keeps only the segments' inputs, plus
    /// one segment's activations while it is differentiated. About `√n` segments of `n`
    /// layers minimise that memory for one more forward's time (Chen et al., 2016,
    /// "Training deep nets with sublinear memory cost"). The last segment is not
    /// recomputed: its backward comes first, so keeping it costs nothing extra.
    /// PyTorch: `torch.utils.checkpoint.checkpoint_sequential(layers, segments, x)`.
    ///
    /// The variables and their paths do not change; values, gradients and updates are the
    /// same, bit for bit.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `segments` is 0.
    pub fn remat_segments(mut self, segments: usize) -> Result<Self> {
        if segments == 0 {
            return Err(Error::invalid(
                "Sequential::remat_segments",
                &[self.layers.len()],
                "at least one segment",
            ));
        }
        self.remat_segments = Some(segments);
        Ok(self)
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
        let Some(segments) = self.remat_segments else {
            return run_layers(&self.layers, scope, x);
        };
        let length = self.layers.len().div_ceil(segments).max(1);
        let mut x = x.clone();
        let mut chunks = self.layers.chunks(length).peekable();
        while let Some(segment) = chunks.next() {
            x = match chunks.peek() {
                None => run_layers(segment, scope, &x)?,
                Some(_) => {
                    let segment = segment.to_vec();
                    scope.run_recomputed(&x, Rc::new(move |s, x| run_layers(&segment, s, x)))?
                }
            };
        }
        Ok(x)
    }
}

fn run_layers<A: Float>(
    layers: &[Layer<A>],
    scope: &mut Scope<'_, A>,
    x: &Tensor<A>,
) -> Result<Tensor<A>> {
    let mut x = x.clone();
    for layer in layers {
        x = scope.call(layer.as_ref(), &x)?;
    }
    Ok(x)
}
