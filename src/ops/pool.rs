//! Max and average pooling over NHWC inputs: their checks and their nodes on the tape; the
//! loops, forward and backward, are in src/kernels/pooling.rs.

use std::rc::Rc;

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::pooling;
use crate::kernels::window::WindowAxis;
use crate::ops::tangent::only;
use crate::ops::window::{Padding, require_nhwc, window_axes};
use crate::record::{Primal, Rules, record_one};
use crate::shape::{element_count, standard_layout, standard_layout_shared};
use crate::tensor::Tensor;

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
        let routing = Rc::new(MaxRouting {
            shape,
            out_shape,
            axes,
            won,
        });
        let rules = Rules {
            saved: routing,
            vjp: |r: &Rc<MaxRouting>, g: ArrayD<A>, _: &[bool]| r.scatter(g),
            recorded: |r: &Rc<MaxRouting>, g: &Tensor<A>, _: &Primal<'_, A>| {
                Ok(MaxRouting::scatter_op(r, g))
            },
            jvp: |r: &Rc<MaxRouting>, t: &[Option<&ArrayD<A>>]| Ok(r.gather(only(t))),
        };
        Ok(record_one("max_pool", self, value, rules))
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
        let averaging = Rc::new(Averaging { shape, axes, scale });
        let rules = Rules {
            saved: averaging,
            vjp: |a: &Rc<Averaging<A>>, g: ArrayD<A>, _: &[bool]| a.spread(g),
            recorded: |a: &Rc<Averaging<A>>, g: &Tensor<A>, _: &Primal<'_, A>| {
                Ok(Averaging::spread_op(a, g))
            },
            jvp: |a: &Rc<Averaging<A>>, t: &[Option<&ArrayD<A>>]| Ok(a.average(only(t))),
        };
        Ok(record_one("avg_pool", self, value, rules))
    }
}

/// Where max pooling's windows took their values: what its rules route along.
struct MaxRouting {
    shape: Vec<usize>,
    out_shape: Vec<usize>,
    axes: [WindowAxis; 2],
    won: Vec<u32>,
}

impl MaxRouting {
    /// The output's gradient sent to the winners: the VJP, in the input's shape.
    fn scatter<A: Float>(&self, g: ArrayD<A>) -> ArrayD<A> {
        let g = standard_layout(g);
        let gs = g.as_slice().expect("standard layout");
        let dx = pooling::max_pool_backward(&self.shape, self.axes, &self.won, gs);
        ArrayD::from_shape_vec(IxDyn(&self.shape), dx).expect("the input's shape")
    }

    /// The values at the winners: the JVP, in the output's shape.
    fn gather<A: Float>(&self, t: &ArrayD<A>) -> ArrayD<A> {
        let t = standard_layout(t.clone());
        let ts = t.as_slice().expect("standard layout");
        let out = pooling::max_pool_gather(&self.shape, self.axes, &self.won, ts);
        ArrayD::from_shape_vec(IxDyn(&self.out_shape), out).expect("the output's shape")
    }

    /// [`MaxRouting::scatter`] as an op, linear in `g`, whose VJP and JVP are the gather.
    fn scatter_op<A: Float>(routing: &Rc<MaxRouting>, g: &Tensor<A>) -> Tensor<A> {
        let rules = Rules {
            saved: Rc::clone(routing),
            vjp: |r: &Rc<MaxRouting>, h: ArrayD<A>, _: &[bool]| r.gather(&h),
            recorded: |r: &Rc<MaxRouting>, h: &Tensor<A>, _: &Primal<'_, A>| {
                Ok(MaxRouting::gather_op(r, h))
            },
            jvp: |r: &Rc<MaxRouting>, t: &[Option<&ArrayD<A>>]| Ok(r.scatter(only(t).clone())),
        };
        record_one(
            "max_pool_scatter",
            g,
            routing.scatter(g.value().clone()),
            rules,
        )
    }

    /// [`MaxRouting::gather`] as an op, whose VJP and JVP are the scatter.
    fn gather_op<A: Float>(routing: &Rc<MaxRouting>, h: &Tensor<A>) -> Tensor<A> {
        let rules = Rules {
            saved: Rc::clone(routing),
            vjp: |r: &Rc<MaxRouting>, g: ArrayD<A>, _: &[bool]| r.scatter(g),
            recorded: |r: &Rc<MaxRouting>, g: &Tensor<A>, _: &Primal<'_, A>| {
                Ok(MaxRouting::scatter_op(r, g))
            },
            jvp: |r: &Rc<MaxRouting>, t: &[Option<&ArrayD<A>>]| Ok(r.gather(only(t))),
        };
        record_one("max_pool_gather", h, routing.gather(h.value()), rules)
    }
}

/// Average pooling's windows and `1 / taps`: a linear map whose transpose spreads each
/// output's gradient over its window.
struct Averaging<A> {
    shape: Vec<usize>,
    axes: [WindowAxis; 2],
    scale: A,
}

impl<A: Float> Averaging<A> {
    /// The forward map, in the output's shape: the JVP (the map is linear).
    fn average(&self, t: &ArrayD<A>) -> ArrayD<A> {
        let t = standard_layout(t.clone());
        let ts = t.as_slice().expect("standard layout");
        let values = pooling::avg_pool_forward(ts, &self.shape, self.axes, self.scale);
        let out_shape = pooling::output_shape(&self.shape, self.axes);
        ArrayD::from_shape_vec(IxDyn(&out_shape), values).expect("the output's shape")
    }

    /// The transpose, in the input's shape: the VJP.
    fn spread(&self, g: ArrayD<A>) -> ArrayD<A> {
        let g = standard_layout(g);
        let gs = g.as_slice().expect("standard layout");
        let dx = pooling::avg_pool_backward(&self.shape, self.axes, gs, self.scale);
        ArrayD::from_shape_vec(IxDyn(&self.shape), dx).expect("the input's shape")
    }

    /// [`Averaging::spread`] as an op, whose VJP and JVP are the average.
    fn spread_op(averaging: &Rc<Averaging<A>>, g: &Tensor<A>) -> Tensor<A> {
        let rules = Rules {
            saved: Rc::clone(averaging),
            vjp: |a: &Rc<Averaging<A>>, h: ArrayD<A>, _: &[bool]| a.average(&h),
            recorded: |a: &Rc<Averaging<A>>, h: &Tensor<A>, _: &Primal<'_, A>| {
                Ok(Averaging::average_op(a, h))
            },
            jvp: |a: &Rc<Averaging<A>>, t: &[Option<&ArrayD<A>>]| Ok(a.spread(only(t).clone())),
        };
        record_one(
            "avg_pool_spread",
            g,
            averaging.spread(g.value().clone()),
            rules,
        )
    }

    /// [`Averaging::average`] as an op, whose VJP and JVP are the spread.
    fn average_op(averaging: &Rc<Averaging<A>>, h: &Tensor<A>) -> Tensor<A> {
        let rules = Rules {
            saved: Rc::clone(averaging),
            vjp: |a: &Rc<Averaging<A>>, g: ArrayD<A>, _: &[bool]| a.spread(g),
            recorded: |a: &Rc<Averaging<A>>, g: &Tensor<A>, _: &Primal<'_, A>| {
                Ok(Averaging::spread_op(a, g))
            },
            jvp: |a: &Rc<Averaging<A>>, t: &[Option<&ArrayD<A>>]| Ok(a.average(only(t))),
        };
        record_one("avg_pool", h, averaging.average(h.value()), rules)
    }
}
