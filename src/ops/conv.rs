//! 2-D convolution in Flax's layout (input NHWC, kernel HWIO), as a matrix product.
//!
//! Cross-correlation, as Flax and PyTorch compute it (no kernel flip):
//! `y[n, i, j, o] = Σ_{u, v, c} x_pad[n, i·s + u·d, j·s + v·d, g·C_g + c] · k[u, v, c, o]`,
//! `g` the group of output channel `o`.
//!
//! Lowered onto the product the MLP uses (im2col): each output position's receptive field
//! becomes one row of a patch matrix `P (N·OH·OW, KH·KW·C_g)` (zeros where the window reads
//! padding), and the kernel of a group is a `(KH·KW·C_g, O_g)` matrix, so `Y = P · K`. The
//! VJP is the same two products as a matmul's, `dK = Pᵀ · dY` and `dP = dY · Kᵀ`, and `dP`
//! is scattered back onto the input (col2im, adding where windows overlap). NHWC keeps each
//! pixel's channels contiguous, so a patch row is built from `KH·KW` slice copies.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayView2, Axis, IxDyn, s};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::fused::column_sums;
use crate::kernels::gemm;
use crate::ops::window::{Padding, WindowAxis, require_nhwc, window_axes};
use crate::shape::{standard_layout, standard_layout_shared};
use crate::tensor::{Tensor, record};

/// How a convolution slides: strides, padding, kernel dilation and feature groups.
/// Flax: `nn.Conv(strides=…, padding=…, kernel_dilation=…, feature_group_count=…)`; the
/// default is Flax's: stride 1, `SAME`, no dilation, one group.
///
/// ```
/// use tapegrad::{ConvOptions, Padding};
/// let strided = ConvOptions { strides: [2, 2], padding: Padding::Valid, ..ConvOptions::default() };
/// assert_eq!(strided.dilation, [1, 1]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOptions {
    /// Steps between windows along height and width.
    pub strides: [usize; 2],
    /// How the input is padded.
    pub padding: Padding,
    /// Spacing between kernel taps (`2` reads every other pixel): atrous convolution.
    pub dilation: [usize; 2],
    /// Feature groups: input and output channels are split into this many groups, each
    /// convolved on its own (`groups = channels` is a depthwise convolution).
    pub groups: usize,
}

impl Default for ConvOptions {
    fn default() -> Self {
        ConvOptions {
            strides: [1, 1],
            padding: Padding::Same,
            dilation: [1, 1],
            groups: 1,
        }
    }
}

/// The shape of one convolution, checked.
#[derive(Clone, Copy)]
struct Geometry {
    batch: usize,
    channels: usize,
    rows: WindowAxis,
    cols: WindowAxis,
    group_channels: usize,
    group_outputs: usize,
    groups: usize,
}

impl Geometry {
    fn positions(&self) -> usize {
        self.batch * self.rows.output * self.cols.output
    }

    fn patch_len(&self) -> usize {
        self.rows.window * self.cols.window * self.group_channels
    }

