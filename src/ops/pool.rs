//! Max and average pooling over NHWC inputs, each VJP beside its forward.
//!
//! Each output pixel reads the window's input pixels, all channels at once (NHWC keeps them
//! contiguous), so the loops run along channels.

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::float::Float;
use crate::ops::window::{Padding, WindowAxis, require_nhwc, window_axes};
use crate::shape::{standard_layout, standard_layout_shared};
use crate::tensor::{Tensor, record_one};

/// For every output pixel `(n, i, j)`, in order, calls `visit(output offset, taps)` with
/// the offsets (in elements) of the input pixels its window reads, row-major within the
/// window. The taps go into a buffer reused for every pixel: no allocation per pixel.
fn for_each_window(
    batch: usize,
    [rows, cols]: [WindowAxis; 2],
    channels: usize,
    mut visit: impl FnMut(usize, &[usize]),
) {
    let mut taps = Vec::with_capacity(rows.window * cols.window);
    let mut out = 0;
    for n in 0..batch {
        for i in 0..rows.output {
            for j in 0..cols.output {
                taps.clear();
                for r in (0..rows.window).filter_map(|u| rows.source(i, u)) {
                    for c in (0..cols.window).filter_map(|v| cols.source(j, v)) {
                        taps.push(((n * rows.input + r) * cols.input + c) * channels);
                    }
                }
                visit(out * channels, &taps);
                out += 1;
            }
        }
    }
}

/// The winner of a window that lies entirely in padding: none.
const NO_TAP: u32 = u32::MAX;

/// One tap of max pooling over a pixel's channels: where `row` beats the best so far,
/// it becomes the best and `index` the winner. Strictly greater, so the first maximum stays
/// (ties: the first tap in row-major order); a NaN wins and stays. Selects, not branches:
/// which element wins is data, and unpredictable.
#[inline(always)]
fn max_into<A: Float>(best: &mut [A], won: &mut [u32], row: &[A], index: u32) {
    for ((b, w), &v) in best.iter_mut().zip(won.iter_mut()).zip(row) {
        #[allow(clippy::eq_op)] // `x != x` is the NaN test, kept branch-free
        let better = v > *b || (v != v && *b == *b);
        *b = if better { v } else { *b };
        *w = if better { index } else { *w };
    }
}

fn output_shape(shape: &[usize], [rows, cols]: [WindowAxis; 2]) -> Vec<usize> {
    vec![shape[0], rows.output, cols.output, shape[3]]
}

impl<A: Float> Tensor<A> {
    /// Max pooling of an NHWC input with a `window`, `strides` and `padding` (padding never
    /// wins: it counts as −∞, as in Flax). Flax: `nn.max_pool(x, window, strides, padding)`;
    /// PyTorch: `F.max_pool2d` on NCHW.
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
        let (shape, channels) = (self.shape().to_vec(), self.shape()[3]);
        let x = standard_layout_shared(self.shared_value());
        let xs = x.as_slice().expect("standard layout");
        let out_shape = output_shape(&shape, axes);
        let len: usize = out_shape.iter().product();
        let mut values = vec![A::neg_infinity(); len];
        // For each output element, the tap of its window that won (`NO_TAP`: only padding).
        // A 32-bit index beside 32-bit floats keeps the comparison loop vectorised.
        let mut won = vec![NO_TAP; len];
        crate::kernels::simd::vectorized(
            #[inline(always)]
            || {
                for_each_window(shape[0], axes, channels, |out, taps| {
                    let (values, won) = (
                        &mut values[out..out + channels],
                        &mut won[out..out + channels],
                    );
                    let Some((&first, rest)) = taps.split_first() else {
                        return; // a window entirely in padding: −∞, and no gradient
                    };
                    // The first tap is the best so far, even if it is −∞.
                    values.copy_from_slice(&xs[first..first + channels]);
                    won.fill(0);
                    for (index, &tap) in (1..).zip(rest) {
                        max_into(values, won, &xs[tap..tap + channels], index);
                    }
                });
            },
        );
        let value = ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("the output's shape");
        Ok(record_one("max_pool", self, value, move |g| {
            let g = standard_layout(g);
            let gs = g.as_slice().expect("standard layout");
            let mut dx = ArrayD::zeros(IxDyn(&shape));
            let dxs = dx.as_slice_mut().expect("a new array is contiguous");
            for_each_window(shape[0], axes, channels, |out, taps| {
                for (c, (&tap, &gradient)) in won[out..out + channels]
                    .iter()
                    .zip(&gs[out..out + channels])
                    .enumerate()
                {
                    if tap != NO_TAP {
                        dxs[taps[tap as usize] + c] += gradient;
                    }
                }
            });
            dx
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
        let (shape, channels) = (self.shape().to_vec(), self.shape()[3]);
        let x = standard_layout_shared(self.shared_value());
        let xs = x.as_slice().expect("standard layout");
        let out_shape = output_shape(&shape, axes);
        let scale = A::of(1.0 / (window[0] * window[1]) as f64);
        let mut values = vec![A::zero(); out_shape.iter().product()];
        for_each_window(shape[0], axes, channels, |out, taps| {
            for &tap in taps {
                for (acc, &v) in values[out..out + channels]
                    .iter_mut()
                    .zip(&xs[tap..tap + channels])
                {
                    *acc += v;
                }
            }
            values[out..out + channels]
                .iter_mut()
                .for_each(|v| *v *= scale);
        });
        let value = ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("the output's shape");
        Ok(record_one("avg_pool", self, value, move |g| {
            let g = standard_layout(g);
            let gs = g.as_slice().expect("standard layout");
            let mut dx = ArrayD::zeros(IxDyn(&shape));
            let dxs = dx.as_slice_mut().expect("a new array is contiguous");
            for_each_window(shape[0], axes, channels, |out, taps| {
                for &tap in taps {
                    for (d, &g) in dxs[tap..tap + channels]
                        .iter_mut()
                        .zip(&gs[out..out + channels])
                    {
                        *d += g * scale;
                    }
                }
            });
            dx
        }))
    }
}
