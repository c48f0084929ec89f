//! Shape arithmetic: NumPy broadcasting forward, and its adjoint, summing back to a shape.
//!
//! [`sum_to_shape`] is the one place where broadcast gradients are reduced: the tape calls it
//! when it accumulates a gradient into a node whose shape is smaller than the gradient's.
//! No VJP sums to shape on its own.

use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn};

use crate::error::{Error, Result};
use crate::float::Float;

/// The NumPy broadcast of two shapes: align on the right; each pair of dimensions must be
/// equal or contain a 1.
pub(crate) fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        // Dimension i of the rank-aligned shape, with implicit leading 1s.
        if i + s.len() < rank {
            1
        } else {
            s[i + s.len() - rank]
        }
    };
    let shape = (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(Error::incompatible(op, a, b, "not broadcastable")),
        })
        .collect::<Result<Vec<usize>>>()?;
    element_count::<f64>(op, &shape)?;
    Ok(shape)
}

/// Checks that an array of `shape` can exist: ndarray requires the product of its nonzero
/// dimensions, in bytes, to fit in `isize` (even when another dimension is 0). Returns the
/// number of elements. Shapes that come from a user or a file pass here before anything is
/// allocated, so that `[2^32, 2^32]` is an error naming the op, not a wrapped product or a
/// panic.
pub(crate) fn element_count<A>(op: &'static str, shape: &[usize]) -> Result<usize> {
    let limit = isize::MAX as usize / std::mem::size_of::<A>().max(1);
    let nonzero = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d.max(1)))
        .filter(|&n| n <= limit);
    match nonzero {
        Some(_) => Ok(shape.iter().product()),
        None => Err(Error::invalid(
            op,
            shape,
            "no array of this shape fits in memory (its element count overflows)",
        )),
    }
}

/// Sums `grad` down to `shape`, undoing a broadcast from `shape` to `grad.shape()`.
///
/// Leading dimensions that the broadcast added are summed away; dimensions where `shape`
/// has 1 and the gradient does not are summed with the 1 kept.
pub(crate) fn sum_to_shape<A: Float>(grad: ArrayD<A>, shape: &[usize]) -> ArrayD<A> {
    if grad.shape() == shape {
        return grad;
    }
    let extra = grad.ndim() - shape.len();
    let mut g = grad;
    for _ in 0..extra {
        g = g.sum_axis(Axis(0));
    }
    for (axis, &n) in shape.iter().enumerate() {
        if n == 1 && g.shape()[axis] != 1 {
            g = g.sum_axis(Axis(axis)).insert_axis(Axis(axis));
        }
    }
    g
}

/// Checks a list of axes against a rank: each in range, none repeated. Returns them sorted.
pub(crate) fn check_axes(op: &'static str, shape: &[usize], axes: &[usize]) -> Result<Vec<usize>> {
    let mut sorted = axes.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != axes.len() {
        return Err(Error::invalid(
            op,
            shape,
            format!("repeated axis in {axes:?}"),
        ));
    }
    if let Some(&bad) = sorted.iter().find(|&&a| a >= shape.len()) {
        return Err(Error::invalid(
            op,
            shape,
            format!("axis {bad} out of range for rank {}", shape.len()),
        ));
    }
    Ok(sorted)
}

/// `shape` with every axis in `axes` set to 1 (the keep-dims shape of a reduction).
pub(crate) fn keep_dims_shape(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &n)| if axes.contains(&i) { 1 } else { n })
        .collect()
}

/// The same array in standard (row-major, contiguous) layout: itself when it already is,
/// a copy otherwise, so that kernels can run over plain slices.
pub(crate) fn standard_layout<A: Float>(a: ArrayD<A>) -> ArrayD<A> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// [`standard_layout`] for a shared array: still shared when nothing has to be copied.
pub(crate) fn standard_layout_shared<A: Float>(a: Arc<ArrayD<A>>) -> Arc<ArrayD<A>> {
    if a.is_standard_layout() {
        a
    } else {
        Arc::new(a.as_standard_layout().into_owned())
    }
}

/// Reshapes an array that may not be in standard layout, copying only when it must.
pub(crate) fn reshaped<A: Float>(a: ArrayD<A>, shape: &[usize]) -> ArrayD<A> {
    standard_layout(a)
        .into_shape_with_order(IxDyn(shape))
        .expect("reshaped: caller checked the element count")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    #[test]
    fn broadcast_follows_numpy() {
        assert_eq!(
            broadcast_shape("t", &[2, 1, 3], &[4, 1]).unwrap(),
            vec![2, 4, 3]
        );
        assert_eq!(broadcast_shape("t", &[], &[5]).unwrap(), vec![5]);
        assert!(broadcast_shape("t", &[2, 3], &[3, 2]).is_err());
    }

    #[test]
    fn sum_to_shape_is_the_adjoint_of_broadcast() {
        // Broadcasting [1, 3] to [2, 2, 3] copies each element 4 times, so the adjoint of a
        // gradient of ones is 4 everywhere.
        let g = ArrayD::<f64>::ones(IxDyn(&[2, 2, 3]));
        let s = sum_to_shape(g, &[1, 3]);
        assert_eq!(s.shape(), &[1, 3]);
        assert!(s.iter().all(|&v| v == 4.0));
    }
}
