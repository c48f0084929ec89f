//! 2-D convolution in Flax's layout (input NHWC, kernel HWIO): its options, its checks, and
//! its node on the tape; the loops (im2col and the products) are in src/kernels/conv.rs.

use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::conv::{self, Geometry};
use crate::kernels::gemm::matrix;
use crate::ops::fusion::Fusion;
use crate::ops::window::{Padding, require_nhwc, window_axes};
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
    if groups == 0 || group_channels.checked_mul(groups) != Some(channels) || outputs % groups != 0
    {
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
        let geo = geometry(self.shape(), kernel.shape(), options)?;
        convolve(self, kernel, None, geo)
    }

    /// `conv2d(kernel, options) + bias`, the bias `(out)` broadcast over every output
    /// position: defined as [`conv2d`](Self::conv2d) then [`add`](Self::add), and with
    /// [`Fusion::On`] one `conv2d_bias` node that adds the bias inside the product (one more
    /// row of the kernel matrix, read by a column of ones in the patches). Flax: `nn.Conv`'s
    /// computation; PyTorch: `F.conv2d(x, weight, bias)`.
    ///
    /// ```
    /// use tapegrad::{ConvOptions, Tensor};
    /// let x = Tensor::from_vec(&[1, 2, 2, 1], vec![1.0f64; 4])?;
    /// let k = Tensor::from_vec(&[1, 1, 1, 2], vec![2.0, 3.0])?;
    /// let b = Tensor::from_vec(&[2], vec![0.5, -0.5])?;
    /// let y = x.conv2d_with_bias(&k, &b, &ConvOptions::default())?;
    /// assert_eq!(y.shape(), &[1, 2, 2, 2]);
    /// assert!(y.value().iter().all(|&v| v == 2.5));
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`conv2d`](Self::conv2d), and [`Error::IncompatibleShapes`] if the bias has not one
    /// value per output channel; nothing is recorded.
    pub fn conv2d_with_bias(
        &self,
        kernel: &Tensor<A>,
        bias: &Tensor<A>,
        options: &ConvOptions,
    ) -> Result<Tensor<A>> {
        let geo = geometry(self.shape(), kernel.shape(), options)?;
        if bias.shape() != [geo.group_outputs * geo.groups] {
            return Err(Error::incompatible(
                OP,
                kernel.shape(),
                bias.shape(),
                "the bias must have one value per output channel",
            ));
        }
        if !Fusion::is_on() {
            return self.conv2d(kernel, options)?.add(bias); // the definition
        }
        convolve(self, kernel, Some(bias), geo)
    }
}

/// The convolution's node, for a geometry checked by [`geometry`]: the kernel as one
/// `(kh·kw·C_g (+ 1), O)` matrix, the bias its last row, and the product and its VJP by
/// [`conv::forward`] and [`conv::backward`].
fn convolve<A: Float>(
    x: &Tensor<A>,
    kernel: &Tensor<A>,
    bias: Option<&Tensor<A>>,
    geo: Geometry,
) -> Result<Tensor<A>> {
    let outputs = geo.group_outputs * geo.groups;
    let out_shape = [geo.batch, geo.rows.output, geo.cols.output, outputs];
    if geo.positions() == 0 || outputs == 0 {
        return empty_convolution(x, kernel, bias, &out_shape);
    }
    // Small, so copied once per call.
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
    let input = standard_layout_shared(x.shared_value());
    let (y, saved) = conv::forward(geo, input, k, bias.is_some());
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
        let gradients = conv::backward(&saved, matrix(&dy), needs);
        let mut grads = vec![
            gradients
                .input
                .map(|d| ArrayD::from_shape_vec(x_shape.clone(), d).expect("the input's shape")),
            gradients.kernel.map(|d| {
                d.into_shape_with_order(IxDyn(&kernel_shape))
                    .expect("the kernel's shape")
            }),
        ];
        if needs.len() == 3 {
            grads.push(gradients.bias.map(|d| d.into_dyn()));
        }
        grads
    })
}

/// A convolution with no output: no positions, or no output channels. Its output is empty
/// and no input reaches it, so every gradient is zeros; nothing of the patch matrix is built
/// (a kernel of no output channels may have any number of taps).
fn empty_convolution<A: Float>(
    x: &Tensor<A>,
    kernel: &Tensor<A>,
    bias: Option<&Tensor<A>>,
    out_shape: &[usize],
) -> Result<Tensor<A>> {
    let mut inputs = vec![x, kernel];
    inputs.extend(bias);
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
    let op = if bias.is_some() { "conv2d_bias" } else { OP };
    record(op, &inputs, ArrayD::zeros(out_shape), move |_, needs| {
        shapes
            .iter()
            .zip(needs)
            .map(|(shape, &need)| need.then(|| ArrayD::zeros(shape.clone())))
            .collect()
    })
}
