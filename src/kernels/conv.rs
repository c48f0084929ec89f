//! 2-D convolution in Flax's layout (input NHWC, kernel HWIO) as a matrix product: the loops
//! of the `conv2d` and `conv2d_bias` ops (src/ops/conv.rs), on arrays.
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
//!
//! A bias is one more row of the kernel matrix, `K' = [K; b]`, read by one more column of
//! ones in the patches, `P' = [P 1]`: then `Y = P' K'` adds the bias inside the product
//! (as the last term of each output's dot product), and backward's `P'ᵀ dY` gives
//! `[dK; dbias]`, the bias's gradient `Σ_rows dY` in the same product. That saves a pass
//! writing the bias under every output before the product and a pass summing `dY`, for one
//! multiply-add more per output.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use ndarray::{Array1, Array2, ArrayD, ArrayView2, Axis, s};

use crate::float::Float;
use crate::kernels::gemm;
use crate::kernels::sums::column_sums;
use crate::kernels::window::WindowAxis;

/// The shape of one convolution, checked by the op (src/ops/conv.rs) that builds it: an
/// NHWC input of `batch` images and `channels` channels, `groups` groups of `group_channels`
/// input and `group_outputs` output channels, and the window along each spatial axis.
#[derive(Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) batch: usize,
    pub(crate) channels: usize,
    pub(crate) rows: WindowAxis,
    pub(crate) cols: WindowAxis,
    pub(crate) group_channels: usize,
    pub(crate) group_outputs: usize,
    pub(crate) groups: usize,
}

impl Geometry {
    /// Output positions: rows of the patch matrix.
    pub(crate) fn positions(&self) -> usize {
        self.batch * self.rows.output * self.cols.output
    }

    /// Elements of one patch: rows of a group's kernel matrix.
    pub(crate) fn patch_len(&self) -> usize {
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
    /// ones if `ones` (the bias's column: see [`forward`]). Every element is written once, a
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

/// Output positions per block: the patch matrix is built and multiplied a block of rows at
/// a time, about 256 K elements each, so that it stays in cache and is never materialised
/// whole (a 28×28 batch of 64 with 3×3×32 taps would be 14 MB, allocated and faulted in on
/// every pass).
fn block_rows(patch_len: usize) -> usize {
    ((1 << 18) / patch_len.max(1)).max(64)
}

/// What the backward pass of a convolution reads: its geometry, the input in standard
/// layout, and each group's kernel matrix (with the bias as its last row, if any).
pub(crate) struct Saved<A> {
    geo: Geometry,
    input: Arc<ArrayD<A>>,
    kernels: Vec<Arc<ArrayD<A>>>,
}

impl<A: Float> Saved<A> {
    /// What [`backward`] reads, made from an input and a `(kh·kw·C_g, O)` kernel matrix
    /// without running the forward product: for the products of a recorded backward pass,
    /// which ask for one of the two gradients only (the input's reads only the kernel, the
    /// kernel's only the input).
    pub(crate) fn of(geo: Geometry, input: Arc<ArrayD<A>>, kernel: Array2<A>) -> Self {
        let k = Arc::new(kernel.into_dyn());
        let kernels = (0..geo.groups).map(|g| group_kernel(&k, &geo, g)).collect();
        Saved {
            geo,
            input,
            kernels,
        }
    }
}

/// The convolution of `input` (standard layout, NHWC) with `kernel`, the `(kh·kw·C_g, O)`
/// matrix of the HWIO kernel, followed by the bias as one more row if `bias`: for each group
/// and each block of output positions, `Y_b = P_b · K_g`. Returns `Y (positions, O)` and
/// what [`backward`] reads.
pub(crate) fn forward<A: Float>(
    geo: Geometry,
    input: Arc<ArrayD<A>>,
    kernel: Array2<A>,
    bias: bool,
) -> (Array2<A>, Saved<A>) {
    let outputs = geo.group_outputs * geo.groups;
    let k = Arc::new(kernel.into_dyn());
    let kernels: Vec<Arc<ArrayD<A>>> = (0..geo.groups).map(|g| group_kernel(&k, &geo, g)).collect();
    let xs = input.as_slice().expect("standard layout");
    let mut y = Array2::uninit((geo.positions(), outputs));
    // Shares of output positions over the threads, each building its own blocks' patches and
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
                let p = geo.patches(xs, g, positions, bias, &mut buffer);
                let target = y_share.slice_mut(s![rows, columns.clone()]);
                gemm::product_into(path, p.view(), kg, target);
            }
        }
    });
    // SAFETY: `by_row_shares` hands out every row of `y`, and within a share the blocks
    // cover every row and the groups every column; `product_into` initialises every element
    // of its target (its contract, in src/kernels/gemm/mod.rs).
    let y = unsafe { y.assume_init() };
    (
        y,
        Saved {
            geo,
            input,
            kernels,
        },
    )
}

/// A convolution's gradients, each if it was asked for: the input's as its NHWC elements in
/// order, the kernel's as a `(kh·kw·C_g, O)` matrix, the bias's as `(O)`.
pub(crate) struct Gradients<A> {
    pub(crate) input: Option<Vec<A>>,
    pub(crate) kernel: Option<Array2<A>>,
    pub(crate) bias: Option<Array1<A>>,
}

/// The gradients of a convolution from `dy (positions, O)`, each only if `needs` (input,
/// kernel, and bias if the convolution had one) says so. Backward
/// rebuilds each block's patches (as PyTorch does) for `dK_g += P_bᵀ · dY_b`, and scatters
/// `dP_b = dY_b · K_gᵀ` onto `dX`.
pub(crate) fn backward<A: Float>(
    saved: &Saved<A>,
    dy: ArrayView2<'_, A>,
    needs: &[bool],
) -> Gradients<A> {
    let Saved {
        geo,
        input,
        kernels,
    } = saved;
    let geo = *geo;
    let outputs = geo.group_outputs * geo.groups;
    let xs = input.as_slice().expect("standard layout");
    let mut dx = needs[0].then(|| vec![A::zero(); xs.len()]);
    let per_image = geo.rows.output * geo.cols.output;
    let image_len = xs.len() / geo.batch.max(1);
    // Shares of whole images over the threads: each scatters onto its own images' part of
    // `dx` (windows never cross images) and sums its own part of `dK`; the parts of `dK`
    // are added in share order.
    // With the kernel's gradient, the bias's comes from the same product (the ones
    // column); alone, it is `Σ_rows dY`.
    let bias_wanted = needs.get(2).is_some_and(|&n| n);
    let bias_in_product = bias_wanted && needs[1];
    let dk_rows = geo.patch_len() + usize::from(bias_in_product);
    let dk_parts = Mutex::new(Vec::new());
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
                let mut parts = dk_parts.lock().unwrap_or_else(PoisonError::into_inner);
                parts.push((index, part));
            }
        },
    );
    let mut dk_parts = dk_parts
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    dk_parts.sort_by_key(|&(index, _)| index);
    let dk = dk_parts
        .into_iter()
        .map(|(_, part)| part)
        .reduce(|mut dk, part| {
            dk += &part;
            dk
        });
    match dk {
        Some(dk) if bias_in_product => {
            let (kernel_rows, bias_row) = dk.view().split_at(Axis(0), geo.patch_len());
            let dbias = bias_row.into_shape_with_order(outputs).expect("one row");
            Gradients {
                input: dx,
                kernel: Some(kernel_rows.to_owned()),
                bias: Some(dbias.to_owned()),
            }
        }
        dk => Gradients {
            input: dx,
            kernel: dk,
            bias: bias_wanted.then(|| column_sums(dy)),
        },
    }
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
