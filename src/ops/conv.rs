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

use std::sync::Arc;

use ndarray::{Array2, ArrayD, Axis, IxDyn, s};

use crate::error::{Error, Result};
use crate::float::Float;
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

    /// Calls `visit(patch row, window offset in the row, input offset)` for every kernel tap
    /// of every output position that reads inside the input (both offsets in elements, for
    /// slices of `group_channels` channels of group `g`).
    fn for_each_tap(&self, g: usize, mut visit: impl FnMut(usize, usize, usize)) {
        let (h, w, c) = (self.rows.input, self.cols.input, self.channels);
        let mut row = 0;
        for n in 0..self.batch {
            for oi in 0..self.rows.output {
                for oj in 0..self.cols.output {
                    for u in 0..self.rows.window {
                        let Some(i) = self.rows.source(oi, u) else {
                            continue;
                        };
                        for v in 0..self.cols.window {
                            let Some(j) = self.cols.source(oj, v) else {
                                continue;
                            };
                            let tap = (u * self.cols.window + v) * self.group_channels;
                            let input = ((n * h + i) * w + j) * c + g * self.group_channels;
                            visit(row, tap, input);
                        }
                    }
                    row += 1;
                }
            }
        }
    }

    /// The patch matrix of group `g` (im2col): zeros where a window reads padding.
    fn patches<A: Float>(&self, x: &[A], g: usize) -> Array2<A> {
        let (len, cg) = (self.patch_len(), self.group_channels);
        let mut p = Array2::zeros((self.positions(), len));
        let out = p.as_slice_mut().expect("a new array is contiguous");
        self.for_each_tap(g, |row, tap, input| {
            out[row * len + tap..row * len + tap + cg].copy_from_slice(&x[input..input + cg]);
        });
        p
    }

    /// Adds the patch-shaped gradient `dp` of group `g` back onto the input's gradient
    /// (col2im): each input element gets the sum over the windows that read it.
    fn scatter<A: Float>(&self, dp: &Array2<A>, g: usize, dx: &mut [A]) {
        let (len, cg) = (self.patch_len(), self.group_channels);
        let dp = dp.as_standard_layout();
        let dp = dp.as_slice().expect("standard layout");
        self.for_each_tap(g, |row, tap, input| {
            let from = &dp[row * len + tap..row * len + tap + cg];
            for (d, &s) in dx[input..input + cg].iter_mut().zip(from) {
                *d += s;
            }
        });
    }
}

fn geometry(x: &[usize], k: &[usize], options: &ConvOptions) -> Result<Geometry> {
    const OP: &str = "conv2d";
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
    pub fn conv2d(&self, kernel: &Tensor<A>, options: &ConvOptions) -> Result<Tensor<A>> {
        let geo = geometry(self.shape(), kernel.shape(), options)?;
        let x = standard_layout_shared(self.shared_value());
        // The kernel as one (kh·kw·C_g, O) matrix; small, so copied once per call.
        let k = Arc::new(
            kernel
                .value()
                .as_standard_layout()
                .into_owned()
                .into_shape_with_order(IxDyn(&[geo.patch_len(), geo.group_outputs * geo.groups]))
                .expect("an HWIO kernel"),
        );
        let out_shape = [
            geo.batch,
            geo.rows.output,
            geo.cols.output,
            geo.group_outputs * geo.groups,
        ];
        let xs = x.as_slice().expect("standard layout");
        let mut y = Array2::zeros((geo.positions(), out_shape[3]));
        for g in 0..geo.groups {
            let p = Arc::new(geo.patches(xs, g).into_dyn());
            let yg = gemm::forward(p, group_kernel(&k, &geo, g), None);
            y.slice_mut(s![.., g * geo.group_outputs..(g + 1) * geo.group_outputs])
                .assign(&yg);
        }
        let value = y
            .into_shape_with_order(IxDyn(&out_shape))
            .expect("one row per output position");
        let kernel_shape = kernel.shape().to_vec();
        record("conv2d", &[self, kernel], value, move |dy, needs| {
            let dy = standard_layout(dy);
            let dy = dy
                .into_shape_with_order((geo.positions(), geo.group_outputs * geo.groups))
                .expect("the output's shape");
            let xs = x.as_slice().expect("standard layout");
            let mut dx = needs[0].then(|| vec![A::zero(); xs.len()]);
            let mut dk = needs[1].then(|| Array2::zeros((geo.patch_len(), dy.ncols())));
            for g in 0..geo.groups {
                let columns = g * geo.group_outputs..(g + 1) * geo.group_outputs;
                let dyg = dy.slice(s![.., columns.clone()]).to_owned().into_dyn();
                let p = Arc::new(geo.patches(xs, g).into_dyn());
                let (dp, dkg) =
                    gemm::backward(dyg, p, group_kernel(&k, &geo, g), (needs[0], needs[1]));
                if let (Some(dx), Some(dp)) = (dx.as_mut(), dp) {
                    geo.scatter(&dp, g, dx);
                }
                if let (Some(dk), Some(dkg)) = (dk.as_mut(), dkg) {
                    dk.slice_mut(s![.., columns]).assign(&dkg);
                }
            }
            let x_shape = x.shape().to_vec();
            vec![
                dx.map(|d| ArrayD::from_shape_vec(x_shape, d).expect("the input's shape")),
                dk.map(|d| {
                    d.into_shape_with_order(IxDyn(&kernel_shape))
                        .expect("the kernel's shape")
                }),
            ]
        })
    }
}

/// The kernel of group `g` as a `(kh·kw·C_g, O_g)` matrix: columns of the whole kernel's.
fn group_kernel<A: Float>(k: &Arc<ArrayD<A>>, geo: &Geometry, g: usize) -> Arc<ArrayD<A>> {
    if geo.groups == 1 {
        return Arc::clone(k);
    }
    let columns = g * geo.group_outputs..(g + 1) * geo.group_outputs;
    Arc::new(k.slice_axis(Axis(1), columns.into()).to_owned())
}
