//! Max and average pooling over NHWC inputs, each VJP beside its forward.
//!
//! Each output pixel reads the window's input pixels, all channels at once (NHWC keeps them
//! contiguous), so the loops run along channels.

use std::mem::MaybeUninit;
use std::ops::Range;

use ndarray::{ArrayD, IxDyn};

use crate::error::Result;
use crate::float::Float;
use crate::kernels::chunks::{self, split_rows};
use crate::kernels::simd::vectorized_on;
use crate::ops::window::{Padding, WindowAxis, require_nhwc, window_axes};
use crate::runtime::KernelPath;
use crate::shape::{standard_layout, standard_layout_shared};
use crate::tensor::{Tensor, record_one};

/// The part of one output pixel's window that lies inside the input: a rectangle of
/// `rows × cols` taps, the first at element `first`, the next row `row_stride` further.
#[derive(Clone, Copy)]
struct Window {
    first: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    channels: usize,
}

impl Window {
    /// Calls `visit(index, offset)` for each input pixel the window reads, row-major: its
    /// index among them and its offset in elements.
    #[inline(always)]
    fn for_each_tap(self, mut visit: impl FnMut(u32, usize)) {
        let mut index = 0;
        for r in 0..self.rows {
            let row = self.first + r * self.row_stride;
            for c in 0..self.cols {
                visit(index, row + c * self.channels);
                index += 1;
            }
        }
    }
}