    /// Calls `visit(patch row, offset in the row, source, length)` for runs that cover each
    /// element of the patch rows `rows` of group `g` once, in order: offsets in elements.
    /// Along a window row the taps that fall inside the input are consecutive, with padding
    /// before and after them; with one group and no dilation they are also contiguous in the
    /// input (NHWC), so each window row is at most three runs: padding, one slice, padding.
    #[inline]
    fn for_each_run(
        &self,
        g: usize,
        rows: Range<usize>,
        mut visit: impl FnMut(usize, usize, Source, usize),
    ) {
        let (w, c, cg) = (self.cols.input, self.channels, self.group_channels);
        let (kh, kw) = (self.rows.window, self.cols.window);
        let row_len = kw * cg;
        let contiguous = self.groups == 1 && self.cols.dilation == 1;
        self.for_each_position(rows, |at| {
            let across = at.across.clone();
            let pixel =
                |i: usize, j: usize| ((at.image * self.rows.input + i) * w + j) * c + g * cg;
            if contiguous && at.down.len() == kh && across.len() == kw {
                // The whole window inside the input (most positions): `kh` slices of a window
                // row each, `dilation` input rows apart.
                let top = self.rows.source(at.row, 0).expect("inside");
                let left = self.cols.source(at.column, 0).expect("inside");
                let (first, step) = (pixel(top, left), self.rows.dilation * w * c);
                for u in 0..kh {
                    visit(
                        at.patch_row,
                        u * row_len,
                        Source::Input(first + u * step),
                        row_len,
                    );
                }
                return;
            }
            for u in 0..kh {
                let start = u * row_len;
                if across.is_empty() || !at.down.contains(&u) {
                    visit(at.patch_row, start, Source::Padding, row_len);
                    continue;
                }
                if across.start > 0 {
                    visit(at.patch_row, start, Source::Padding, across.start * cg);
                }
                let i = self.rows.source(at.row, u).expect("inside");
                let input = |v: usize| {
                    Source::Input(pixel(i, self.cols.source(at.column, v).expect("inside")))
                };
                if contiguous {
                    let run = across.len() * cg;
                    visit(
                        at.patch_row,
                        start + across.start * cg,
                        input(across.start),
                        run,
                    );
                } else {
                    for v in across.clone() {
                        visit(at.patch_row, start + v * cg, input(v), cg);
                    }
                }
                if across.end < kw {
                    let after = (kw - across.end) * cg;
                    visit(
                        at.patch_row,
                        start + across.end * cg,
                        Source::Padding,
                        after,
                    );
                }
            }
        });
    }

    /// Calls `visit` for the output positions `positions`, in order: one division for the
    /// first, then counting, and each axis's taps inside the input computed once per call.
    #[inline]
    fn for_each_position(&self, positions: Range<usize>, mut visit: impl FnMut(Position<'_>)) {
        let (height, width) = (self.rows.output.max(1), self.cols.output.max(1));
        let downs: Vec<_> = (0..height).map(|o| self.rows.inside(o)).collect();
        let acrosses: Vec<_> = (0..width).map(|o| self.cols.inside(o)).collect();
        let first = positions.start;
        let [mut image, mut row, mut column] = [
            first / (height * width),
            first % (height * width) / width,
            first % width,
        ];
        for patch_row in 0..positions.len() {
            visit(Position {
                patch_row,
                image,
                row,
                column,
                down: &downs[row],
                across: &acrosses[column],
            });
            column += 1;
            if column == width {
                column = 0;
                row += 1;
                if row == height {
                    row = 0;
                    image += 1;
                }
            }
        }
    }

    /// The rows `rows` of group `g`'s patch matrix (im2col), built in `buffer`'s allocation
    /// (grown if need be: one buffer serves every block of a share), with a last column of
    /// ones if `ones` (the bias's column: see [`convolve`]). Every element is written once, a
    /// copy of the input or a zero where the window reads padding, so the buffer is never
    /// zeroed first.
    fn patches<'b, A: Float>(
        &self,
        x: &[A],
        g: usize,
        rows: Range<usize>,
        ones: bool,
        buffer: &'b mut Vec<A>,
    ) -> ArrayView2<'b, A> {
        let len = self.patch_len();
        let (count, stride) = (rows.len(), len + usize::from(ones));
        buffer.clear();
        buffer.reserve(count * stride);
        let out = &mut buffer.spare_capacity_mut()[..count * stride];
        self.for_each_run(g, rows, |row, at, source, run| {
            let to = &mut out[row * stride + at..row * stride + at + run];
            match source {
                Source::Input(from) => copy_run(to, &x[from..from + run]),
                Source::Padding => to.fill(MaybeUninit::new(A::zero())),
            }
        });
        if ones {
            for row in out.chunks_exact_mut(stride) {
                row[len].write(A::one());
            }
        }
        // SAFETY: the runs of `for_each_run` cover each of the `count · len` elements of the
        // patches, and with `ones` the loop above the last column.
        unsafe { buffer.set_len(count * stride) };
        ArrayView2::from_shape((count, stride), &buffer[..]).expect("count · stride elements")
    }

    /// Adds the patch-shaped gradient `dp` of group `g` back onto the input's gradient
    /// (col2im), for the patch rows `rows`: each input element gets the sum over the windows
    /// that read it.
    /// `dx` holds the input's gradient from element `offset` on (the images a share owns).
    fn scatter<A: Float>(
        &self,
        dp: &[A],
        g: usize,
        rows: Range<usize>,
        dx: &mut [A],
        offset: usize,
    ) {
        let len = self.patch_len();
        self.for_each_run(g, rows, |row, tap, source, run| {
            let Source::Input(input) = source else {
                return; // the gradient of padding goes nowhere
            };
            let from = &dp[row * len + tap..row * len + tap + run];
            for (d, &s) in dx[input - offset..input - offset + run]
                .iter_mut()
                .zip(from)
            {
                *d += s;
            }
        });
    }
}

