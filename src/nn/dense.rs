//! `Dense`: `y = x · kernel + bias`.

use crate::error::{Error, Result};
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::nn::init;
use crate::tensor::Tensor;

/// A fully connected layer, `y = x · kernel + bias`, with `kernel` of shape `(in, features)`
/// (the transpose of PyTorch's `nn.Linear.weight`) and `bias` of shape `(features)`.
/// `in` is the input's last dimension; leading dimensions are kept.
/// Flax: `nn.Dense(features)`; PyTorch: `nn.Linear(in, features)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Output features.
    pub features: usize,
    /// Whether to add a bias.
    pub use_bias: bool,
}

impl Dense {
    /// A layer with `features` outputs, LeCun-normal kernel and zero bias (Flax's defaults).
    #[must_use]
    pub fn new(features: usize) -> Self {
        Dense {
            features,
            use_bias: true,
        }
    }

    /// The same layer with no bias.
    #[must_use]
    pub fn without_bias(self) -> Self {
        Dense {
            use_bias: false,
            ..self
        }
    }
}

impl<A: Float> Module<A> for Dense {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Dense"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let Some((&inputs, leading)) = x.shape().split_last() else {
            return Err(Error::invalid(
                "Dense",
                x.shape(),
                "expected at least one dimension",
            ));
        };
        let kernel = scope.param("kernel", &[inputs, self.features], init::lecun_normal())?;
        let rows: usize = leading.iter().product();
        let x = x.reshape(&[rows, inputs])?;
        let y = if self.use_bias {
            let bias = scope.param("bias", &[self.features], init::zeros())?;
            x.linear(&kernel, &bias)?
        } else {
            x.matmul(&kernel)?
        };
        let mut out_shape = leading.to_vec();
        out_shape.push(self.features);
        y.reshape(&out_shape)
    }
}
