//! The per-row loops of the fused kernels, one function each. Each takes one row and
//! per-feature vectors, all of one length: it re-slices them to that length first, so the
//! compiler drops the bounds checks and vectorises the loop. They are `inline(always)` so that
//! callers running them inside [`crate::simd::vectorized`] get the AVX2 copy.

use crate::Float;

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

/// `out = (row − mean) · slope + offset`.
#[inline(always)]
pub(crate) fn affine<A: Float>(out: &mut [A], row: &[A], mean: &[A], slope: &[A], offset: &[A]) {
    let n = out.len();
    let (row, mean, slope, offset) = (&row[..n], &mean[..n], &slope[..n], &offset[..n]);
    for j in 0..n {
        out[j] = (row[j] - mean[j]) * slope[j] + offset[j];
    }
}

/// `sums += g · x̂` with `x̂ = (x − mean) · inv_std`.
#[inline(always)]
pub(crate) fn add_gradient_times_normalized<A: Float>(
    sums: &mut [A],
    g: &[A],
    x: &[A],
    mean: &[A],
    inv_std: &[A],
) {
    let n = sums.len();
    let (g, x, mean, inv_std) = (&g[..n], &x[..n], &mean[..n], &inv_std[..n]);
    for j in 0..n {
        sums[j] += g[j] * (x[j] - mean[j]) * inv_std[j];
    }
}

/// The batch sums backward needs: `N`, `Σg'` and `Σ g' x̂` per feature.
pub(crate) struct Sums<'a, A> {
    pub(crate) count: A,
    pub(crate) g: &'a [A],
    pub(crate) g_xhat: &'a [A],
}

/// `g ← c · (N g − Σg − x̂ Σ(g x̂))`, in place, with `c = γ / (N √(σ²+ε))`.
#[inline(always)]
pub(crate) fn input_gradient<A: Float>(
    g: &mut [A],
    x: &[A],
    mean: &[A],
    inv_std: &[A],
    coefficient: &[A],
    sums: &Sums<'_, A>,
) {
    let n = g.len();
    let (x, mean, inv_std, coefficient) = (&x[..n], &mean[..n], &inv_std[..n], &coefficient[..n]);
    let (sum_g, sum_g_xhat) = (&sums.g[..n], &sums.g_xhat[..n]);
    for j in 0..n {
        let x_hat = (x[j] - mean[j]) * inv_std[j];
        g[j] = coefficient[j] * (sums.count * g[j] - sum_g[j] - x_hat * sum_g_xhat[j]);
    }
}

/// `row = max(row, 0)`, as a select rather than `max` so the loop vectorises (NaN maps to 0
/// either way).
#[inline(always)]
pub(crate) fn relu<A: Float>(row: &mut [A]) {
    for y in row {
        *y = if *y > A::zero() { *y } else { A::zero() };
    }
}

/// `g = g · [y > 0]`: ReLU's backward, read off its output `y`.
#[inline(always)]
pub(crate) fn relu_mask<A: Float>(g: &mut [A], y: &[A]) {
    let n = g.len();
    let y = &y[..n];
    for j in 0..n {
        g[j] = if y[j] > A::zero() { g[j] } else { A::zero() };
    }
}
