//! `Conv`: a 2-D convolution over NHWC inputs, Flax's `nn.Conv`.

use crate::error::Result;
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::nn::init;
use crate::ops::{ConvOptions, Padding};
use crate::tensor::Tensor;

/// A 2-D convolution, `y = conv2d(x, kernel) + bias`, over inputs `(batch, height, width,
/// channels)`, with `kernel` of shape `(kh, kw, channels / groups, features)` (HWIO) and
/// `bias` of shape `(features)`. Flax: `nn.Conv(features, kernel_size)` with the same
/// defaults (stride 1, `SAME`, LeCun-normal kernel, zero bias); PyTorch:
/// `nn.Conv2d(channels, features, kernel_size)`, whose `(out, in, kh, kw)` weight is this
/// kernel transposed (see [`checkpoint`](crate::checkpoint)).
///
/// ```
/// use tapegrad::nn::Conv;
/// use tapegrad::{ModuleExt, Padding, Tensor};
/// let conv = Conv::new(8, [3, 3]).strides([2, 2]);
/// let x = Tensor::from_vec(&[2, 6, 6, 3], vec![0.5f64; 216])?;
/// let variables = conv.init(0, &x)?;
/// assert_eq!(variables.get("params/kernel").unwrap().shape(), &[3, 3, 3, 8]);
/// let (y, _) = conv.apply(&variables, &x, &Default::default())?;
/// assert_eq!(y.shape(), &[2, 3, 3, 8]); // SAME, stride 2: ceil(6 / 2)
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Conv {
    /// Output channels.
    pub features: usize,
    /// The window's height and width.
    pub kernel_size: [usize; 2],
    /// Strides, padding, dilation and groups.
    pub options: ConvOptions,
    /// Whether to add a bias.
    pub use_bias: bool,
}

impl Conv {
    /// `features` output channels with a `kernel_size` window; Flax's defaults otherwise.
    #[must_use]
    pub fn new(features: usize, kernel_size: [usize; 2]) -> Self {
        Conv {
            features,
            kernel_size,
            options: ConvOptions::default(),
            use_bias: true,
        }
    }

    /// The same layer with other strides.
    #[must_use]
    pub fn strides(mut self, strides: [usize; 2]) -> Self {
        self.options.strides = strides;
        self
    }

    /// The same layer with other padding.
    #[must_use]
    pub fn padding(mut self, padding: Padding) -> Self {
        self.options.padding = padding;
        self
    }

    /// The same layer with a dilated kernel (Flax's `kernel_dilation`).
    #[must_use]
    pub fn dilation(mut self, dilation: [usize; 2]) -> Self {
        self.options.dilation = dilation;
        self
    }

    /// The same layer in `groups` feature groups (Flax's `feature_group_count`;
    /// `groups = channels` is depthwise).
    #[must_use]
    pub fn groups(mut self, groups: usize) -> Self {
        self.options.groups = groups;
        self
    }

    /// The same layer with no bias (as before a BatchNorm, whose mean subtraction cancels it).
    #[must_use]
    pub fn without_bias(self) -> Self {
        Conv {
            use_bias: false,
            ..self
        }
    }
}

impl<A: Float> Module<A> for Conv {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Conv"
    }

    fn forward(&self, scope: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let channels = x.shape().get(3).copied().unwrap_or(0);
        let per_group = channels / self.options.groups.max(1);
        let [kh, kw] = self.kernel_size;
        let shape = [kh, kw, per_group, self.features];
        let kernel = scope.param("kernel", &shape, init::lecun_normal())?;
        if !self.use_bias {
            return x.conv2d(&kernel, &self.options);
        }
        let bias = scope.param("bias", &[self.features], init::zeros())?;
        x.conv2d_with_bias(&kernel, &bias, &self.options)
    }
}