/// One output position, for [`Geometry::for_each_position`]: its row in the patch matrix,
/// its image, output row and column, and its window's offsets that read inside the input
/// down and across.
struct Position<'a> {
    patch_row: usize,
    image: usize,
    row: usize,
    column: usize,
    down: &'a Range<usize>,
    across: &'a Range<usize>,
}

/// What a run of a patch row holds ([`Geometry::for_each_run`]).
#[derive(Clone, Copy)]
enum Source {
    /// The input's elements from this offset on.
    Input(usize),
    /// Zeros: the window reads padding there.
    Padding,
}

/// Copies `from` into the uninitialised `to` (of the same length).
#[inline(always)]
fn copy_run<A: Copy>(to: &mut [MaybeUninit<A>], from: &[A]) {
    for (to, &from) in to.iter_mut().zip(from) {
        to.write(from);
    }
}

/// The op's name on the tape, and in its errors.
const OP: &str = "conv2d";

fn geometry(x: &[usize], k: &[usize], options: &ConvOptions) -> Result<Geometry> {
    require_nhwc(OP, x)?;
    let &[kh, kw, group_channels, outputs] = k else {
        return Err(Error::invalid(
            OP,
            k,
            "expected a kernel (height, width, in_channels / groups, out_channels)",
        ));
    };
    let groups = options.groups;
    let channels = x[3];
    if groups == 0 || group_channels * groups != channels || outputs % groups != 0 {
        return Err(Error::incompatible(
            OP,
            x,
            k,
            format!(
                "the input's {channels} channels must be the kernel's in_channels \
                 ({group_channels}) times the groups ({groups}), and the kernel's \
                 out_channels ({outputs}) a multiple of the groups"
            ),
        ));
    }
    let [rows, cols] = window_axes(
        OP,
        x,
        [kh, kw],
        options.strides,
        options.dilation,
        options.padding,
    )?;
    crate::shape::element_count::<f64>(OP, &[x[0], rows.output, cols.output, outputs])?;
    Ok(Geometry {
        batch: x[0],
        channels,
        rows,
        cols,
        group_channels,
        group_outputs: outputs / groups,
        groups,
    })
}