/// For every output pixel `(n, i, j)` of `batch` images, in order, calls `visit(output
/// offset, window)`, offsets from the first image's (so a run over some of a batch's images
/// passes its own parts of the input and output). Inlined into its caller, so that under
/// [`vectorized_on`] the whole pass is compiled for the kernel path in force.
#[inline(always)]
fn for_each_window(
    batch: usize,
    [rows, cols]: [WindowAxis; 2],
    channels: usize,
    mut visit: impl FnMut(usize, Window),
) {
    let row_stride = cols.input * channels;
    let acrosses: Vec<_> = (0..cols.output).map(|j| cols.inside(j)).collect();
    let mut out = 0;
    for n in 0..batch {
        for i in 0..rows.output {
            let taps_down = rows.inside(i);
            for (j, taps_across) in acrosses.iter().enumerate() {
                // Pooling windows are not dilated: taps inside are neighbouring pixels.
                let (top, left) = (
                    (i * rows.stride + taps_down.start).saturating_sub(rows.pad_before),
                    (j * cols.stride + taps_across.start).saturating_sub(cols.pad_before),
                );
                let window = Window {
                    first: ((n * rows.input + top) * cols.input + left) * channels,
                    rows: taps_down.len(),
                    cols: taps_across.len(),
                    row_stride,
                    channels,
                };
                visit(out * channels, window);
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
        // `x != x` is the NaN test; `|` and `&`, not `||` and `&&`, so that nothing short-
        // circuits into a branch.
        #[allow(clippy::eq_op)]
        let better = (v > *b) | ((v != v) & (*b == *b));
        *b = if better { v } else { *b };
        *w = if better { index } else { *w };
    }
}

/// An input gradient written by images in chunks over the pool: `pass(path, images, dxs)`
/// writes the gradient of `images`, `dxs` being their part of the whole, with [`add_to`].
/// Without `ONCE` the part is zeroed first and windows add to it; with `ONCE` the windows
/// tile the input ([`WindowAxis::tiles`]), so each element lies in exactly one window and is
/// written there once, with no zeroing and no read (`0 + g`, the bits the sum would give).
fn input_gradient<A: Float, const ONCE: bool>(
    shape: &[usize],
    pass: impl Fn(KernelPath, Range<usize>, &mut [MaybeUninit<A>]) + Sync,
) -> Vec<A> {
    let len = shape.iter().product();
    let image_in = len / shape[0].max(1);
    let mut dx = Vec::with_capacity(len);
    let spare = &mut dx.spare_capacity_mut()[..len];
    let items = chunks::once(move |chunks: &[Range<usize>]| -> Vec<_> {
        let parts = split_rows(spare, image_in, chunks);
        chunks.iter().cloned().zip(parts).collect()
    });
    chunks::for_each_chunk(shape[0], image_in, items, |path, (images, dxs)| {
        if !ONCE {
            dxs.fill(MaybeUninit::new(A::zero()));
        }
        pass(path, images, dxs);
    });
    // SAFETY: with `ONCE` each element lies in exactly one window and was written there;
    // without, all were zeroed first.
    unsafe { dx.set_len(len) };
    dx
}

/// `d += v` in an [`input_gradient`] pass: `d = 0 + v` when `ONCE` (never read).
///
/// # Safety
/// Without `ONCE`, `d` was initialised (zeroed by [`input_gradient`]).
#[inline(always)]
unsafe fn add_to<A: Float, const ONCE: bool>(d: &mut MaybeUninit<A>, v: A) {
    // SAFETY: the caller's contract.
    let before = if ONCE {
        A::zero()
    } else {
        unsafe { d.assume_init_read() }
    };
    d.write(before + v);
}

/// Max pooling's VJP: the input's gradient, where each tap of each window takes the
/// gradient of the channels it won. A select along the channels (vectorised) rather than a
/// scatter to the winners; adding the zeros changes no sum, so the values are those of the
/// scatter.
fn route_max_gradient<A: Float, const ONCE: bool>(
    shape: &[usize],
    axes: [WindowAxis; 2],
    won: &[u32],
    gs: &[A],
) -> Vec<A> {
    let channels = shape[3];
    let image_out = won.len() / shape[0].max(1);
    input_gradient::<A, ONCE>(shape, |path, images, dxs| {
        let outputs = images.start * image_out..images.end * image_out;
        let (won, gs) = (&won[outputs.clone()], &gs[outputs]);
        vectorized_on(
            path,
            #[inline(always)]
            || {
                for_each_window(images.len(), axes, channels, |out, window| {
                    let (won, gs) = (&won[out..out + channels], &gs[out..out + channels]);
                    window.for_each_tap(|index, tap| {
                        for ((d, &winner), &gradient) in
                            dxs[tap..tap + channels].iter_mut().zip(won).zip(gs)
                        {
                            let g = if winner == index { gradient } else { A::zero() };
                            // SAFETY: `input_gradient` zeroed `dxs` unless `ONCE`.
                            unsafe { add_to::<A, ONCE>(d, g) };
                        }
                    });
                });
            },
        );
    })
}

/// Average pooling's VJP: each tap of each window receives the window's gradient times
/// `scale` (`1 / window size`, padding counted).
fn spread_mean_gradient<A: Float, const ONCE: bool>(
    shape: &[usize],
    axes: [WindowAxis; 2],
    gs: &[A],
    scale: A,
) -> Vec<A> {
    let channels = shape[3];
    let image_out = gs.len() / shape[0].max(1);
    input_gradient::<A, ONCE>(shape, |path, images, dxs| {
        let gs = &gs[images.start * image_out..images.end * image_out];
        vectorized_on(
            path,
            #[inline(always)]
            || {
                for_each_window(images.len(), axes, channels, |out, window| {
                    let gs = &gs[out..out + channels];
                    window.for_each_tap(|_, tap| {
                        for (d, &g) in dxs[tap..tap + channels].iter_mut().zip(gs) {
                            // SAFETY: `input_gradient` zeroed `dxs` unless `ONCE`.
                            unsafe { add_to::<A, ONCE>(d, g * scale) };
                        }
                    });
                });
            },
        );
    })
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
        let (image_in, image_out) = (xs.len() / shape[0].max(1), len / shape[0].max(1));
        // Images in chunks over the pool: windows never cross images.
        let (all_values, all_won) = (&mut values[..], &mut won[..]);
        let items = chunks::once(move |chunks: &[Range<usize>]| -> Vec<_> {
            let values = split_rows(all_values, image_out, chunks);
            let won = split_rows(all_won, image_out, chunks);
            chunks.iter().cloned().zip(values).zip(won).collect()
        });
        chunks::for_each_chunk(
            shape[0],
            image_in,
            items,
            |path, ((images, values), won)| {
                let xs = &xs[images.start * image_in..images.end * image_in];
                vectorized_on(
                    path,
                    #[inline(always)]
                    || {
                        for_each_window(images.len(), axes, channels, |out, window| {
                            let (values, won) = (
                                &mut values[out..out + channels],
                                &mut won[out..out + channels],
                            );
                            // The first tap is the best so far, even if it is −∞; a window
                            // entirely in padding keeps −∞ and `NO_TAP`, and gets no gradient.
                            window.for_each_tap(|index, tap| {
                                let row = &xs[tap..tap + channels];
                                if index == 0 {
                                    values.copy_from_slice(row);
                                    won.fill(0);
                                } else {
                                    max_into(values, won, row, index);
                                }
                            });
                        });
                    },
                );
            },
        );
        let value = ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("the output's shape");
        Ok(record_one("max_pool", self, value, move |g| {
            let g = standard_layout(g);
            let gs = g.as_slice().expect("standard layout");
            let dx = if axes.iter().all(WindowAxis::tiles) {
                route_max_gradient::<A, true>(&shape, axes, &won, gs)
            } else {
                route_max_gradient::<A, false>(&shape, axes, &won, gs)
            };
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
        let (shape, channels) = (self.shape().to_vec(), self.shape()[3]);
        let x = standard_layout_shared(self.shared_value());
        let xs = x.as_slice().expect("standard layout");
        let out_shape = output_shape(&shape, axes);
        let scale = A::of(1.0 / (window[0] * window[1]) as f64);
        let len: usize = out_shape.iter().product();
        let mut values = vec![A::zero(); len];
        let (image_in, image_out) = (xs.len() / shape[0].max(1), len / shape[0].max(1));
        // Images in chunks over the pool, as max pooling's.
        chunks::for_each_chunk_mut(&mut values, image_out, |path, images, values| {
            let xs = &xs[images.start * image_in..images.end * image_in];
            vectorized_on(
                path,
                #[inline(always)]
                || {
                    for_each_window(images.len(), axes, channels, |out, window| {
                        let sums = &mut values[out..out + channels];
                        window.for_each_tap(|_, tap| {
                            for (sum, &v) in sums.iter_mut().zip(&xs[tap..tap + channels]) {
                                *sum += v;
                            }
                        });
                        sums.iter_mut().for_each(|v| *v *= scale);
                    });
                },
            );
        });
        let value = ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("the output's shape");
        Ok(record_one("avg_pool", self, value, move |g| {
            let g = standard_layout(g);
            let gs = g.as_slice().expect("standard layout");
            let dx = if axes.iter().all(WindowAxis::tiles) {
                spread_mean_gradient::<A, true>(&shape, axes, gs, scale)
            } else {
                spread_mean_gradient::<A, false>(&shape, axes, gs, scale)
            };
            ArrayD::from_shape_vec(IxDyn(&shape), dx).expect("the input's shape")
        }))
    }
}
