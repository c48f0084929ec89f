//! `Embed`: a trainable lookup table.

use ndarray::ArrayD;

use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::nn::init;
use crate::tensor::Tensor;

/// A trainable embedding: integer ids of any shape to rows of the param `embedding`
/// `(num_embeddings, features)`; the output has shape `ids.shape() + [features]`.
/// Its gradient is a scatter-add: rows never looked up get exactly zero.
/// Flax: `nn.Embed`; PyTorch: `nn.Embedding`. Initialised normal with standard deviation
/// `1/sqrt(features)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Embed {
    /// The number of ids (the vocabulary size).
    pub num_embeddings: usize,
    /// The width of each row.
    pub features: usize,
}

impl Embed {
    /// A table of `num_embeddings` rows of width `features`.
    #[must_use]
    pub fn new(num_embeddings: usize, features: usize) -> Self {
        Embed {
            num_embeddings,
            features,
        }
    }
}

impl<A: Float> Module<A> for Embed {
    type Input = ArrayD<usize>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Embed"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, ids: &ArrayD<usize>) -> Result<Tensor<A>> {
        let stddev = 1.0 / (self.features.max(1) as f64).sqrt();
        let table = scope.param(
            "embedding",
            &[self.num_embeddings, self.features],
            init::normal(stddev),
        )?;
        table.gather_rows(ids)
    }
}
