//! Pooling and flattening as modules without variables, for [`Sequential`](crate::nn::Sequential)
//! (as functions they are [`Tensor::max_pool`], [`Tensor::avg_pool`] and `mean_axes`).

use crate::error::{Error, Result};
use crate::float::Float;
use crate::module::scope::{Module, Scope};
use crate::ops::Padding;
use crate::tensor::Tensor;

/// Max or average pooling over NHWC inputs. PyTorch: `nn.MaxPool2d` / `nn.AvgPool2d`, whose
/// conventions it follows: the stride is the window unless set, and there is no padding.
/// Flax's functions `nn.max_pool` / `nn.avg_pool` default to a stride of 1 instead: for
/// theirs, set `.strides([1, 1])`. Settings are named as [`Conv`](crate::nn::Conv)'s are.
///
/// ```
/// use tapegrad::nn::Pool;
/// use tapegrad::{ModuleExt, Padding, Tensor};
/// let x = Tensor::from_vec(&[1, 4, 4, 1], (0..16).map(f64::from).collect())?;
/// let (y, _) = Pool::max([2, 2]).apply(&Default::default(), &x, &Default::default())?;
/// assert_eq!(y.shape(), &[1, 2, 2, 1]); // windows side by side: stride 2
/// let flax = Pool::max([2, 2]).strides([1, 1]).padding(Padding::Same);
/// assert_eq!(flax.apply(&Default::default(), &x, &Default::default())?.0.shape(), &[1, 4, 4, 1]);
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    /// Max or average.
    pub kind: PoolKind,
    /// The window's height and width.
    pub window: [usize; 2],
    /// Steps between windows.
    pub strides: [usize; 2],
    /// How the input is padded.
    pub padding: Padding,
}

/// What a [`Pool`] computes over each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    /// The maximum.
    Max,
    /// The mean, padding counted as zeros.
    Average,
}

impl Pool {
    /// Max pooling with non-overlapping windows (stride = window, VALID): PyTorch's
    /// `nn.MaxPool2d(k)`.
    #[must_use]
    pub fn max(window: [usize; 2]) -> Self {
        Pool {
            kind: PoolKind::Max,
            window,
            strides: window,
            padding: Padding::Valid,
        }
    }

    /// Average pooling with non-overlapping windows.
    #[must_use]
    pub fn average(window: [usize; 2]) -> Self {
        Pool {
            kind: PoolKind::Average,
            ..Pool::max(window)
        }
    }

    /// The same pooling with other strides.
    #[must_use]
    pub fn strides(self, strides: [usize; 2]) -> Self {
        Pool { strides, ..self }
    }

    /// The same pooling with other padding.
    #[must_use]
    pub fn padding(self, padding: Padding) -> Self {
        Pool { padding, ..self }
    }
}

impl<A: Float> Module<A> for Pool {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "MaxPool",
            PoolKind::Average => "AvgPool",
        }
    }

    fn forward(&self, _: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        match self.kind {
            PoolKind::Max => x.max_pool(self.window, self.strides, self.padding),
            PoolKind::Average => x.avg_pool(self.window, self.strides, self.padding),
        }
    }
}

/// The mean over height and width: `(batch, height, width, channels)` to
/// `(batch, channels)`. Flax: `x.mean(axis=(1, 2))`; PyTorch: `nn.AdaptiveAvgPool2d(1)` then
/// flatten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalAvgPool;

impl<A: Float> Module<A> for GlobalAvgPool {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "GlobalAvgPool"
    }

    fn forward(&self, _: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        if x.ndim() != 4 {
            return Err(Error::invalid(
                "GlobalAvgPool",
                x.shape(),
                "expected an input (batch, height, width, channels)",
            ));
        }
        x.mean_axes(&[1, 2], false)
    }
}

/// Flattens `(batch, height, width, channels)` to `(batch, height · width · channels)`.
///
/// The order of the flattened features matters when weights come from PyTorch: its
/// `nn.Flatten` sees NCHW, so a following `nn.Linear` expects features in `(channels,
/// height, width)` order, while flattening NHWC gives `(height, width, channels)`. The same
/// weights in the wrong order give wrong logits with no error: the classic porting bug.
/// [`Flatten::channels_first`] flattens in PyTorch's order, so imported `Linear` weights work
/// unchanged; [`Flatten::new`] flattens in memory order, as Flax's `x.reshape((B, -1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flatten {
    /// Whether to order the features `(channels, height, width)`, as PyTorch does.
    pub channels_first: bool,
}

impl Flatten {
    /// Flax's order: `(height, width, channels)`.
    #[must_use]
    pub fn new() -> Self {
        Flatten::default()
    }

    /// PyTorch's order: `(channels, height, width)`.
    #[must_use]
    pub fn channels_first() -> Self {
        Flatten {
            channels_first: true,
        }
    }
}

impl<A: Float> Module<A> for Flatten {
    type Input = Tensor<A>;
    type Output = Tensor<A>;

    fn kind(&self) -> &'static str {
        "Flatten"
    }

    fn forward(&self, _: &mut Scope<'_, A>, x: &Tensor<A>) -> Result<Tensor<A>> {
        let Some((&batch, rest)) = x.shape().split_first() else {
            return Err(Error::invalid(
                "Flatten",
                x.shape(),
                "expected a batch axis",
            ));
        };
        let features = rest.iter().product();
        if self.channels_first && x.ndim() == 4 {
            return x.permute(&[0, 3, 1, 2])?.reshape(&[batch, features]);
        }
        x.reshape(&[batch, features])
    }
}
