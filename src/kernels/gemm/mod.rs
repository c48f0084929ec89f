//! The matrix products of `matmul`, the fused `linear` and the convolutions, forward and
//! backward, split over threads when large.
//!
//! A product is computed by the kernel path's library ([`backend`]) in shares of rows, each
//! share written by one thread straight into its rows of the one output (no halves to stitch
//! together). In backward, the two products of a matmul's VJP (`da = g bᵀ`, `db = aᵀ g`) are
//! independent and of equal size, so each gets half the threads. Small products stay on the
//! calling thread: a share of fewer than [`MIN_SHARE`] multiply-adds costs less than handing
//! it to another core.

mod backend;

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayView1, ArrayView2, ArrayViewMut2, Ix2, s};
use rayon::ThreadPool;

use crate::float::Float;
use crate::kernels::path::KernelPath;
use crate::kernels::threads;
use backend::Write;

/// The least work worth a thread: about 15 µs of one core at the machine's GEMM rate, against a
/// few µs to wake a worker thread (the benchmarks of `docs/performance.md`).
const MIN_SHARE: usize = 1 << 19;

/// A 2-D value as a matrix view; callers have checked the dimensionality.
pub(crate) fn matrix<A: Float>(a: &ArrayD<A>) -> ArrayView2<'_, A> {
    a.view()
        .into_dimensionality::<Ix2>()
        .expect("callers check that operands are matrices")
}

/// Where a product runs: the kernel path, read once on the calling thread (so a
/// [`KernelPath::run`] cap holds on the worker threads too), and the threads it may use.
#[derive(Clone, Copy)]
struct Plan<'p> {
    path: KernelPath,
    threads: usize,
    workers: Option<&'p ThreadPool>,
}

impl Plan<'_> {
    /// How many shares of rows a product of `rows` rows and `multiply_adds` gets.
    fn shares(&self, rows: usize, multiply_adds: usize) -> usize {
        (multiply_adds / MIN_SHARE)
            .min(self.threads)
            .min(rows)
            .max(1)
    }

    /// `a · b (+ bias on every row)`.
    fn product<A: Float>(
        self,
        a: ArrayView2<'_, A>,
        b: ArrayView2<'_, A>,
        bias: Option<ArrayView1<'_, A>>,
    ) -> Array2<A> {
        let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
        let mut out = Vec::with_capacity(m * n);
        let write = match bias {
            // The bias first, then the product accumulated onto it: no pass for `+ b`.
            Some(bias) => {
                let spare =
                    ArrayViewMut2::from_shape((m, n), &mut out.spare_capacity_mut()[..m * n])
                        .expect("m · n elements");
                write_rows(spare, bias);
                Write::Accumulate
            }
            // Uninitialised: the product writes every element before anything reads one.
            None => Write::Overwrite,
        };
        let shares = self.shares(m, m * k * n);
        let start = |share: usize| share * m / shares;
        let output = Output::new(&mut out, n);
        let path = self.path;
        threads::for_each(self.workers, shares, |share| {
            let rows = start(share)..start(share + 1);
            // SAFETY: shares have disjoint rows; with a bias every element was written
            // above, and without, `Overwrite` reads none.
            unsafe {
                backend::multiply(
                    path,
                    a.slice(s![rows.clone(), ..]),
                    b,
                    output.rows(rows),
                    write,
                )
            }
        });
        // SAFETY: the shares cover every row, and each product wrote each of its elements.
        unsafe { out.set_len(m * n) };
        Array2::from_shape_vec((m, n), out).expect("m · n elements")
    }
}

/// The row-major `(m, n)` output of a product, written by several threads, each its own rows.
struct Output<A> {
    start: *mut A,
    columns: usize,
}

// SAFETY: threads write disjoint rows (`Output::rows` is only called with disjoint ranges),
// and the buffer outlives them (`threads::for_each` returns after every share).
unsafe impl<A: Send> Send for Output<A> {}
unsafe impl<A: Send> Sync for Output<A> {}

impl<A> Output<A> {
    /// The output in `buffer`'s allocation (its capacity holds `m · columns` elements).
    fn new(buffer: &mut Vec<A>, columns: usize) -> Self {
        Output {
            start: buffer.as_mut_ptr(),
            columns,
        }
    }

    /// The pointer and row stride of `rows`.
    fn rows(&self, rows: Range<usize>) -> backend::Out<A> {
        backend::Out {
            // SAFETY: `rows` lies inside the buffer's capacity.
            start: unsafe { self.start.add(rows.start * self.columns) },
            row_stride: self.columns as isize,
        }
    }
}