impl<A: Float> Tensor<A> {
    /// 2-D convolution (cross-correlation) of an NHWC input with an HWIO kernel
    /// `(kh, kw, in / groups, out)`, giving `(batch, out_height, out_width, out)`.
    /// Flax: `jax.lax.conv_general_dilated` with `("NHWC", "HWIO", "NHWC")`; PyTorch:
    /// `F.conv2d` on NCHW with the kernel transposed to `(out, in, kh, kw)`.
    ///
    /// ```
    /// use tapegrad::{ConvOptions, Padding, Tensor};
    /// // A 3×3 image of ones, a 2×2 kernel of ones: each VALID output sums 4 pixels.
    /// let x = Tensor::from_vec(&[1, 3, 3, 1], vec![1.0f64; 9])?;
    /// let k = Tensor::from_vec(&[2, 2, 1, 1], vec![1.0; 4])?;
    /// let valid = ConvOptions { padding: Padding::Valid, ..Default::default() };
    /// let y = x.conv2d(&k, &valid)?;
    /// assert_eq!(y.shape(), &[1, 2, 2, 1]);
    /// assert_eq!(y.value().iter().copied().collect::<Vec<_>>(), [4.0; 4]);
    /// assert_eq!(x.conv2d(&k, &ConvOptions::default())?.shape(), &[1, 3, 3, 1]); // SAME
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an input that is not 4-D NHWC, a stride or dilation of 0, or
    /// a window larger than the padded input; [`Error::IncompatibleShapes`] if the kernel is not
    /// `(kh, kw, in / groups, out)` for this input; [`Error::DifferentTapes`]. Nothing is recorded.
    pub fn conv2d(&self, kernel: &Tensor<A>, options: &ConvOptions) -> Result<Tensor<A>> {
        convolve(self, kernel, None, options)
    }

    /// `conv2d(kernel) + bias` in one node, the bias added inside the product (a row of the
    /// kernel matrix, read by a column of ones: see `convolve`): the fused implementation
    /// [`Conv`](crate::nn::Conv) runs with fusion on (`tests/fusion.rs` and `tests/conv.rs`
    /// check it against `conv2d` then `add`).
    pub(crate) fn conv2d_with_bias(
        &self,
        kernel: &Tensor<A>,
        bias: &Tensor<A>,
        options: &ConvOptions,
    ) -> Result<Tensor<A>> {
        convolve(self, kernel, Some(bias), options)
    }
}

/// Output positions per block: the patch matrix is built and multiplied a block of rows at
/// a time, about 256 K elements each, so that it stays in cache and is never materialised
/// whole (a 28×28 batch of 64 with 3×3×32 taps would be 14 MB, allocated and faulted in on
/// every pass).
fn block_rows(patch_len: usize) -> usize {
    ((1 << 18) / patch_len.max(1)).max(64)
}

