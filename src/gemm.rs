//! The matrix products of `matmul` and `linear`, forward and backward, on two cores when large.
//!
//! Each product runs in `matrixmultiply` (through ndarray) on one thread; a large one is cut in
//! two halves of rows, the second computed on the [`parallel`](crate::parallel) helper. In
//! backward, the two products of a matmul's VJP are independent and of equal size
//! (`da = g bᵀ`, `db = aᵀ g`), so each gets a core whole. Small products stay on the calling
//! thread: below [`LARGE`] multiply-adds, handing half to another core costs more than it
//! saves.

use std::ops::Range;
use std::sync::Arc;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayD, ArrayView2, ArrayViewMut2, Ix2, s};

use crate::Float;
use crate::parallel;

/// Products with at least this many multiply-adds use both cores (about 30 µs of one core).
const LARGE: usize = 1 << 20;

fn matrix<A: Float>(a: &ArrayD<A>) -> ArrayView2<'_, A> {
    a.view()
        .into_dimensionality::<Ix2>()
        .expect("callers check that operands are matrices")
}

/// An `(m, n)` result whose rows `fill(range, rows)` computes: all here for a small product,
/// the second half on the helper for a large one (`multiply_adds` says which).
fn by_rows<A: Float>(
    m: usize,
    n: usize,
    multiply_adds: usize,
    fill: impl Fn(Range<usize>, &mut ArrayViewMut2<'_, A>) + Send + Sync + 'static,
) -> Array2<A> {
    let mut out = Array2::zeros((m, n));
    if multiply_adds < LARGE || m < 2 {
        fill(0..m, &mut out.view_mut());
        return out;
    }
    let half = m / 2;
    let fill = Arc::new(fill);
    let helper_fill = Arc::clone(&fill);
    let (bottom, ()) = parallel::join(
        move || {
            let mut bottom = Array2::zeros((m - half, n));
            helper_fill(half..m, &mut bottom.view_mut());
            bottom
        },
        || fill(0..half, &mut out.slice_mut(s![..half, ..])),
    );
    out.slice_mut(s![half.., ..]).assign(&bottom);
    out
}

/// `a · b (+ bias on every row)` for shared matrices `a (m, k)`, `b (k, n)`, `bias (n)`.
pub(crate) fn forward<A: Float>(
    a: Arc<ArrayD<A>>,
    b: Arc<ArrayD<A>>,
    bias: Option<Arc<ArrayD<A>>>,
) -> Array2<A> {
    let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    by_rows(m, n, m * k * n, move |rows, out| {
        let beta = match &bias {
            Some(bias) => {
                // The bias first, then the product accumulated onto it: no pass for `+ b`.
                out.assign(&bias.view().into_shape_with_order(n).expect("(n)"));
                A::one()
            }
            None => A::zero(),
        };
        general_mat_mul(
            A::one(),
            &matrix(&a).slice(s![rows, ..]),
            &matrix(&b),
            beta,
            out,
        );
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
        move |rows: Range<usize>, out: &mut ArrayViewMut2<'_, A>| {
            let g_rows = matrix(&g).slice_move(s![rows, ..]);
            general_mat_mul(A::one(), &g_rows, &matrix(&b).t(), A::zero(), out);
        }
    };
    let db = move |rows: Range<usize>, out: &mut ArrayViewMut2<'_, A>| {
        let a_columns = matrix(&a).slice_move(s![.., rows]);
        general_mat_mul(A::one(), &a_columns.t(), &matrix(&g), A::zero(), out);
    };
    let multiply_adds = m * k * n;
    match wanted {
        (true, true) if multiply_adds >= LARGE => {
            let (db, da) = parallel::join(move || whole(k, n, &db), move || whole(m, k, &da));
            (Some(da), Some(db))
        }
        (true, true) => (Some(whole(m, k, &da)), Some(whole(k, n, &db))),
        (true, false) => (Some(by_rows(m, k, multiply_adds, da)), None),
        (false, true) => (None, Some(by_rows(k, n, multiply_adds, db))),
        (false, false) => (None, None),
    }
}

/// All rows of an `(m, n)` result on this thread.
fn whole<A: Float>(
    m: usize,
    n: usize,
    fill: &impl Fn(Range<usize>, &mut ArrayViewMut2<'_, A>),
) -> Array2<A> {
    let mut out = Array2::zeros((m, n));
    fill(0..m, &mut out.view_mut());
    out
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