/// Runs `f` with the plan in force on this thread.
fn with_plan<R>(f: impl FnOnce(Plan<'_>) -> R) -> R {
    let (threads, workers) = threads::current();
    f(Plan {
        path: KernelPath::current(),
        threads,
        workers: workers.as_deref(),
    })
}

/// Writes `bias` into every row of `out`.
fn write_rows<A: Float>(mut out: ArrayViewMut2<'_, MaybeUninit<A>>, bias: ArrayView1<'_, A>) {
    let bias = bias.to_vec();
    let write = |(element, &b): (&mut MaybeUninit<A>, &A)| {
        element.write(b);
    };
    for mut row in out.rows_mut() {
        // A contiguous row (as every caller's is) as a slice: one vectorised copy, not an
        // element-wise walk of ndarray's iterator.
        match row.as_slice_mut() {
            Some(row) => row.iter_mut().zip(&bias).for_each(write),
            None => row.iter_mut().zip(&bias).for_each(write),
        }
    }
}

/// The pointer and row stride of a view with unit column stride (rows or columns of a
/// larger output, say).
fn out_of<T, A>(out: &mut ArrayViewMut2<'_, T>) -> backend::Out<A> {
    // (An empty view may have any strides: ndarray gives zeros.)
    assert!(
        out.is_empty() || out.ncols() < 2 || out.strides()[1] == 1,
        "rows of unit column stride"
    );
    backend::Out {
        start: out.as_mut_ptr().cast(),
        row_stride: out.strides()[0],
    }
}

/// `out = a · b` on the calling thread, into a view that may be uninitialised (every element
/// is written, none read): for callers that split their work over the threads themselves
/// ([`in_shares`]), on the kernel path they were given. Afterwards every element of `out`
/// is initialised.
pub(crate) fn product_into<A: Float>(
    path: KernelPath,
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    mut out: ArrayViewMut2<'_, MaybeUninit<A>>,
) {
    assert_eq!(out.dim(), (a.nrows(), b.ncols()), "callers check shapes");
    let out = out_of(&mut out);
    // SAFETY: the view is valid and ours for the whole call; `Overwrite` reads none of it.
    unsafe { backend::multiply(path, a, b, out, Write::Overwrite) }
}

/// `out += a · b` on the calling thread, as [`product_into`] but onto `out`'s values.
pub(crate) fn product_add_into<A: Float>(
    path: KernelPath,
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    mut out: ArrayViewMut2<'_, A>,
) {
    assert_eq!(out.dim(), (a.nrows(), b.ncols()), "callers check shapes");
    let out = out_of(&mut out);
    // SAFETY: the view is valid, initialised and ours for the whole call.
    unsafe { backend::multiply(path, a, b, out, Write::Accumulate) }
}

/// `a · b` on the calling thread into `buffer`'s allocation (grown if need be; what it held
/// is dropped), returned as its row-major `(m, n)` elements: scratch products reused block
/// after block, with no zeroing.
pub(crate) fn product_in<'b, A: Float>(
    path: KernelPath,
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    buffer: &'b mut Vec<A>,
) -> &'b [A] {
    let (m, n) = (a.nrows(), b.ncols());
    buffer.clear();
    buffer.reserve(m * n);
    let out = ArrayViewMut2::from_shape((m, n), &mut buffer.spare_capacity_mut()[..m * n])
        .expect("m · n elements");
    product_into(path, a, b, out);
    // SAFETY: `product_into` wrote each of the `m · n` elements.
    unsafe { buffer.set_len(m * n) };
    buffer
}

/// Cuts `0..units` into shares worth a thread each (for `multiply_adds` of work in all),
/// makes one item per share with `items(shares)`, and runs `share(path, item)` for each on the
/// pool, the first on the caller. Items carry what a share writes (disjoint views).
pub(crate) fn in_shares<T: Send>(
    units: usize,
    multiply_adds: usize,
    items: impl FnOnce(&[Range<usize>]) -> Vec<T>,
    share: impl Fn(KernelPath, T) + Sync,
) {
    with_plan(|plan| {
        let count = plan.shares(units, multiply_adds);
        let ranges: Vec<_> = (0..count)
            .map(|i| i * units / count..(i + 1) * units / count)
            .collect();
        threads::for_each_item(plan.workers, items(&ranges), |item| share(plan.path, item));
    });
}

