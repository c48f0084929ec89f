//! Max and average pooling over NHWC inputs: their checks and their nodes on the tape; the
//! loops, forward and backward, are in src/kernels/pooling.rs.

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::pooling;
use crate::ops::window::{Padding, require_nhwc, window_axes};
use crate::shape::{element_count, standard_layout, standard_layout_shared};
use crate::tensor::{Tensor, record_one};

impl<A: Float> Tensor<A> {
    /// Max pooling of an NHWC input with a `window`, `strides` and `padding` (padding never
    /// wins: it counts as −∞, as in Flax). Flax: `nn.max_pool(x, window, strides, padding)`,
    /// whose three settings these are, in its order (a convolution's four are a
    /// [`ConvOptions`](crate::ConvOptions), as the fields of Flax's `nn.Conv`); PyTorch:
    /// `F.max_pool2d` on NCHW. The layer, with PyTorch's defaults, is
    /// [`Pool`](crate::nn::Pool).
    ///
    /// Ties: the first maximal element of the window in row-major order gets the whole
    /// gradient (PyTorch's choice; JAX's `reduce_window` picks one too). A NaN in a window
    /// makes its output NaN.
    ///
    /// ```
    /// use tapegrad::{Padding, Tensor};
    /// let x = Tensor::from_vec(&[1, 2, 2, 1], vec![1.0f64, 5.0, 3.0, 2.0])?;
    /// let y = x.max_pool([2, 2], [2, 2], Padding::Valid)?;
    /// assert_eq!(y.value().iter().copied().collect::<Vec<_>>(), [5.0]);
    /// assert!(x.max_pool([3, 3], [1, 1], Padding::Valid).is_err()); // larger than the input
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an input that is not 4-D NHWC,
    /// a window or stride with a 0 or of the wrong length, or a window larger than the padded
    /// input; nothing is recorded.
    pub fn max_pool(
        &self,
        window: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Result<Tensor<A>> {
        require_nhwc("max_pool", self.shape())?;
        let axes = window_axes("max_pool", self.shape(), window, strides, [1, 1], padding)?;
        element_count::<A>("max_pool", &pooling::output_shape(self.shape(), axes))?;
        let shape = self.shape().to_vec();
        let x = standard_layout_shared(self.shared_value());
        let xs = x.as_slice().expect("standard layout");
        let (values, won) = pooling::max_pool_forward(xs, &shape, axes);
        let out_shape = pooling::output_shape(&shape, axes);
        let value = ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("the output's shape");
        Ok(record_one("max_pool", self, value, move |g| {
            let g = standard_layout(g);
            let gs = g.as_slice().expect("standard layout");
            let dx = pooling::max_pool_backward(&shape, axes, &won, gs);
            ArrayD::from_shape_vec(IxDyn(&shape), dx).expect("the input's shape")
        }))
    }

    /// Average pooling of an NHWC input: the mean over each window, padding counted as
    /// zeros (Flax's `nn.avg_pool` and PyTorch's `count_include_pad=True`, both defaults).
    ///
    /// ```
    /// use tapegrad::{Padding, Tensor};
    /// let x = Tensor::from_vec(&[1, 2, 2, 1], vec![1.0f64, 5.0, 3.0, 3.0])?;
    /// let y = x.avg_pool([2, 2], [2, 2], Padding::Valid)?;
    /// assert_eq!(y.value().iter().copied().collect::<Vec<_>>(), [3.0]);
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for an input that is not 4-D NHWC,
    /// a window or stride with a 0 or of the wrong length, or a window larger than the padded
    /// input; nothing is recorded.
    pub fn avg_pool(
        &self,
        window: [usize; 2],
        strides: [usize; 2],
        padding: Padding,
    ) -> Result<Tensor<A>> {
        require_nhwc("avg_pool", self.shape())?;
        let axes = window_axes("avg_pool", self.shape(), window, strides, [1, 1], padding)?;
        element_count::<A>("avg_pool", &pooling::output_shape(self.shape(), axes))?;
        let Some(taps) = window[0].checked_mul(window[1]) else {
            return Err(Error::invalid(
                "avg_pool",
                self.shape(),
                format!("a window of {window:?} has more taps than a count holds"),
            ));
        };
        let shape = self.shape().to_vec();
        let x = standard_layout_shared(self.shared_value());
        let xs = x.as_slice().expect("standard layout");
        let scale = A::of(1.0 / taps as f64);
        let values = pooling::avg_pool_forward(xs, &shape, axes, scale);
        let out_shape = pooling::output_shape(&shape, axes);
        let value = ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("the output's shape");
        Ok(record_one("avg_pool", self, value, move |g| {
            let g = standard_layout(g);
            let gs = g.as_slice().expect("standard layout");
            let dx = pooling::avg_pool_backward(&shape, axes, gs, scale);
            ArrayD::from_shape_vec(IxDyn(&shape), dx).expect("the input's shape")
        }))
    }
}
