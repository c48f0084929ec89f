//! The per-row loops of the fused kernels, one function each. Each takes one row and
//! per-feature vectors, all of one length: it re-slices them to that length first, so the
//! compiler drops the bounds checks and vectorises the loop. They are `inline(always)` so that
//! callers running them inside [`vectorized`](crate::kernels::simd::vectorized) get the AVX2
//! copy.

use std::mem::MaybeUninit;

use crate::float::Float;

/// `sums += row`.
#[inline(always)]
pub(crate) fn add<A: Float>(sums: &mut [A], row: &[A]) {
    let n = sums.len();
    let row = &row[..n];
    for j in 0..n {
        sums[j] += row[j];
    }
}

/// `sums += (row − mean)²`.
#[inline(always)]
pub(crate) fn add_squared_deviation<A: Float>(sums: &mut [A], row: &[A], mean: &[A]) {
    let n = sums.len();
    let (row, mean) = (&row[..n], &mean[..n]);
    for j in 0..n {
        let d = row[j] - mean[j];
        sums[j] += d * d;
    }
}

/// Writes `(row − mean) · slope + offset` into the uninitialised `out`, through `max(·, 0)`
/// if `relu`.
///
/// ReLU is applied to the value before its one store: as a pass of its own over the output
/// (`y = if y > 0 { y } else { 0 }`), LLVM compiles it to a masked store of the zeros
/// (`vmaskmovps`), which some CPUs run in microcode (docs/performance.md has the cost).
/// Writing into uninitialised memory, rather than zero-filling a buffer and overwriting it,
/// writes each output once.
#[inline(always)]
pub(crate) fn write_affine<A: Float>(
    out: &mut [MaybeUninit<A>],
    row: &[A],
    [mean, slope, offset]: [&[A]; 3],
    relu: bool,
) {
    let n = out.len();
    let (row, mean, slope, offset) = (&row[..n], &mean[..n], &slope[..n], &offset[..n]);
    let affine = |j: usize| (row[j] - mean[j]) * slope[j] + offset[j];
    if relu {
        for (j, out) in out.iter_mut().enumerate() {
            out.write(positive_part(affine(j)));
        }
    } else {
        for (j, out) in out.iter_mut().enumerate() {
            out.write(affine(j));
        }
    }
}

/// `max(z, 0)` as a select that keeps NaN (as `relu` does), which vectorises where `max` may
/// not.
#[inline(always)]
fn positive_part<A: Float>(z: A) -> A {
    if z < A::zero() { A::zero() } else { z }
}

/// ReLU's backward, read off its output `y`: `g · [y > 0]`. Only ever computed into a value
/// that is then used, never stored back over `g` (that would be the masked store again).
#[inline(always)]
fn through_relu<A: Float>(g: A, y: A) -> A {
    if y > A::zero() { g } else { A::zero() }
}

/// `Σg'`, `Σ g' x̂` and `Σx̂` accumulated over one row, with `x̂ = (x − mean) · inv_std` and
/// `g'` the row's gradient `g`, through the ReLU if `relu_output` is its output row.
#[inline(always)]
pub(crate) fn add_backward_sums<A: Float>(
    [sum_g, sum_g_xhat, sum_xhat]: [&mut [A]; 3],
    g: &[A],
    relu_output: Option<&[A]>,
    x: &[A],
    [mean, inv_std]: [&[A]; 2],
) {
    let n = sum_g.len();
    let (sum_g_xhat, sum_xhat, g, x, mean, inv_std) = (
        &mut sum_g_xhat[..n],
        &mut sum_xhat[..n],
        &g[..n],
        &x[..n],
        &mean[..n],
        &inv_std[..n],
    );
    let mut add = |j: usize, g: A| {
        let x_hat = (x[j] - mean[j]) * inv_std[j];
        sum_g[j] += g;
        sum_g_xhat[j] += g * x_hat;
        sum_xhat[j] += x_hat;
    };
    match relu_output {
        Some(y) => {
            for (j, (&g, &y)) in g.iter().zip(&y[..n]).enumerate() {
                add(j, through_relu(g, y));
            }
        }
        None => {
            for (j, &g) in g.iter().enumerate() {
                add(j, g);
            }
        }
    }
}

/// The per-feature sums of backward, over the batch of `count` rows.
pub(crate) struct Sums<'a, A> {
    pub(crate) count: A,
    pub(crate) g: &'a [A],
    pub(crate) g_xhat: &'a [A],
    /// `Σx̂ / N`: zero in exact arithmetic, and in floating point the rounding of `μ` seen
    /// through `1/√(σ²+ε)`.
    pub(crate) xhat_mean: &'a [A],
}

/// `g ← c · (N g' − Σg' − (x̂ − Σx̂/N) Σ(g' x̂))`, in place, with `c = γ / (N √(σ²+ε))` and
/// `g'` as in [`add_backward_sums`]. `Σx̂/N` is zero in exact arithmetic; subtracting the
/// computed one makes the rows of `dx` sum to zero up to their own roundings, as the exact
/// gradient does (a shift of the batch changes nothing). Without it, a rounded `μ` leaves
/// `Σ dx ≈ c N (Σx̂/N) Σ(g' x̂)`, which for features with a large offset and a small spread
/// (`|μ| ≫ σ`) is far above rounding: it is the whole gradient of a bias before the
/// normalisation, which should be zero.
#[inline(always)]
pub(crate) fn input_gradient<A: Float>(
    g: &mut [A],
    relu_output: Option<&[A]>,
    x: &[A],
    [mean, inv_std, coefficient]: [&[A]; 3],
    sums: &Sums<'_, A>,
) {
    let n = g.len();
    let (x, mean, inv_std, coefficient) = (&x[..n], &mean[..n], &inv_std[..n], &coefficient[..n]);
    let (sum_g, sum_g_xhat, xhat_mean) = (&sums.g[..n], &sums.g_xhat[..n], &sums.xhat_mean[..n]);
    let dx = |j: usize, g: A| {
        let x_hat = (x[j] - mean[j]) * inv_std[j] - xhat_mean[j];
        coefficient[j] * (sums.count * g - sum_g[j] - x_hat * sum_g_xhat[j])
    };
    match relu_output {
        Some(y) => {
            for (j, (g, &y)) in g.iter_mut().zip(&y[..n]).enumerate() {
                *g = dx(j, through_relu(*g, y));
            }
        }
        None => {
            for (j, g) in g.iter_mut().enumerate() {
                *g = dx(j, *g);
            }
        }
    }
}