/// [`in_shares`] over the rows of `out`: each share gets its row range and those rows.
pub(crate) fn by_row_shares<T: Send>(
    out: ArrayViewMut2<'_, T>,
    multiply_adds: usize,
    share: impl Fn(KernelPath, Range<usize>, ArrayViewMut2<'_, T>) + Sync,
) {
    let rows = out.nrows();
    let items = |ranges: &[Range<usize>]| {
        let mut rest = out;
        let mut items = Vec::with_capacity(ranges.len());
        for range in ranges {
            let (piece, tail) = rest.split_at(ndarray::Axis(0), range.len());
            items.push((range.clone(), piece));
            rest = tail;
        }
        items
    };
    in_shares(rows, multiply_adds, items, |path, (range, piece)| {
        share(path, range, piece)
    });
}

/// `a · b (+ bias on every row)` for shared matrices `a (m, k)`, `b (k, n)`, `bias (n)`.
pub(crate) fn forward<A: Float>(
    a: Arc<ArrayD<A>>,
    b: Arc<ArrayD<A>>,
    bias: Option<Arc<ArrayD<A>>>,
) -> Array2<A> {
    let n = b.shape()[1];
    let bias = bias
        .as_ref()
        .map(|bias| bias.view().into_shape_with_order(n).expect("(n)"));
    with_plan(|plan| plan.product(matrix(&a), matrix(&b), bias))
}

/// The VJP products of `a · b` with output gradient `g (m, n)`: `da = g bᵀ` and `db = aᵀ g`,
/// each only if wanted.
pub(crate) fn backward<A: Float>(
    g: ArrayD<A>,
    a: Arc<ArrayD<A>>,
    b: Arc<ArrayD<A>>,
    wanted: (bool, bool),
) -> (Option<Array2<A>>, Option<Array2<A>>) {
    let (g, a, b) = (matrix(&g), matrix(&a), matrix(&b));
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    with_plan(|plan| {
        let da = |plan: Plan<'_>| plan.product(g, b.t(), None);
        let db = |plan: Plan<'_>| plan.product(a.t(), g, None);
        match wanted {
            (true, true) if plan.shares(m.min(k), m * k * n) > 1 => {
                // Half the threads each; each product splits its half further if it has more
                // than one.
                let half = Plan {
                    threads: plan.threads / 2,
                    ..plan
                };
                let rest = Plan {
                    threads: plan.threads - half.threads,
                    ..plan
                };
                let (db, da) = threads::join(plan.workers, || db(half), || da(rest));
                (Some(da), Some(db))
            }
            (true, true) => (Some(da(plan)), Some(db(plan))),
            (true, false) => (Some(da(plan)), None),
            (false, true) => (None, Some(db(plan))),
            (false, false) => (None, None),
        }
    })
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

    /// Sizes on both sides of `MIN_SHARE`, odd row counts (uneven shares), and empty ones.
    const SHAPES: [(usize, usize, usize); 5] = [
        (3, 4, 5),
        (129, 97, 101),
        (300, 64, 70),
        (1031, 257, 9),
        (0, 3, 2),
    ];

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

    #[test]
    fn products_into_scratch_write_every_element_and_read_none() {
        for (m, k, n) in SHAPES {
            let (a, b) = (filled(&[m, k], 1.0), filled(&[k, n], 2.0));
            let (a, b) = (matrix(&a), matrix(&b));
            let expected = a.dot(&b);
            // A used buffer full of NaN: any element read or left unwritten shows.
            let mut buffer = vec![f64::NAN; m * n + 7];
            let got = product_in(KernelPath::Portable, a, b, &mut buffer);
            let got = Array2::from_shape_vec((m, n), got.to_vec()).unwrap();
            assert!(close(&got, &expected));
            let mut out = Array2::from_elem((m, n), MaybeUninit::new(f64::NAN));
            product_into(KernelPath::Portable, a, b, out.view_mut());
            // SAFETY: initialised (with NaN) from the start.
            assert!(close(&unsafe { out.assume_init() }, &expected));
        }
    }

    #[test]
    fn shares_are_never_smaller_than_the_minimum_nor_more_than_the_threads() {
        let plan = Plan {
            path: KernelPath::Portable,
            threads: 4,
            workers: None,
        };
        assert_eq!(plan.shares(512, MIN_SHARE - 1), 1);
        assert_eq!(plan.shares(512, 2 * MIN_SHARE), 2);
        assert_eq!(plan.shares(512, 100 * MIN_SHARE), 4);
        assert_eq!(plan.shares(3, 100 * MIN_SHARE), 3);
        assert_eq!(plan.shares(0, 0), 1);
    }
}
