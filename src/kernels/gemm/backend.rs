//! One product `out (+)= a · b` on the calling thread, by the library of the kernel path.
//!
//! * [`KernelPath::Portable`] and [`KernelPath::Avx2`]: `matrixmultiply` (what ndarray's
//!   `dot` uses; it picks its own AVX2 + FMA kernels at run time). On an AVX2 CPU (AMD Zen 3)
//!   it ran the training step faster than the `gemm` crate's AVX2 kernels: L 36 against
//!   47 ms (`docs/performance.md`). The portable path is the reference the others are
//!   tested against.
//! * [`KernelPath::Avx512`]: the `gemm` crate's AVX-512 micro-kernels (built with its
//!   `x86-v4` feature; `matrixmultiply` has none, and on an AVX-512 Xeon reached a third of
//!   a BLAS's rate).
//! * With tapegrad's `openblas` feature, the vector paths use the system's OpenBLAS instead.
//!
//! Each writes `out` through a raw pointer, so the output may be uninitialised memory: none
//! of them reads `out` unless asked to accumulate into it (`matrixmultiply` and `gemm`
//! document that a zero `beta`/`alpha` means `out` is not read; cblas likewise for `beta = 0`).

use std::any::TypeId;

use ndarray::ArrayView2;

use crate::float::Float;
use crate::kernels::path::KernelPath;

/// Whether the product overwrites `out` or adds to it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Write {
    /// `out = a · b`; `out` may be uninitialised.
    Overwrite,
    /// `out += a · b`; `out` must be initialised.
    Accumulate,
}

/// A row-major `(m, n)` output: its first element and the distance between rows.
pub(crate) struct Out<A> {
    pub(crate) start: *mut A,
    pub(crate) row_stride: isize,
}

/// `out (+)= a · b` for `a (m, k)` and `b (k, n)` (any strides) and `out (m, n)`.
///
/// # Safety
/// `out` must be valid for writes of `m` rows of `n` elements, written by no one else
/// meanwhile; with [`Write::Accumulate`] they must be initialised.
pub(crate) unsafe fn multiply<A: Float>(
    path: KernelPath,
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    out: Out<A>,
    write: Write,
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    debug_assert_eq!(b.nrows(), k, "callers check shapes");
    if m == 0 || n == 0 {
        return;
    }
    let (out, out_rs, out_cs) = (out.start, out.row_stride, 1);
    // SAFETY (all three): the pointers and strides describe the views' own elements and the
    // caller's output, which is read only when `write` is `Accumulate`.
    match path {
        KernelPath::Portable => unsafe { matrixmultiply_gemm(a, b, out, out_rs, out_cs, write) },
        #[cfg(feature = "openblas")]
        _ => unsafe { openblas::gemm(a, b, out, out_rs, out_cs, write) },
        #[cfg(not(feature = "openblas"))]
        KernelPath::Avx2 => unsafe { matrixmultiply_gemm(a, b, out, out_rs, out_cs, write) },
        #[cfg(not(feature = "openblas"))]
        KernelPath::Avx512 => unsafe { gemm_crate(a, b, out, out_rs, out_cs, write) },
    }
}

/// The `f32` or `f64` function of a pair, for `A` (a sealed trait of those two types).
macro_rules! by_type {
    ($a:ty, $f32:expr, $f64:expr) => {
        if TypeId::of::<$a>() == TypeId::of::<f32>() {
            $f32
        } else {
            debug_assert_eq!(TypeId::of::<$a>(), TypeId::of::<f64>());
            $f64
        }
    };
}

unsafe fn matrixmultiply_gemm<A: Float>(
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    out: *mut A,
    out_rs: isize,
    out_cs: isize,
    write: Write,
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let (a_rs, a_cs, b_rs, b_cs) = (
        a.strides()[0],
        a.strides()[1],
        b.strides()[0],
        b.strides()[1],
    );
    let beta = if write == Write::Accumulate { 1.0 } else { 0.0 };
    // The same call for both types: `$gemm` is `sgemm` or `dgemm`, `$float` its type.
    macro_rules! call {
        ($gemm:path, $float:ty) => {
            $gemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr().cast(),
                a_rs,
                a_cs,
                b.as_ptr().cast(),
                b_rs,
                b_cs,
                beta as $float,
                out.cast(),
                out_rs,
                out_cs,
            )
        };
    }
    // SAFETY: `A` is the type named by the branch (checked by `by_type!`), so the casts are
    // identities; the rest is the caller's contract.
    unsafe {
        by_type!(
            A,
            call!(matrixmultiply::sgemm, f32),
            call!(matrixmultiply::dgemm, f64)
        )
    }
}

#[cfg(not(feature = "openblas"))]
unsafe fn gemm_crate<A: Float>(
    a: ArrayView2<'_, A>,
    b: ArrayView2<'_, A>,
    out: *mut A,
    out_rs: isize,
    out_cs: isize,
    write: Write,
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    // The kernels the `gemm` crate dispatches to for `f32` and `f64` (its crates `gemm-f32`
    // and `gemm-f64`, without its complex and half-precision ones, which tapegrad never
    // calls). They compute `out = alpha · out + beta · a · b`, reading `out` only when asked.
    macro_rules! product {
        ($kernel:path, $t:ty) => {
            // SAFETY: as for `multiply`; `A` is `$t` (checked by the caller's `TypeId`), so
            // the casts only name the type the pointers already have.
            unsafe {
                $kernel()(
                    m,
                    n,
                    k,
                    out.cast::<$t>(),
                    out_cs,
                    out_rs,
                    write == Write::Accumulate,
                    a.as_ptr().cast::<$t>(),
                    a.strides()[1],
                    a.strides()[0],
                    b.as_ptr().cast::<$t>(),
                    b.strides()[1],
                    b.strides()[0],
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    // tapegrad splits large products over its own threads (`threads.rs`).
                    gemm_common::Parallelism::None,
                )
            }
        };
    }
    if std::any::TypeId::of::<A>() == std::any::TypeId::of::<f32>() {
        product!(gemm_f32::gemm::f32::get_gemm_fn, f32);
    } else {
        debug_assert_eq!(std::any::TypeId::of::<A>(), std::any::TypeId::of::<f64>());
        product!(gemm_f64::gemm::f64::get_gemm_fn, f64);
    }
}

