//! Shape ops: reshape, permute, broadcast, concat, slice, and gathering rows by id.

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;
use crate::shape::{broadcast_shape, element_count, reshaped};
use crate::tensor::Tensor;
use crate::tensor::{record, record_one};

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
        let input_shape = self.shape().to_vec();
        Ok(record_one("reshape", self, value, move |g| {
            reshaped(g, &input_shape)
        }))
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
        Ok(record_one("permute", self, value, move |g| {
            g.permuted_axes(IxDyn(&inverse))
        }))
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
        Ok(record_one("broadcast_to", self, value, |g| g))
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
        let sizes: Vec<usize> = tensors.iter().map(|t| t.shape()[axis]).collect();
        record("concat", tensors, value, move |g, needs| {
            let mut start = 0;
            sizes
                .iter()
                .zip(needs)
                .map(|(&n, &need)| {
                    let part = Slice::from(start..start + n);
                    start += n;
                    need.then(|| g.slice_axis(Axis(axis), part).to_owned())
                })
                .collect()
        })
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
        let input_shape = self.shape().to_vec();
        Ok(record_one("slice", self, value, move |g| {
            let mut full = ArrayD::zeros(IxDyn(&input_shape));
            full.slice_axis_mut(Axis(axis), range).assign(&g);
            full
        }))
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
        Ok(record_one("gather_rows", self, value, move |g| {
            let g = reshaped(g, &[flat_ids.len(), width]);
            let mut table = ArrayD::zeros(IxDyn(&[rows, width]));
            for (&id, row) in flat_ids.iter().zip(g.outer_iter()) {
                let mut target = table.index_axis_mut(Axis(0), id);
                target += &row;
            }
            table
        }))
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
