//! Max and average pooling over NHWC inputs: the loops of the `max_pool` and `avg_pool` ops
//! (src/ops/pool.rs), forward and backward, on slices.
//!
//! Each output pixel reads the window's input pixels, all channels at once (NHWC keeps them
//! contiguous), so the loops run along channels. Images are split over the threads in chunks
//! ([`chunks`]): windows never cross images.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::float::Float;
use crate::kernels::chunks::{self, split_rows};
use crate::kernels::path::KernelPath;
use crate::kernels::simd::vectorized_on;
use crate::kernels::window::WindowAxis;

/// Whether the windows along `axis` read each input position exactly once: side by side
/// (stride = window, no dilation), so that no two windows read one position, and with as
/// many taps inside the input in all as it has positions. Rarer tilings (one output, say)
/// answer `false`: the answer is safe, not exact. The once-only gradient pass relies on it
/// for soundness, so it is checked here, beside that pass, rather than trusted from
/// elsewhere.
pub(crate) fn tiles(axis: &WindowAxis) -> bool {
    axis.stride == axis.window
        && axis.dilation == 1
        && (0..axis.output)
            .map(|o| axis.inside(o).len())
            .sum::<usize>()
            == axis.input
}

/// The output of a pooling over `shape` (NHWC) with `axes`: `(batch, out rows, out columns,
/// channels)`.
pub(crate) fn output_shape(shape: &[usize], [rows, cols]: [WindowAxis; 2]) -> Vec<usize> {
    vec![shape[0], rows.output, cols.output, shape[3]]
}

/// Max pooling of `xs` (NHWC `shape`, standard layout) with `axes`: each output element and
/// the index of its window's tap that won (`u32::MAX` for a window wholly in padding).
/// Ties: the first tap in row-major order; a NaN wins and stays.
pub(crate) fn max_pool_forward<A: Float>(
    xs: &[A],
    shape: &[usize],
    axes: [WindowAxis; 2],
) -> (Vec<A>, Vec<u32>) {
    let channels = shape[3];
    let len: usize = output_shape(shape, axes).iter().product();
    let mut values = vec![A::neg_infinity(); len];
    // For each output element, the tap of its window that won (`NO_TAP`: only padding).
    // A 32-bit index beside 32-bit floats keeps the comparison loop vectorised.
    let mut won = vec![NO_TAP; len];
    let (image_in, image_out) = (xs.len() / shape[0].max(1), len / shape[0].max(1));
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
    (values, won)
}

/// Max pooling's VJP: the input's gradient (NHWC `shape`, in order) from the output's `gs`
/// and the winners of [`max_pool_forward`].
pub(crate) fn max_pool_backward<A: Float>(
    shape: &[usize],
    axes: [WindowAxis; 2],
    won: &[u32],
    gs: &[A],
) -> Vec<A> {
    if axes.iter().all(tiles) {
        route_max_gradient::<A, true>(shape, axes, won, gs)
    } else {
        route_max_gradient::<A, false>(shape, axes, won, gs)
    }
}

/// The values of `ts` (NHWC `shape`, standard layout) at the winners of
/// [`max_pool_forward`], in the output's order: max pooling's JVP, and the transpose of
/// [`max_pool_backward`] (what a recorded backward pass differentiates it by). One thread:
/// higher-order passes are not on the training step's path.
pub(crate) fn max_pool_gather<A: Float>(
    shape: &[usize],
    axes: [WindowAxis; 2],
    won: &[u32],
    ts: &[A],
) -> Vec<A> {
    let channels = shape[3];
    let mut out = vec![A::zero(); won.len()];
    for_each_window(shape[0], axes, channels, |o, window| {
        window.for_each_tap(|index, tap| {
            for c in 0..channels {
                if won[o + c] == index {
                    out[o + c] = ts[tap + c];
                }
            }
        });
    });
    out
}

/// Average pooling of `xs` (NHWC `shape`, standard layout) with `axes`: the sum of each
/// window times `scale` (`1 / window size`: padding counts as zeros).
pub(crate) fn avg_pool_forward<A: Float>(
    xs: &[A],
    shape: &[usize],
    axes: [WindowAxis; 2],
    scale: A,
) -> Vec<A> {
    let channels = shape[3];
    let len: usize = output_shape(shape, axes).iter().product();
    let mut values = vec![A::zero(); len];
    let (image_in, image_out) = (xs.len() / shape[0].max(1), len / shape[0].max(1));
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
    values
}

/// Average pooling's VJP: the input's gradient (NHWC `shape`, in order) from the output's
/// `gs`, each tap of each window receiving the window's gradient times `scale`.
pub(crate) fn avg_pool_backward<A: Float>(
    shape: &[usize],
    axes: [WindowAxis; 2],
    gs: &[A],
    scale: A,
) -> Vec<A> {
    if axes.iter().all(tiles) {
        spread_mean_gradient::<A, true>(shape, axes, gs, scale)
    } else {
        spread_mean_gradient::<A, false>(shape, axes, gs, scale)
    }
}

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

/// An input gradient written by images in chunks over the threads: `pass(path, images, dxs)`
/// writes the gradient of `images`, `dxs` being their part of the whole, with [`add_to`]
/// at every tap of every window ([`for_each_window`]).
/// Without `ONCE` the part is zeroed first and windows add to it; with `ONCE` the windows
/// tile the input ([`tiles`]), so each element lies in exactly one window and is
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
    // SAFETY: without `ONCE`, all were zeroed first; with `ONCE` (only when both axes pass
    // [`tiles`], checked in this file) each element lies in exactly one window, and every
    // pass of this file writes each tap of each window.
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
