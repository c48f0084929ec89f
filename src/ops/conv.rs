//! 2-D convolution in Flax's layout (input NHWC, kernel HWIO): its options, its checks, and
//! its node on the tape; the loops (im2col and the products) are in src/kernels/conv.rs.

use std::rc::Rc;
use std::sync::Arc;

use ndarray::{Array2, ArrayD, Axis, IxDyn};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::conv::{self, Geometry};
use crate::kernels::gemm::matrix;
use crate::ops::fusion::Fusion;
use crate::ops::tangent::sum_broadcast;
use crate::ops::window::{Padding, require_nhwc, window_axes};
use crate::record::{Primal, Rules, record_rules};
use crate::shape::{standard_layout, standard_layout_shared};
use crate::tensor::Tensor;

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
        convolve(self, kernel, None, geo, *options)
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
        convolve(self, kernel, Some(bias), geo, *options)
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
    options: ConvOptions,
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
    let convolution = Rc::new(Convolution {
        geo,
        options,
        x_shape: x.shape().to_vec(),
        kernel_shape: kernel.shape().to_vec(),
        out_shape: out_shape.to_vec(),
    });
    // The op's name on the tape (and in the guide's primitive table).
    const CONV2D_BIAS: &str = "conv2d_bias";
    let op = if bias.is_some() { CONV2D_BIAS } else { OP };
    let mut inputs = vec![x, kernel];
    inputs.extend(bias);
    let rules = Rules {
        saved: (
            saved,
            Rc::clone(&convolution),
            x.shared_value(),
            kernel.shared_value(),
        ),
        vjp: |(saved, c, _, _): &ConvSaved<A>, dy: ArrayD<A>, needs: &[bool]| {
            let gradients = conv::backward(saved, matrix(&c.rows(dy)), needs);
            let mut grads = vec![
                gradients.input.map(|d| c.shaped(&c.x_shape, d)),
                gradients.kernel.map(|d| c.kernel_from_matrix(d)),
            ];
            if needs.len() == 3 {
                grads.push(gradients.bias.map(|d| d.into_dyn()));
            }
            grads
        },
        recorded: |(_, c, x, k): &ConvSaved<A>, g: &Tensor<A>, p: &Primal<'_, A>| {
            let dx = match p.needs(0) {
                true => Some(Convolution::input_grad_op(c, g, &p.input(1, k))?),
                false => None,
            };
            let dk = match p.needs(1) {
                true => Some(Convolution::kernel_grad_op(c, &p.input(0, x), g)?),
                false => None,
            };
            let mut grads = vec![dx, dk];
            if p.needs(2) {
                grads.push(Some(g.sum_axes(&[0, 1, 2], false)?));
            }
            Ok(grads)
        },
        jvp: |(_, c, x, k): &ConvSaved<A>, t: &[Option<&ArrayD<A>>]| {
            let terms = [
                t[0].map(|tx| c.apply(tx, k)),
                t[1].map(|tk| c.apply(x, tk)),
                t.get(2).copied().flatten().cloned(),
            ];
            Ok(sum_broadcast(&c.out_shape, terms.into_iter().flatten()))
        },
    };
    record_rules(op, &inputs, value, rules)
}

/// What a convolution's rules read: the kernel's saved state, the geometry, the input and
/// the kernel.
type ConvSaved<A> = (
    conv::Saved<A>,
    Rc<Convolution>,
    Arc<ArrayD<A>>,
    Arc<ArrayD<A>>,
);

/// A convolution's geometry and its operands' shapes: what the products of its rules need.
/// The three bilinear maps of a convolution, `y = conv(x, k)`, `dx = input_grad(dy, k)` and
/// `dk = kernel_grad(x, dy)`, are each other's derivatives: each has the other two as its
/// VJPs and itself, in each argument, as its JVP, so a recorded backward pass of any order
/// is made of the three.
struct Convolution {
    geo: Geometry,
    options: ConvOptions,
    x_shape: Vec<usize>,
    kernel_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

impl Convolution {
    fn outputs(&self) -> usize {
        self.geo.group_outputs * self.geo.groups
    }

    /// An output-shaped array as the `(positions, O)` matrix the kernels read.
    fn rows<A: Float>(&self, dy: ArrayD<A>) -> ArrayD<A> {
        standard_layout(dy)
            .into_shape_with_order(IxDyn(&[self.geo.positions(), self.outputs()]))
            .expect("the output's shape")
    }

    fn shaped<A: Float>(&self, shape: &[usize], values: Vec<A>) -> ArrayD<A> {
        ArrayD::from_shape_vec(shape.to_vec(), values).expect("the shape's length")
    }

    fn kernel_matrix<A: Float>(&self, kernel: &ArrayD<A>) -> Array2<A> {
        kernel
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((self.geo.patch_len(), self.outputs()))
            .expect("an HWIO kernel")
    }

    fn kernel_from_matrix<A: Float>(&self, matrix: Array2<A>) -> ArrayD<A> {
        matrix
            .into_shape_with_order(IxDyn(&self.kernel_shape))
            .expect("the kernel's shape")
    }

    /// `conv(x, k)`, no bias, in the output's shape.
    fn apply<A: Float>(&self, x: &ArrayD<A>, k: &ArrayD<A>) -> ArrayD<A> {
        let input = Arc::new(standard_layout(x.clone()));
        let (y, _) = conv::forward(self.geo, input, self.kernel_matrix(k), false);
        y.into_shape_with_order(IxDyn(&self.out_shape))
            .expect("one row per output position")
    }

