//! Shape ops: reshape, permute, broadcast, concat, slice, and gathering rows by id.

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;
use crate::ops::tangent::only;
use crate::record::{Primal, Rules, record_one, record_rules};
use crate::shape::{broadcast_shape, element_count, reshaped};
use crate::tensor::Tensor;

impl<A: Float> Tensor<A> {
    /// The same elements (row-major order) in a new shape with the same element count.
    /// Reshaping to the same shape returns the tensor itself and records nothing.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`] if the element counts differ; nothing is recorded.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor<A>> {
        if shape == self.shape() {
            return Ok(self.clone());
        }
        let n = element_count::<A>("reshape", shape)?;
        if n != self.len() {
            return Err(Error::incompatible(
                "reshape",
                self.shape(),
                shape,
                "element counts differ",
            ));
        }
        let value = reshaped(self.value().clone(), shape);
        let rules = Rules {
            saved: (self.shape().to_vec(), shape.to_vec()),
            vjp: |(input, _): &(Vec<usize>, Vec<usize>), g: ArrayD<A>, _: &[bool]| {
                reshaped(g, input)
            },
            recorded: |(input, _): &(Vec<usize>, Vec<usize>), g: &Tensor<A>, _: &Primal<'_, A>| {
                g.reshape(input)
            },
            jvp: |(_, output): &(Vec<usize>, Vec<usize>), t: &[Option<&ArrayD<A>>]| {
                Ok(reshaped(only(t).clone(), output))
            },
        };
        Ok(record_one("reshape", self, value, rules))
    }

    /// Reorders the axes: output axis `i` is input axis `axes[i]`.
    /// PyTorch: `x.permute(axes)`; the VJP permutes back by the inverse permutation.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `axes` is not a permutation of `0..ndim`; nothing is recorded.
    pub fn permute(&self, axes: &[usize]) -> Result<Tensor<A>> {
        let mut seen = vec![false; self.ndim()];
        let is_permutation = axes.len() == self.ndim()
            && axes
                .iter()
                .all(|&a| a < seen.len() && !std::mem::replace(&mut seen[a], true));
        if !is_permutation {
            return Err(Error::invalid(
                "permute",
                self.shape(),
                format!("{axes:?} is not a permutation of the axes"),
            ));
        }
        let mut inverse = vec![0; axes.len()];
        for (i, &a) in axes.iter().enumerate() {
            inverse[a] = i;
        }
        let value = self.value().clone().permuted_axes(IxDyn(axes));
        let rules = Rules {
            saved: (axes.to_vec(), inverse),
            vjp: |(_, inverse): &(Vec<usize>, Vec<usize>), g: ArrayD<A>, _: &[bool]| {
                g.permuted_axes(IxDyn(inverse))
            },
            recorded: |(_, inverse): &(Vec<usize>, Vec<usize>),
                       g: &Tensor<A>,
                       _: &Primal<'_, A>| { g.permute(inverse) },
            jvp: |(axes, _): &(Vec<usize>, Vec<usize>), t: &[Option<&ArrayD<A>>]| {
                Ok(only(t).clone().permuted_axes(IxDyn(axes)))
            },
        };
        Ok(record_one("permute", self, value, rules))
    }

    /// Reverses the axes (the matrix transpose for 2-D).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the tensor is not 2-D; nothing is recorded.
    pub fn transpose(&self) -> Result<Tensor<A>> {
        let axes: Vec<usize> = (0..self.ndim()).rev().collect();
        self.permute(&axes)
    }

    /// Broadcasts to `shape` (NumPy rules). The VJP is the identity: the tape sums the
    /// gradient back to this tensor's shape, as for every broadcast.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`] if the shape does not broadcast to `shape`; nothing is
    /// recorded.
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor<A>> {
        if broadcast_shape("broadcast_to", self.shape(), shape)? != shape {
            return Err(Error::incompatible(
                "broadcast_to",
                self.shape(),
                shape,
                "the target shape must contain the source shape",
            ));
        }
        let value = self
            .value()
            .broadcast(IxDyn(shape))
            .expect("checked broadcastable")
            .to_owned();
        let rules = Rules {
            saved: shape.to_vec(),
            // The tape sums the gradient back to the input's shape.
            vjp: |_: &Vec<usize>, g: ArrayD<A>, _: &[bool]| g,
            recorded: |_: &Vec<usize>, g: &Tensor<A>, _: &Primal<'_, A>| Ok(g.clone()),
            jvp: |shape: &Vec<usize>, t: &[Option<&ArrayD<A>>]| {
                Ok(only(t).broadcast(IxDyn(shape)).expect("checked").to_owned())
            },
        };
        Ok(record_one("broadcast_to", self, value, rules))
    }

    /// Joins tensors along `axis`; all other dimensions must agree.
    /// PyTorch: `torch.cat(tensors, dim=axis)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for no tensors or an axis out of range,
    /// [`Error::IncompatibleShapes`] if the shapes differ off `axis`, [`Error::DifferentTapes`];
    /// nothing is recorded.
    pub fn concat(tensors: &[&Tensor<A>], axis: usize) -> Result<Tensor<A>> {
        let Some(first) = tensors.first() else {
            return Err(Error::invalid("concat", &[], "no tensors to concatenate"));
        };
        if axis >= first.ndim() {
            return Err(Error::invalid(
                "concat",
                first.shape(),
                format!("axis {axis} out of range"),
            ));
        }
        for t in &tensors[1..] {
            let same_rank = t.ndim() == first.ndim();
            let agree =
                same_rank && (0..t.ndim()).all(|d| d == axis || t.shape()[d] == first.shape()[d]);
            if !agree {
                return Err(Error::incompatible(
                    "concat",
                    first.shape(),
                    t.shape(),
                    format!("dimensions other than axis {axis} must agree"),
                ));
            }
        }
        let views: Vec<_> = tensors.iter().map(|t| t.value().view()).collect();
        let value = ndarray::concatenate(Axis(axis), &views).expect("shapes checked");
        let shapes: Vec<Vec<usize>> = tensors.iter().map(|t| t.shape().to_vec()).collect();
        let rules = Rules {
            saved: (axis, shapes),
            vjp: |(axis, shapes): &(usize, Vec<Vec<usize>>), g: ArrayD<A>, needs: &[bool]| {
                let mut start = 0;
                shapes
                    .iter()
                    .zip(needs)
                    .map(|(shape, &need)| {
                        let part = Slice::from(start..start + shape[*axis]);
                        start += shape[*axis];
                        need.then(|| g.slice_axis(Axis(*axis), part).to_owned())
                    })
                    .collect()
            },
            recorded: |(axis, shapes): &(usize, Vec<Vec<usize>>),
                       g: &Tensor<A>,
                       p: &Primal<'_, A>| {
                let mut start = 0;
                let mut grads = Vec::with_capacity(shapes.len());
                for (i, shape) in shapes.iter().enumerate() {
                    let end = start + shape[*axis];
                    grads.push(
                        p.needs(i)
                            .then(|| g.slice_axis(*axis, start, end))
                            .transpose()?,
                    );
                    start = end;
                }
                Ok(grads)
            },
            jvp: |(axis, shapes): &(usize, Vec<Vec<usize>>), t: &[Option<&ArrayD<A>>]| {
                let parts: Vec<ArrayD<A>> = shapes
                    .iter()
                    .zip(t)
                    .map(|(shape, t)| t.cloned().unwrap_or_else(|| ArrayD::zeros(IxDyn(shape))))
                    .collect();
                let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
                Ok(ndarray::concatenate(Axis(*axis), &views).expect("shapes checked"))
            },
        };
        record_rules("concat", tensors, value, rules)
    }

    /// Elements `start..end` along `axis`. The VJP places the gradient back into zeros.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `axis` is out of range or `start..end` is not within it;
    /// nothing is recorded.
    pub fn slice_axis(&self, axis: usize, start: usize, end: usize) -> Result<Tensor<A>> {
        if axis >= self.ndim() || start > end || end > self.shape()[axis] {
            return Err(Error::invalid(
                "slice_axis",
                self.shape(),
                format!("cannot take {start}..{end} of axis {axis}"),
            ));
        }
        let range = Slice::from(start..end);
        let value = self.value().slice_axis(Axis(axis), range).to_owned();
        let rules = Rules {
            saved: (axis, start, end, self.shape().to_vec()),
            vjp: |&(axis, start, end, ref shape): &Slicing, g: ArrayD<A>, _: &[bool]| {
                let mut full = ArrayD::zeros(IxDyn(shape));
                full.slice_axis_mut(Axis(axis), Slice::from(start..end))
                    .assign(&g);
                full
            },
            recorded: |&(axis, start, end, ref shape): &Slicing,
                       g: &Tensor<A>,
                       _: &Primal<'_, A>| {
                // Zeros before and after, as constants: the gradient is placed between them.
                let zeros = |n: usize| {
                    let mut part = shape.clone();
                    part[axis] = n;
                    Tensor::constant(ArrayD::zeros(IxDyn(&part)))
                };
                let (before, after) = (zeros(start), zeros(shape[axis] - end));
                Tensor::concat(&[&before, g, &after], axis)
            },
            jvp: |&(axis, start, end, _): &Slicing, t: &[Option<&ArrayD<A>>]| {
                Ok(only(t)
                    .slice_axis(Axis(axis), Slice::from(start..end))
                    .to_owned())
            },
        };
        Ok(record_one("slice", self, value, rules))
    }

    /// Rows of a 2-D table `(n, d)` picked by integer `ids` of any shape: the result has
    /// shape `ids.shape() + [d]`. What an embedding lookup is. PyTorch: `table[ids]`.
    ///
    /// The VJP is a scatter-add: each row's gradient is the sum over the positions that
    /// looked it up, and a row never looked up gets exactly zero.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// use ndarray::{arr1, arr2};
    /// let table = Tensor::constant(arr2(&[[0.0f64, 0.5], [1.0, 1.5], [2.0, 2.5]]));
    /// let ids = arr1(&[2usize, 0, 2]);
    /// let rows = table.gather_rows(&ids)?;
    /// assert_eq!(rows.shape(), &[3, 2]);
    /// assert_eq!(rows.value()[[0, 1]], 2.5);
    /// assert!(table.gather_rows(&arr1(&[3usize])).is_err()); // id out of range
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the table is not 2-D, [`Error::IndexOutOfRange`] for an id
    /// `>=` the number of rows; nothing is recorded.
    pub fn gather_rows(&self, ids: impl IntoArray<usize>) -> Result<Tensor<A>> {
        let ids = ids.into_array();
        let [rows, width] = *self.shape() else {
            return Err(Error::invalid(
                "gather_rows",
                self.shape(),
                "expected a 2-D table",
            ));
        };
        if let Some(&bad) = ids.iter().find(|&&id| id >= rows) {
            return Err(Error::IndexOutOfRange {
                op: "gather_rows",
                index: bad,
                len: rows,
            });
        }
        let flat_ids: Vec<usize> = ids.iter().copied().collect();
        let picked = self.value().select(Axis(0), &flat_ids);
        let mut out_shape = ids.shape().to_vec();
        out_shape.push(width);
        let value = reshaped(picked, &out_shape);
        let rules = Rules {
            saved: Rows {
                ids: flat_ids,
                rows,
                width,
                out_shape,
            },
            vjp: |r: &Rows, g: ArrayD<A>, _: &[bool]| r.scatter(&g),
            recorded: |r: &Rows, g: &Tensor<A>, _: &Primal<'_, A>| Ok(r.scatter_rows(g)),
            jvp: |r: &Rows, t: &[Option<&ArrayD<A>>]| Ok(r.gather(only(t))),
        };
        Ok(record_one("gather_rows", self, value, rules))
    }
}

