//! Elementwise functions of two arrays under NumPy broadcasting, with the broadcasts a
//! network makes most (a whole array against one row of features, or one value) on two
//! fixed dimensions.

use ndarray::{ArrayD, ArrayView2, IxDyn, Zip};

use crate::error::Result;
use crate::float::Float;
use crate::shape::broadcast_shape;

/// `f` applied to the broadcast of `a` and `b`.
pub(crate) fn zip_broadcast<A: Float>(
    op: &'static str,
    a: &ArrayD<A>,
    b: &ArrayD<A>,
    f: impl Fn(A, A) -> A,
) -> Result<ArrayD<A>> {
    let shape = broadcast_shape(op, a.shape(), b.shape())?;
    if let (Some(a2), Some(b2)) = (as_rows(a, &shape), as_rows(b, &shape)) {
        return Ok(zip_rows(a2, b2, &shape, f));
    }
    let shape = IxDyn(&shape);
    // Both views broadcast to `shape`, which `broadcast_shape` has just validated.
    let (Some(a), Some(b)) = (a.broadcast(shape.clone()), b.broadcast(shape)) else {
        unreachable!("{op}: shapes were checked broadcastable");
    };
    Ok(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
}

/// An operand of a broadcast to `shape` as a matrix of rows of `shape`'s last dimension:
/// `(rows, columns)` if it has the whole shape, `(1, columns)` if it is one row broadcast
/// (a per-feature vector, a statistic kept over the other axes), `(1, 1)` for one value;
/// `None` for another broadcast, or an array not in standard layout. The common broadcasts
/// of a network then run with two fixed dimensions instead of a dynamic rank, whose index
/// arithmetic ndarray pays for every row.
fn as_rows<'a, A: Float>(x: &'a ArrayD<A>, shape: &[usize]) -> Option<ArrayView2<'a, A>> {
    let columns = shape.last().copied().unwrap_or(1);
    let values = x.as_slice()?;
    let dims = if x.shape() == shape {
        (x.len() / columns.max(1), columns)
    } else if x.len() == 1 {
        (1, 1)
    } else if x.shape().last() == Some(&columns) && x.len() == columns {
        (1, columns)
    } else {
        return None;
    };
    ArrayView2::from_shape(dims, values).ok()
}

fn zip_rows<A: Float>(
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    shape: &[usize],
    f: impl Fn(A, A) -> A,
) -> ArrayD<A> {
    let rows = shape.iter().rev().skip(1).product::<usize>();
    let dims = (rows, shape.last().copied().unwrap_or(1));
    let (a, b) = (
        a.broadcast(dims).expect("rows"),
        b.broadcast(dims).expect("rows"),
    );
    Zip::from(&a)
        .and(&b)
        .map_collect(|&x, &y| f(x, y))
        .into_shape_with_order(IxDyn(shape))
        .expect("the broadcast shape")
}
