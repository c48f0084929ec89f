//! The matrix products of `matmul` and `linear`, forward and backward, on two cores when large.
//!
//! Each product runs in `matrixmultiply` (through ndarray) on one thread; a large one is cut in
//! two halves of rows, the second computed on the [`parallel`](crate::kernels::parallel) helper. In
//! backward, the two products of a matmul's VJP are independent and of equal size
//! (`da = g bᵀ`, `db = aᵀ g`), so each gets a core whole. Small products stay on the calling
//! thread: below [`LARGE`] multiply-adds, handing half to another core costs more than it
//! saves.

use std::ops::Range;
use std::sync::Arc;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayD, ArrayView2, Axis, Ix2, concatenate, s};

use crate::float::Float;
use crate::kernels::parallel;

/// Products with at least this many multiply-adds use both cores (about 30 µs of one core).
const LARGE: usize = 1 << 20;

/// A 2-D value as a matrix view; callers have checked the dimensionality.
pub(crate) fn matrix<A: Float>(a: &ArrayD<A>) -> ArrayView2<'_, A> {
    a.view()
        .into_dimensionality::<Ix2>()
        .expect("callers check that operands are matrices")
}

/// An `(m, ·)` result computed by `rows(range)` for ranges of its rows: all at once for a
/// small product, the second half on the helper for a large one (`multiply_adds` says
/// which), the halves then stacked (one copy of the result, much cheaper than the product).
fn by_rows<A: Float>(
    m: usize,
    multiply_adds: usize,
    rows: impl Fn(Range<usize>) -> Array2<A> + Send + Sync + 'static,
) -> Array2<A> {
    if multiply_adds < LARGE || m < 2 {
        return rows(0..m);
    }
    let half = m / 2;
    let rows = Arc::new(rows);
    let helper_rows = Arc::clone(&rows);
    let (bottom, top) = parallel::join(move || helper_rows(half..m), || rows(0..half));
    concatenate(Axis(0), &[top.view(), bottom.view()]).expect("halves of one result")
}

/// `a · b (+ bias on every row)` for shared matrices `a (m, k)`, `b (k, n)`, `bias (n)`.
pub(crate) fn forward<A: Float>(
    a: Arc<ArrayD<A>>,
    b: Arc<ArrayD<A>>,
    bias: Option<Arc<ArrayD<A>>>,
) -> Array2<A> {
    let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    by_rows(m, m * k * n, move |rows| {
        let a_rows = matrix(&a).slice_move(s![rows, ..]);
        let Some(bias) = &bias else {
            return a_rows.dot(&matrix(&b));
        };
        // The bias first, then the product accumulated onto it: no pass for `+ b`.
        let bias = bias.view().into_shape_with_order(n).expect("(n)");
        let mut out = bias
            .broadcast((a_rows.nrows(), n))
            .expect("a row broadcasts to rows")
            .to_owned();
        general_mat_mul(A::one(), &a_rows, &matrix(&b), A::one(), &mut out);
        out
    })
}

/// The VJP products of `a · b` with output gradient `g (m, n)`: `da = g bᵀ` and `db = aᵀ g`,
/// each only if wanted.
pub(crate) fn backward<A: Float>(
    g: ArrayD<A>,
    a: Arc<ArrayD<A>>,
    b: Arc<ArrayD<A>>,
    wanted: (bool, bool),
) -> (Option<Array2<A>>, Option<Array2<A>>) {
    let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    let g = Arc::new(g);
    let da = {
        let (g, b) = (Arc::clone(&g), Arc::clone(&b));
        move |rows: Range<usize>| matrix(&g).slice_move(s![rows, ..]).dot(&matrix(&b).t())
    };
    let db = move |rows: Range<usize>| {
        let a_columns = matrix(&a).slice_move(s![.., rows]);
        a_columns.t().dot(&matrix(&g))
    };
    let multiply_adds = m * k * n;
    match wanted {
        (true, true) if multiply_adds >= LARGE => {
            let (db, da) = parallel::join(move || db(0..k), move || da(0..m));
            (Some(da), Some(db))
        }
        (true, true) => (Some(da(0..m)), Some(db(0..k))),
        (true, false) => (Some(by_rows(m, multiply_adds, da)), None),
        (false, true) => (None, Some(by_rows(k, multiply_adds, db))),
        (false, false) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn filled(shape: &[usize], seed: f64) -> Arc<ArrayD<f64>> {
        let len: usize = shape.iter().product();
        let values = (0..len)
            .map(|i| ((i as f64 + seed) * 0.618).sin())
            .collect();
        Arc::new(ArrayD::from_shape_vec(IxDyn(shape), values).unwrap())
    }

    fn close(a: &Array2<f64>, b: &Array2<f64>) -> bool {
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    /// Sizes on both sides of `LARGE`, and odd row counts (uneven halves).
    const SHAPES: [(usize, usize, usize); 3] = [(3, 4, 5), (129, 97, 101), (300, 64, 70)];

    #[test]
    fn forward_equals_the_plain_product_plus_bias() {
        for (m, k, n) in SHAPES {
            let (a, b, bias) = (
                filled(&[m, k], 1.0),
                filled(&[k, n], 2.0),
                filled(&[n], 3.0),
            );
            let expected =
                matrix(&a).dot(&matrix(&b)) + bias.view().into_shape_with_order(n).unwrap();
            assert!(close(&forward(a.clone(), b.clone(), Some(bias)), &expected));
            assert!(close(
                &forward(a.clone(), b.clone(), None),
                &matrix(&a).dot(&matrix(&b))
            ));
        }
    }

    #[test]
    fn backward_equals_the_plain_products_whichever_are_wanted() {
        for (m, k, n) in SHAPES {
            let (a, b, g) = (
                filled(&[m, k], 1.0),
                filled(&[k, n], 2.0),
                filled(&[m, n], 4.0),
            );
            let da = matrix(&g).dot(&matrix(&b).t());
            let db = matrix(&a).t().dot(&matrix(&g));
            for wanted in [(true, true), (true, false), (false, true), (false, false)] {
                let (got_da, got_db) = backward((*g).clone(), a.clone(), b.clone(), wanted);
                assert_eq!((got_da.is_some(), got_db.is_some()), wanted);
                assert!(got_da.is_none_or(|d| close(&d, &da)));
                assert!(got_db.is_none_or(|d| close(&d, &db)));
            }
        }
    }
}