/// The convolution, and its VJP: for each group and each block of output positions,
/// `Y_b = P_b · K_g`; backward rebuilds `P_b` (as PyTorch does) for `dK_g += P_bᵀ · dY_b`,
/// and scatters `dP_b = dY_b · K_gᵀ` onto `dX`.
///
/// A bias is one more row of the kernel matrix, `K' = [K; b]`, read by one more column of
/// ones in the patches, `P' = [P 1]`: then `Y = P' K'` adds the bias inside the product
/// (as the last term of each output's dot product), and backward's
/// `P'ᵀ dY` gives `[dK; dbias]`, the bias's gradient `Σ_rows dY` in the same product. That
/// saves a pass writing the bias under every output before the product and a pass summing
/// `dY`, for one multiply-add more per output.
fn convolve<A: Float>(
    x: &Tensor<A>,
    kernel: &Tensor<A>,
    bias: Option<&Tensor<A>>,
    options: &ConvOptions,
) -> Result<Tensor<A>> {
    let geo = geometry(x.shape(), kernel.shape(), options)?;
    let outputs = geo.group_outputs * geo.groups;
    if let Some(b) = bias.filter(|b| b.shape() != [outputs]) {
        return Err(Error::incompatible(
            "conv2d",
            kernel.shape(),
            b.shape(),
            "the bias must have one value per output channel",
        ));
    }
    let input = standard_layout_shared(x.shared_value());
    // The kernel as one (kh·kw·C_g (+ 1), O) matrix, the bias its last row; small, so copied
    // once per call.
    let k = kernel
        .value()
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((geo.patch_len(), outputs))
        .expect("an HWIO kernel");
    let k = match bias {
        Some(b) => {
            let b = b
                .value()
                .view()
                .into_shape_with_order((1, outputs))
                .expect("(O)");
            ndarray::concatenate(Axis(0), &[k.view(), b]).expect("O columns each")
        }
        None => k,
    };
    let ones = bias.is_some();
    let k = Arc::new(k.into_dyn());
    let kernels: Vec<Arc<ArrayD<A>>> = (0..geo.groups).map(|g| group_kernel(&k, &geo, g)).collect();
    let xs = input.as_slice().expect("standard layout");
    let mut y = Array2::uninit((geo.positions(), outputs));
    // Shares of output positions over the pool, each building its own blocks' patches and
    // multiplying them straight into its rows of `y`: the im2col runs on every thread too,
    // and a whole convolution is one hand-off, not one per block.
    let multiply_adds = geo.positions() * geo.patch_len() * outputs;
    gemm::by_row_shares(y.view_mut(), multiply_adds, |path, share, mut y_share| {
        let mut buffer = Vec::new(); // every block of every group of this share
        for (g, kg) in kernels.iter().enumerate() {
            let columns = g * geo.group_outputs..(g + 1) * geo.group_outputs;
            let kg = gemm::matrix(kg);
            for rows in block_ranges(share.len(), block_rows(geo.patch_len())) {
                let positions = share.start + rows.start..share.start + rows.end;
                let p = geo.patches(xs, g, positions, ones, &mut buffer);
                let target = y_share.slice_mut(s![rows, columns.clone()]);
                gemm::product_into(path, p.view(), kg, target);
            }
        }
    });
    // SAFETY: the shares cover every row, and within a share the blocks every row and the
    // groups every column; `product_into` writes each element of its target.
    let y = unsafe { y.assume_init() };
    let out_shape = [geo.batch, geo.rows.output, geo.cols.output, outputs];
    let value = y
        .into_shape_with_order(IxDyn(&out_shape))
        .expect("one row per output position");
    let (x_shape, kernel_shape) = (x.shape().to_vec(), kernel.shape().to_vec());
    // The op's name on the tape (and in the guide's primitive table).
    const CONV2D_BIAS: &str = "conv2d_bias";
    let op = if bias.is_some() { CONV2D_BIAS } else { OP };
    let mut inputs = vec![x, kernel];
    inputs.extend(bias);
    record(op, &inputs, value, move |dy, needs| {
        let dy = standard_layout(dy)
            .into_shape_with_order(IxDyn(&[geo.positions(), outputs]))
            .expect("the output's shape");
        let dy = gemm::matrix(&dy);
        let xs = input.as_slice().expect("standard layout");
        let mut dx = needs[0].then(|| vec![A::zero(); xs.len()]);
        let per_image = geo.rows.output * geo.cols.output;
        let image_len = xs.len() / geo.batch.max(1);
        // Shares of whole images over the pool: each scatters onto its own images' part of
        // `dx` (windows never cross images) and sums its own part of `dK`; the parts of `dK`
        // are added in share order.
        // With the kernel's gradient, the bias's comes from the same product (the ones
        // column); alone, it is `Σ_rows dY`.
        let bias_wanted = needs.get(2).is_some_and(|&n| n);
        let bias_in_product = bias_wanted && needs[1];
        let dk_rows = geo.patch_len() + usize::from(bias_in_product);
        let dk_parts = std::sync::Mutex::new(Vec::new());
        let multiply_adds = 2 * geo.positions() * geo.patch_len() * outputs;
        let dx_whole = dx.as_deref_mut();
        let items = move |shares: &[Range<usize>]| {
            let mut dx_rest = dx_whole;
            let mut items = Vec::with_capacity(shares.len());
            for (index, images) in shares.iter().enumerate() {
                let dx_part = dx_rest.take().map(|rest| {
                    let (part, tail) = rest.split_at_mut(images.len() * image_len);
                    dx_rest = Some(tail);
                    part
                });
                items.push((index, images.clone(), dx_part));
            }
            items
        };
        gemm::in_shares(
            geo.batch,
            multiply_adds,
            items,
            |path, (index, images, mut dx_part)| {
                let share = images.start * per_image..images.end * per_image;
                let mut dk_part = needs[1].then(|| Array2::zeros((dk_rows, outputs)));
                let dx_offset = images.start * image_len;
                let (mut patch_buffer, mut dp_buffer) = (Vec::new(), Vec::new());
                for (g, kg) in kernels.iter().enumerate() {
                    let columns = g * geo.group_outputs..(g + 1) * geo.group_outputs;
                    // The kernel without its bias row: the ones column has no input.
                    let kg = gemm::matrix(kg);
                    let kg = kg.slice(s![..geo.patch_len(), ..]);
                    for rows in block_ranges(share.len(), block_rows(geo.patch_len())) {
                        let positions = share.start + rows.start..share.start + rows.end;
                        let dyb = dy.slice(s![positions.clone(), columns.clone()]);
                        if let Some(dx_part) = dx_part.as_deref_mut() {
                            let dp = gemm::product_in(path, dyb, kg.t(), &mut dp_buffer);
                            geo.scatter(dp, g, positions.clone(), dx_part, dx_offset);
                        }
                        if let Some(dk_part) = dk_part.as_mut() {
                            let p = geo.patches(
                                xs,
                                g,
                                positions.clone(),
                                bias_in_product,
                                &mut patch_buffer,
                            );
                            let target = dk_part.slice_mut(s![.., columns.clone()]);
                            gemm::product_add_into(path, p.t(), dyb, target);
                        }
                    }
                }
                if let Some(part) = dk_part {
                    let mut parts = dk_parts
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    parts.push((index, part));
                }
            },
        );
        let mut dk_parts = dk_parts
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        dk_parts.sort_by_key(|&(index, _)| index);
        let dk = dk_parts
            .into_iter()
            .map(|(_, part)| part)
            .reduce(|mut dk, part| {
                dk += &part;
                dk
            });
        let (dk, dbias) = match dk {
            Some(dk) if bias_in_product => {
                let (kernel_rows, bias_row) = dk.view().split_at(Axis(0), geo.patch_len());
                let dbias = bias_row.into_shape_with_order(outputs).expect("one row");
                (
                    Some(kernel_rows.to_owned()),
                    Some(dbias.to_owned().into_dyn()),
                )
            }
            dk => (dk, bias_wanted.then(|| column_sums(dy).into_dyn())),
        };
        let mut grads = vec![
            dx.map(|d| ArrayD::from_shape_vec(x_shape.clone(), d).expect("the input's shape")),
            dk.map(|d| {
                d.into_shape_with_order(IxDyn(&kernel_shape))
                    .expect("the kernel's shape")
            }),
        ];
        if needs.len() == 3 {
            grads.push(dbias);
        }
        grads
    })
}

/// `0..total` cut into ranges of at most `size`.
fn block_ranges(total: usize, size: usize) -> Vec<Range<usize>> {
    (0..total)
        .step_by(size.max(1))
        .map(|start| start..(start + size).min(total))
        .collect()
}

/// The kernel of group `g` as a `(kh·kw·C_g, O_g)` matrix: columns of the whole kernel's.
fn group_kernel<A: Float>(k: &Arc<ArrayD<A>>, geo: &Geometry, g: usize) -> Arc<ArrayD<A>> {
    if geo.groups == 1 {
        return Arc::clone(k);
    }
    let columns = g * geo.group_outputs..(g + 1) * geo.group_outputs;
    Arc::new(k.slice_axis(Axis(1), columns.into()).to_owned())
}