#[cfg(feature = "openblas")]
mod openblas {
    //! The system's OpenBLAS, through its cblas interface, on one thread per call (tapegrad's
    //! pool splits large products; OpenBLAS's own threads would oversubscribe the cores).

    use std::any::TypeId;
    use std::sync::Once;

    use ndarray::{Array2, ArrayView2};

    use crate::float::Float;
    use crate::kernels::gemm::backend::Write;

    const ROW_MAJOR: i32 = 101;
    const NO_TRANS: i32 = 111;
    const TRANS: i32 = 112;

    /// `cblas_sgemm` and `cblas_dgemm`, which differ only in their float type.
    macro_rules! cblas_gemm {
        ($($name:ident: $float:ty),*) => {
            #[link(name = "openblas")]
            unsafe extern "C" {
                fn openblas_set_num_threads(threads: i32);
                $(fn $name(
                    order: i32,
                    ta: i32,
                    tb: i32,
                    m: i32,
                    n: i32,
                    k: i32,
                    alpha: $float,
                    a: *const $float,
                    lda: i32,
                    b: *const $float,
                    ldb: i32,
                    beta: $float,
                    c: *mut $float,
                    ldc: i32,
                );)*
            }
        };
    }
    cblas_gemm!(cblas_sgemm: f32, cblas_dgemm: f64);

    /// A matrix as cblas takes it: a pointer, whether it is transposed, its leading
    /// dimension; `copy` holds a standard-layout copy when the view has no unit stride.
    struct Operand<A> {
        copy: Option<Array2<A>>,
        transpose: i32,
        leading: i32,
    }

    fn operand<A: Float>(view: &ArrayView2<'_, A>) -> (Operand<A>, *const A) {
        let (rs, cs) = (view.strides()[0], view.strides()[1]);
        let fits = |stride: isize| i32::try_from(stride.max(1)).ok();
        if cs == 1
            && let Some(leading) = fits(rs.max(view.ncols() as isize))
        {
            return (
                Operand {
                    copy: None,
                    transpose: NO_TRANS,
                    leading,
                },
                view.as_ptr(),
            );
        }
        if rs == 1
            && let Some(leading) = fits(cs.max(view.nrows() as isize))
        {
            return (
                Operand {
                    copy: None,
                    transpose: TRANS,
                    leading,
                },
                view.as_ptr(),
            );
        }
        let copy = view.as_standard_layout().into_owned();
        let ptr = copy.as_ptr();
        let leading = view.ncols().max(1) as i32;
        (
            Operand {
                copy: Some(copy),
                transpose: NO_TRANS,
                leading,
            },
            ptr,
        )
    }

    pub(super) unsafe fn gemm<A: Float>(
        a: ArrayView2<'_, A>,
        b: ArrayView2<'_, A>,
        out: *mut A,
        out_rs: isize,
        out_cs: isize,
        write: Write,
    ) {
        static ONE_THREAD: Once = Once::new();
        // SAFETY: a plain setter of OpenBLAS's.
        ONE_THREAD.call_once(|| unsafe { openblas_set_num_threads(1) });
        let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
        assert_eq!(out_cs, 1, "tapegrad's outputs are row-major");
        let fits = |d: usize| i32::try_from(d).is_ok();
        if !(fits(m) && fits(n) && fits(k) && fits(out_rs.max(n as isize) as usize)) {
            // cblas takes 32-bit dimensions: a larger product goes to matrixmultiply.
            // SAFETY: the caller's contract, unchanged.
            return unsafe { super::matrixmultiply_gemm(a, b, out, out_rs, out_cs, write) };
        }
        let (a_op, a_ptr) = operand(&a);
        let (b_op, b_ptr) = operand(&b);
        let ldc = out_rs.max(n as isize) as i32;
        let beta = if write == Write::Accumulate { 1.0 } else { 0.0 };
        let (m, n, k) = (m as i32, n as i32, k as i32);
        macro_rules! call {
            ($gemm:ident, $float:ty) => {
                $gemm(
                    ROW_MAJOR,
                    a_op.transpose,
                    b_op.transpose,
                    m,
                    n,
                    k,
                    1.0,
                    a_ptr.cast(),
                    a_op.leading,
                    b_ptr.cast(),
                    b_op.leading,
                    beta as $float,
                    out.cast(),
                    ldc,
                )
            };
        }
        // SAFETY: the operands point at the views (or their copies, alive until the end of
        // this function); `out` as for `multiply`.
        unsafe {
            if TypeId::of::<A>() == TypeId::of::<f32>() {
                call!(cblas_sgemm, f32);
            } else {
                call!(cblas_dgemm, f64);
            }
        }
        drop((a_op.copy, b_op.copy));
    }
}