    /// The input's gradient for the output's `dy` and kernel `k`.
    fn input_grad<A: Float>(&self, dy: &ArrayD<A>, k: &ArrayD<A>) -> ArrayD<A> {
        let unread = Arc::new(ArrayD::zeros(IxDyn(&self.x_shape)));
        let saved = conv::Saved::of(self.geo, unread, self.kernel_matrix(k));
        let dy = self.rows(dy.clone());
        let dx = conv::backward(&saved, matrix(&dy), &[true, false]).input;
        self.shaped(&self.x_shape, dx.expect("asked for"))
    }

    /// The kernel's gradient for input `x` and the output's `dy`.
    fn kernel_grad<A: Float>(&self, x: &ArrayD<A>, dy: &ArrayD<A>) -> ArrayD<A> {
        let input = Arc::new(standard_layout(x.clone()));
        let unread = Array2::zeros((self.geo.patch_len(), self.outputs()));
        let saved = conv::Saved::of(self.geo, input, unread);
        let dy = self.rows(dy.clone());
        let dk = conv::backward(&saved, matrix(&dy), &[false, true]).kernel;
        self.kernel_from_matrix(dk.expect("asked for"))
    }

    /// [`Convolution::input_grad`] as an op, bilinear in `dy` and `k`.
    fn input_grad_op<A: Float>(
        c: &Rc<Convolution>,
        dy: &Tensor<A>,
        k: &Tensor<A>,
    ) -> Result<Tensor<A>> {
        let value = c.input_grad(dy.value(), k.value());
        let rules = Rules {
            saved: (Rc::clone(c), dy.shared_value(), k.shared_value()),
            vjp: |(c, dy, k): &Bilinear<A>, h: ArrayD<A>, needs: &[bool]| {
                vec![
                    needs[0].then(|| c.apply(&h, k)),
                    needs[1].then(|| c.kernel_grad(&h, dy)),
                ]
            },
            recorded: |(c, dy, k): &Bilinear<A>, h: &Tensor<A>, p: &Primal<'_, A>| {
                let ddy = p
                    .needs(0)
                    .then(|| h.conv2d(&p.input(1, k), &c.options))
                    .transpose()?;
                let dk = match p.needs(1) {
                    true => Some(Convolution::kernel_grad_op(c, h, &p.input(0, dy))?),
                    false => None,
                };
                Ok(vec![ddy, dk])
            },
            jvp: |(c, dy, k): &Bilinear<A>, t: &[Option<&ArrayD<A>>]| {
                let terms = [
                    t[0].map(|tdy| c.input_grad(tdy, k)),
                    t[1].map(|tk| c.input_grad(dy, tk)),
                ];
                Ok(sum_broadcast(&c.x_shape, terms.into_iter().flatten()))
            },
        };
        record_rules("conv2d_input_grad", &[dy, k], value, rules)
    }

    /// [`Convolution::kernel_grad`] as an op, bilinear in `x` and `dy`.
    fn kernel_grad_op<A: Float>(
        c: &Rc<Convolution>,
        x: &Tensor<A>,
        dy: &Tensor<A>,
    ) -> Result<Tensor<A>> {
        let value = c.kernel_grad(x.value(), dy.value());
        let rules = Rules {
            saved: (Rc::clone(c), x.shared_value(), dy.shared_value()),
            vjp: |(c, x, dy): &Bilinear<A>, h: ArrayD<A>, needs: &[bool]| {
                vec![
                    needs[0].then(|| c.input_grad(dy, &h)),
                    needs[1].then(|| c.apply(x, &h)),
                ]
            },
            recorded: |(c, x, dy): &Bilinear<A>, h: &Tensor<A>, p: &Primal<'_, A>| {
                let dx = match p.needs(0) {
                    true => Some(Convolution::input_grad_op(c, &p.input(1, dy), h)?),
                    false => None,
                };
                let ddy = p
                    .needs(1)
                    .then(|| p.input(0, x).conv2d(h, &c.options))
                    .transpose()?;
                Ok(vec![dx, ddy])
            },
            jvp: |(c, x, dy): &Bilinear<A>, t: &[Option<&ArrayD<A>>]| {
                let terms = [
                    t[0].map(|tx| c.kernel_grad(tx, dy)),
                    t[1].map(|tdy| c.kernel_grad(x, tdy)),
                ];
                Ok(sum_broadcast(&c.kernel_shape, terms.into_iter().flatten()))
            },
        };
        record_rules("conv2d_kernel_grad", &[x, dy], value, rules)
    }
}

/// What the rules of a convolution's gradient ops read: the convolution and the two operands.
type Bilinear<A> = (Rc<Convolution>, Arc<ArrayD<A>>, Arc<ArrayD<A>>);

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
    let rules = Rules {
        saved: (shapes, out_shape.to_vec()),
        vjp: |(shapes, _): &(Vec<Vec<usize>>, Vec<usize>), _: ArrayD<A>, needs: &[bool]| {
            shapes
                .iter()
                .zip(needs)
                .map(|(shape, &need)| need.then(|| ArrayD::zeros(shape.clone())))
                .collect()
        },
        recorded: |(shapes, _): &(Vec<Vec<usize>>, Vec<usize>),
                   _: &Tensor<A>,
                   p: &Primal<'_, A>| {
            Ok((0..shapes.len())
                .map(|i| {
                    p.needs(i)
                        .then(|| Tensor::constant(ArrayD::zeros(shapes[i].clone())))
                })
                .collect())
        },
        jvp: |(_, out): &(Vec<Vec<usize>>, Vec<usize>), _: &[Option<&ArrayD<A>>]| {
            Ok(ArrayD::zeros(out.clone()))
        },
    };
    record_rules(op, &inputs, ArrayD::zeros(out_shape), rules)
}