type Slicing = (usize, usize, usize, Vec<usize>);

/// Rows picked from a table `(rows, width)` by `ids`, and the picked tensor's shape.
#[derive(Clone)]
struct Rows {
    ids: Vec<usize>,
    rows: usize,
    width: usize,
    out_shape: Vec<usize>,
}

impl Rows {
    /// The picked rows of `table`, in the output's shape.
    fn gather<A: Float>(&self, table: &ArrayD<A>) -> ArrayD<A> {
        reshaped(table.select(Axis(0), &self.ids), &self.out_shape)
    }

    /// Each picked row's gradient added into its row of a zero table: the transpose of
    /// [`Rows::gather`].
    fn scatter<A: Float>(&self, g: &ArrayD<A>) -> ArrayD<A> {
        let g = reshaped(g.clone(), &[self.ids.len(), self.width]);
        let mut table = ArrayD::zeros(IxDyn(&[self.rows, self.width]));
        for (&id, row) in self.ids.iter().zip(g.outer_iter()) {
            let mut target = table.index_axis_mut(Axis(0), id);
            target += &row;
        }
        table
    }

    /// [`Rows::scatter`] as an op, whose VJP is the gather: what the recorded backward pass
    /// of `gather_rows` runs.
    fn scatter_rows<A: Float>(&self, g: &Tensor<A>) -> Tensor<A> {
        let rules = Rules {
            saved: self.clone(),
            vjp: |r: &Rows, g: ArrayD<A>, _: &[bool]| r.gather(&g),
            recorded: |r: &Rows, g: &Tensor<A>, _: &Primal<'_, A>| {
                g.gather_rows(ndarray::Array1::from(r.ids.clone()))?
                    .reshape(&r.out_shape)
            },
            jvp: |r: &Rows, t: &[Option<&ArrayD<A>>]| Ok(r.scatter(only(t))),
        };
        record_one("scatter_rows", g, self.scatter(g.value()), rules)
    }
}

/// One-hot encoding of integer labels: shape `labels.len() x classes`, a constant.
///
/// ```
/// let y = tapegrad::one_hot::<f64>(&[2, 0], 3)?;
/// assert_eq!(y.value().as_slice().unwrap(), &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
/// assert!(tapegrad::one_hot::<f64>(&[3], 3).is_err());
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::IndexOutOfRange`] for a label `>= classes`.
pub fn one_hot<A: Float>(labels: &[usize], classes: usize) -> Result<Tensor<A>> {
    let mut out = ArrayD::zeros(IxDyn(&[labels.len(), classes]));
    for (row, &label) in labels.iter().enumerate() {
        if label >= classes {
            return Err(Error::IndexOutOfRange {
                op: "one_hot",
                index: label,
                len: classes,
            });
        }
        out[[row, label]] = A::one();
    }
    Ok(Tensor::constant(out))
}
