//! Reductions over any set of axes, with or without keeping the reduced axes as size 1.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Zip};

use crate::error::{Error, Result};
use crate::float::{Float, nan_max};
use crate::kernels::sums;
use crate::ops::tangent::only;
use crate::record::{Primal, Rules, record_one};
use crate::shape::{check_axes, keep_dims_shape, reshaped};
use crate::tensor::Tensor;

/// The gradient of a reduction's output, given back the reduced axes as size 1 and then
/// broadcast to the input's shape.
fn spread<A: Float>(g: &ArrayD<A>, keep_shape: &[usize], input_shape: &[usize]) -> ArrayD<A> {
    let g = reshaped(g.clone(), keep_shape);
    g.broadcast(IxDyn(input_shape))
        .expect("a keep-dims shape broadcasts to its input shape")
        .to_owned()
}

/// `value` reduced over `axes` (ascending) one axis at a time by `reduce_axis`, the last axis
/// first so that the others keep their numbers. The first reduction reads `value` where it
/// is: cloning the input first, as this did, copied a whole activation before every global
/// average pool (9 MB a step at the CNN-M size).
fn reduce_axes<A: Float>(
    value: &ArrayD<A>,
    axes: &[usize],
    reduce_axis: impl Fn(ArrayViewD<'_, A>, Axis) -> ArrayD<A>,
) -> ArrayD<A> {
    let mut descending = axes.iter().rev();
    let Some(&last) = descending.next() else {
        return value.clone();
    };
    let mut reduced = reduce_axis(value.view(), Axis(last));
    for &axis in descending {
        reduced = reduce_axis(reduced.view(), Axis(axis));
    }
    reduced
}

/// `value`'s sum over `axis`, the same values as ndarray's `sum_axis`: along contiguous rows
/// when the axis is not the innermost of a standard-layout array (a batch's statistics and a
/// bias's gradient are sums over the rows), where `sum_axis` would add one strided view per
/// index, paying for a dynamic-rank view each time.
fn sum_along<A: Float>(value: ArrayViewD<'_, A>, axis: Axis) -> ArrayD<A> {
    let shape = value.shape();
    match value.as_slice() {
        Some(values) if axis.index() + 1 < shape.len() => {
            let outer = shape[..axis.index()].iter().product();
            let inner = shape[axis.index() + 1..].iter().product();
            let sums = sums::sum_middle_axis(values, [outer, shape[axis.index()], inner]);
            let mut out_shape = shape.to_vec();
            out_shape.remove(axis.index());
            ArrayD::from_shape_vec(out_shape, sums).expect("the reduced shape")
        }
        _ => value.sum_axis(axis),
    }
}

/// A reduction's axes and shapes, what its rules need.
struct Reduced {
    axes: Vec<usize>,
    keep_shape: Vec<usize>,
    input_shape: Vec<usize>,
    keep_dims: bool,
}

impl Reduced {
    /// `t` summed over the axes, in the output's shape.
    fn sum<A: Float>(&self, t: &ArrayD<A>) -> ArrayD<A> {
        let sum = reduce_axes(t, &self.axes, sum_along);
        match self.keep_dims {
            true => reshaped(sum, &self.keep_shape),
            false => sum,
        }
    }

    /// The output's gradient spread back over the input's shape, as ops.
    fn spread_tensor<A: Float>(&self, g: &Tensor<A>) -> Result<Tensor<A>> {
        g.reshape(&self.keep_shape)?.broadcast_to(&self.input_shape)
    }
}

impl<A: Float> Tensor<A> {
    /// Sum over `axes`; with `keep_dims` the reduced axes stay as size 1.
    /// PyTorch: `x.sum(dim=axes, keepdim=keep_dims)`.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// let x = Tensor::from_vec(&[2, 3], vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    /// assert_eq!(x.sum_axes(&[0], false)?.value().as_slice().unwrap(), &[5.0, 7.0, 9.0]);
    /// assert_eq!(x.sum_axes(&[1], true)?.shape(), &[2, 1]);
    /// assert!(x.sum_axes(&[2], false).is_err()); // axis out of range
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the op and the shape if an axis is out of range or
    /// repeated; nothing is recorded.
    pub fn sum_axes(&self, axes: &[usize], keep_dims: bool) -> Result<Tensor<A>> {
        let axes = check_axes("sum", self.shape(), axes)?;
        let keep_shape = keep_dims_shape(self.shape(), &axes);
        let mut value = reduce_axes(self.value(), &axes, sum_along);
        if keep_dims {
            value = reshaped(value, &keep_shape);
        }
        let rules = Rules {
            saved: Reduced {
                axes,
                keep_shape,
                input_shape: self.shape().to_vec(),
                keep_dims,
            },
            vjp: |s: &Reduced, g: ArrayD<A>, _: &[bool]| spread(&g, &s.keep_shape, &s.input_shape),
            recorded: |s: &Reduced, g: &Tensor<A>, _: &Primal<'_, A>| s.spread_tensor(g),
            jvp: |s: &Reduced, t: &[Option<&ArrayD<A>>]| Ok(s.sum(only(t))),
        };
        Ok(record_one("sum", self, value, rules))
    }

    /// Sum of all elements, as a 0-d tensor.
    #[must_use]
    pub fn sum_all(&self) -> Tensor<A> {
        let value = ArrayD::from_elem(IxDyn(&[]), self.value().sum());
        let rules = Rules {
            saved: self.shape().to_vec(),
            vjp: |shape: &Vec<usize>, g: ArrayD<A>, _: &[bool]| {
                ArrayD::from_elem(IxDyn(shape), g.sum())
            },
            recorded: |shape: &Vec<usize>, g: &Tensor<A>, _: &Primal<'_, A>| g.broadcast_to(shape),
            jvp: |_: &Vec<usize>, t: &[Option<&ArrayD<A>>]| {
                Ok(ArrayD::from_elem(IxDyn(&[]), only(t).sum()))
            },
        };
        record_one("sum", self, value, rules)
    }

    /// Summed down to `shape`, which this tensor's shape is a broadcast of: the sum over the
    /// leading axes `shape` lacks and over the axes where it has 1. Broadcasting's adjoint,
    /// as ops: where a recorded backward pass sums a gradient back to its input's shape.
    pub(crate) fn sum_to(&self, shape: &[usize]) -> Result<Tensor<A>> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self.ndim() - shape.len();
        let axes: Vec<usize> = (0..self.ndim())
            .filter(|&a| a < lead || (shape[a - lead] == 1 && self.shape()[a] != 1))
            .collect();
        self.sum_axes(&axes, true)?.reshape(shape)
    }

    /// Mean over `axes` (composed: a sum times `1/n`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the op and the shape if an axis is out of range or
    /// repeated; nothing is recorded.
    pub fn mean_axes(&self, axes: &[usize], keep_dims: bool) -> Result<Tensor<A>> {
        let sum = self.sum_axes(axes, keep_dims)?;
        let count: usize = axes.iter().map(|&a| self.shape()[a]).product();
        Ok(sum.mul_scalar(A::of(1.0 / count as f64)))
    }

    /// Mean of all elements, as a 0-d tensor.
    #[must_use]
    pub fn mean_all(&self) -> Tensor<A> {
        self.sum_all()
            .mul_scalar(A::of(1.0 / self.len().max(1) as f64))
    }

    /// Maximum over `axes`; a NaN anywhere in a slice makes its maximum NaN (as in PyTorch and
    /// JAX). Where several elements tie for the maximum the gradient is split evenly among
    /// them (as JAX does), so it still sums to the output's gradient.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the op and the shape if an axis is out of range or
    /// repeated; nothing is recorded.
    pub fn max_axes(&self, axes: &[usize], keep_dims: bool) -> Result<Tensor<A>> {
        let axes = check_axes("max", self.shape(), axes)?;
        if axes.iter().any(|&a| self.shape()[a] == 0) {
            return Err(Error::invalid(
                "max",
                self.shape(),
                "reduction over an empty axis",
            ));
        }
        let keep_shape = keep_dims_shape(self.shape(), &axes);
        let mut value = reduce_axes(self.value(), &axes, |v, axis| {
            v.fold_axis(axis, A::neg_infinity(), |&m, &x| nan_max(m, x))
        });
        let max_keep = reshaped(value.clone(), &keep_shape);
        if keep_dims {
            value = max_keep.clone();
        }
        // Each position's share of its slice's gradient: 1/ties at a maximum, 0 elsewhere.
        let max = max_keep
            .broadcast(self.value().raw_dim())
            .expect("keep-dims shape broadcasts");
        let is_max = Zip::from(self.value())
            .and(&max)
            .map_collect(|&x, &m| if x == m { A::one() } else { A::zero() });
        let ties = reduce_axes(&is_max, &axes, sum_along);
        let share = is_max / &reshaped(ties, &keep_shape);
        let reduced = Reduced {
            axes,
            keep_shape,
            input_shape: self.shape().to_vec(),
            keep_dims,
        };
        let rules = Rules {
            saved: (reduced, share),
            vjp: |(s, share): &(Reduced, ArrayD<A>), g: ArrayD<A>, _: &[bool]| {
                spread(&g, &s.keep_shape, &s.input_shape) * share
            },
            recorded: |(s, share): &(Reduced, ArrayD<A>), g: &Tensor<A>, _: &Primal<'_, A>| {
                s.spread_tensor(g)?.mul(&Tensor::constant(share))
            },
            jvp: |(s, share): &(Reduced, ArrayD<A>), t: &[Option<&ArrayD<A>>]| {
                Ok(s.sum(&(only(t) * share)))
            },
        };
        Ok(record_one("max", self, value, rules))
    }
}

