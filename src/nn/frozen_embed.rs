//! `FrozenEmbed`: a fixed lookup table held outside `params`.

use ndarray::ArrayD;

use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::nn::init;
use crate::tensor::Tensor;

/// A fixed embedding (pretrained vectors, a positional table): like [`Embed`](super::Embed)
/// but the table `embedding` lives in a non-params collection (`"state"` by default), so it
/// is read as a constant, gets no gradient entry, and no optimizer can move it.
/// PyTorch: a table kept with `register_buffer`; Flax: `self.variable('state', ...)`.
///
/// (A "fixed" table declared in `params`, as a well-known article on porting
/// `register_buffer` to Flax does, *is* differentiated and trained.)
#[derive(Debug, Clone, PartialEq)]
pub struct FrozenEmbed {
    /// The number of ids.
    pub num_embeddings: usize,
    /// The width of each row.
    pub features: usize,
    /// The collection that holds the table.
    pub collection: &'static str,
}

impl FrozenEmbed {
    /// A table of `num_embeddings` rows of width `features` in the `"state"` collection,
    /// initialised standard normal (load real vectors with `Variables::insert`).
    #[must_use]
    pub fn new(num_embeddings: usize, features: usize) -> Self {
        FrozenEmbed {
            num_embeddings,
            features,
            collection: "state",
        }
    }
}

impl<A: Float> Module<A> for FrozenEmbed {
    type Input = ArrayD<usize>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "FrozenEmbed"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, ids: &ArrayD<usize>) -> Result<Tensor<A>> {
        let table = scope.variable(
            self.collection,
            "embedding",
            &[self.num_embeddings, self.features],
            init::normal(1.0),
        )?;
        table.value().gather_rows(ids)
    }
}