#[cfg(test)]
mod tests {
    use super::spread;
    use ndarray::{ArrayD, Dimension, IxDyn, ShapeBuilder};

    /// Global average pooling's case (outer axes reduced) and an inner one, from a gradient
    /// in standard and in transposed layout: each output element is its reduced position's
    /// gradient, and the output is in standard layout (later passes read it as a slice).
    #[test]
    fn spread_copies_each_gradient_to_its_positions_in_standard_layout() {
        let input = [2, 3, 4, 5];
        for (keep, reduced) in [([2, 1, 1, 5], [1, 2]), ([2, 3, 4, 1], [3, 3])] {
            let g = ArrayD::from_shape_fn(IxDyn(&keep), |i| (i[0] * 100 + i[3] * 10 + i[1]) as f64);
            let transposed = {
                let mut t = ArrayD::zeros(IxDyn(&keep).f());
                t.assign(&g);
                t
            };
            for g in [&g, &transposed] {
                let out = spread(g, &keep, &input);
                assert!(out.is_standard_layout());
                assert_eq!(out.shape(), &input);
                for (i, v) in out.indexed_iter() {
                    let mut at = i.as_array_view().to_vec();
                    for axis in reduced {
                        at[axis] = 0;
                    }
                    assert_eq!(*v, g[IxDyn(&at)]);
                }
            }
        }
    }
}
