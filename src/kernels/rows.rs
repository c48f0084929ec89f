//! The per-row loops of the fused kernels, one function each. Each takes one row and
//! per-feature vectors, all of one length, and computes in blocks of [`LANES`] features:
//! each block's inputs are copied into local arrays, computed, and stored back whole. Run
//! inside [`vectorized`](crate::kernels::simd::vectorized) (they are `inline(always)`, so the
//! caller's AVX2 or AVX-512 copy gets them), each block becomes a few vector instructions.
//!
//! Why blocks rather than plain `for j in 0..n` loops, which LLVM vectorises too: a plain loop
//! over slices that might overlap is vectorised behind run-time overlap checks of every pair,
//! made again for every row, and LLVM kept the last 8 of a 64-feature row for a scalar loop;
//! callgrind counted 25 K instructions a step in `dx` of the S workload's two BatchNorms, of
//! which 6 K vector instructions (docs/performance.md). A block read whole
//! before it is written needs no such check. Every element's arithmetic is the same as in
//! the plain loop: features are never mixed, so the results are the same bits.

use std::mem::MaybeUninit;

use crate::float::Float;

/// The features a block holds: one AVX-512 register of `f32`, two AVX2 ones.
const LANES: usize = 16;

/// Where the whole blocks of a row of `n` features end; the features from there on are
/// computed one by one.
#[inline(always)]
fn whole_blocks(n: usize) -> usize {
    n / LANES * LANES
}

/// A copy of the block of `values` that starts at `at`.
#[inline(always)]
fn block<A: Copy>(values: &[A], at: usize) -> [A; LANES] {
    values[at..at + LANES].try_into().expect("a whole block")
}

/// `sums += row`.
#[inline(always)]
pub(crate) fn add<A: Float>(sums: &mut [A], row: &[A]) {
    let n = sums.len();
    let row = &row[..n];
    let whole = whole_blocks(n);
    for at in (0..whole).step_by(LANES) {
        let (mut sum, x) = (block(sums, at), block(row, at));
        for l in 0..LANES {
            sum[l] += x[l];
        }
        sums[at..at + LANES].copy_from_slice(&sum);
    }
    for j in whole..n {
        sums[j] += row[j];
    }
}

/// `sums += (row − mean)²`.
#[inline(always)]
pub(crate) fn add_squared_deviation<A: Float>(sums: &mut [A], row: &[A], mean: &[A]) {
    let n = sums.len();
    let (row, mean) = (&row[..n], &mean[..n]);
    let square = |x: A, m: A| {
        let d = x - m;
        d * d
    };
    let whole = whole_blocks(n);
    for at in (0..whole).step_by(LANES) {
        let (mut sum, x, m) = (block(sums, at), block(row, at), block(mean, at));
        for l in 0..LANES {
            sum[l] += square(x[l], m[l]);
        }
        sums[at..at + LANES].copy_from_slice(&sum);
    }
    for j in whole..n {
        sums[j] += square(row[j], mean[j]);
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
    per_feature: [&[A]; 3],
    relu: bool,
) {
    if relu {
        write_affine_then(out, row, per_feature, positive_part);
    } else {
        write_affine_then(out, row, per_feature, |z| z);
    }
}

/// [`write_affine`] with `epilogue` applied to each value before it is stored.
#[inline(always)]
fn write_affine_then<A: Float>(
    out: &mut [MaybeUninit<A>],
    row: &[A],
    [mean, slope, offset]: [&[A]; 3],
    epilogue: impl Fn(A) -> A,
) {
    let n = out.len();
    let (row, mean, slope, offset) = (&row[..n], &mean[..n], &slope[..n], &offset[..n]);
    let y = |x: A, m: A, s: A, o: A| epilogue((x - m) * s + o);
    let whole = whole_blocks(n);
    for at in (0..whole).step_by(LANES) {
        let (x, m, s, o) = (
            block(row, at),
            block(mean, at),
            block(slope, at),
            block(offset, at),
        );
        let mut ys = [A::zero(); LANES];
        for l in 0..LANES {
            ys[l] = y(x[l], m[l], s[l], o[l]);
        }
        out[at..at + LANES].copy_from_slice(&ys.map(MaybeUninit::new));
    }
    for j in whole..n {
        out[j].write(y(row[j], mean[j], slope[j], offset[j]));
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

/// The gradient as it is, for a node without ReLU: the second argument (the slot of ReLU's
/// output in [`through_relu`]) is not read.
#[inline(always)]
fn as_is<A: Float>(g: A, _unused: A) -> A {
    g
}

/// `Σg'`, `Σ g' x̂` and `Σx̂` accumulated over one row, with `x̂ = (x − mean) · inv_std` and
/// `g'` the row's gradient `g`, through the ReLU if `relu_output` is its output row.
#[inline(always)]
pub(crate) fn add_backward_sums<A: Float>(
    sums: [&mut [A]; 3],
    g: &[A],
    relu_output: Option<&[A]>,
    x: &[A],
    statistics: [&[A]; 2],
) {
    match relu_output {
        Some(y) => add_backward_sums_gated(sums, g, y, x, statistics, through_relu),
        // Without ReLU, `g` itself stands in the output's slot, where `as_is` never reads it.
        None => add_backward_sums_gated(sums, g, g, x, statistics, as_is),
    }
}

/// [`add_backward_sums`] with `g' = gate(g, y)`.
#[inline(always)]
fn add_backward_sums_gated<A: Float>(
    [sum_g, sum_g_xhat, sum_xhat]: [&mut [A]; 3],
    g: &[A],
    y: &[A],
    x: &[A],
    [mean, inv_std]: [&[A]; 2],
    gate: impl Fn(A, A) -> A,
) {
    let n = sum_g.len();
    let (sum_g_xhat, sum_xhat, g, y, x, mean, inv_std) = (
        &mut sum_g_xhat[..n],
        &mut sum_xhat[..n],
        &g[..n],
        &y[..n],
        &x[..n],
        &mean[..n],
        &inv_std[..n],
    );
    // The three terms one feature adds: `g'`, `g' x̂` and `x̂`.
    let terms = |g: A, y: A, x: A, m: A, s: A| {
        let (g, x_hat) = (gate(g, y), (x - m) * s);
        [g, g * x_hat, x_hat]
    };
    let whole = whole_blocks(n);
    for at in (0..whole).step_by(LANES) {
        let (gs, ys, xs, ms, ss) = (
            block(g, at),
            block(y, at),
            block(x, at),
            block(mean, at),
            block(inv_std, at),
        );
        let (mut sg, mut sgx, mut sx) =
            (block(sum_g, at), block(sum_g_xhat, at), block(sum_xhat, at));
        for l in 0..LANES {
            let [a, b, c] = terms(gs[l], ys[l], xs[l], ms[l], ss[l]);
            sg[l] += a;
            sgx[l] += b;
            sx[l] += c;
        }
        sum_g[at..at + LANES].copy_from_slice(&sg);
        sum_g_xhat[at..at + LANES].copy_from_slice(&sgx);
        sum_xhat[at..at + LANES].copy_from_slice(&sx);
    }
    for j in whole..n {
        let [a, b, c] = terms(g[j], y[j], x[j], mean[j], inv_std[j]);
        sum_g[j] += a;
        sum_g_xhat[j] += b;
        sum_xhat[j] += c;
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
    per_feature: [&[A]; 3],
    sums: &Sums<'_, A>,
) {
    match relu_output {
        Some(y) => input_gradient_gated(g, y, x, per_feature, sums, through_relu),
        // Without ReLU, `x` stands in the output's slot, where `as_is` never reads it.
        None => input_gradient_gated(g, x, x, per_feature, sums, as_is),
    }
}

/// [`input_gradient`] with `g' = gate(g, y)`.
#[inline(always)]
fn input_gradient_gated<A: Float>(
    g: &mut [A],
    y: &[A],
    x: &[A],
    [mean, inv_std, coefficient]: [&[A]; 3],
    sums: &Sums<'_, A>,
    gate: impl Fn(A, A) -> A,
) {
    let n = g.len();
    let (y, x, mean, inv_std, coefficient) = (
        &y[..n],
        &x[..n],
        &mean[..n],
        &inv_std[..n],
        &coefficient[..n],
    );
    let (sum_g, sum_g_xhat, xhat_mean) = (&sums.g[..n], &sums.g_xhat[..n], &sums.xhat_mean[..n]);
    let count = sums.count;
    // One feature's `dx`, from its gradient, output, input, and per-feature values in the
    // order `μ, 1/√(σ²+ε), c, Σg', Σ(g' x̂), Σx̂/N`.
    let dx = |g: A, y: A, x: A, [m, s, c, sg, sgx, xm]: [A; 6]| {
        let x_hat = (x - m) * s - xm;
        c * (count * gate(g, y) - sg - x_hat * sgx)
    };
    let whole = whole_blocks(n);
    for at in (0..whole).step_by(LANES) {
        let (mut gs, ys, xs) = (block(g, at), block(y, at), block(x, at));
        let (m, s, c) = (block(mean, at), block(inv_std, at), block(coefficient, at));
        let (sg, sgx, xm) = (
            block(sum_g, at),
            block(sum_g_xhat, at),
            block(xhat_mean, at),
        );
        for l in 0..LANES {
            gs[l] = dx(
                gs[l],
                ys[l],
                xs[l],
                [m[l], s[l], c[l], sg[l], sgx[l], xm[l]],
            );
        }
        g[at..at + LANES].copy_from_slice(&gs);
    }
    for j in whole..n {
        let per_feature = [
            mean[j],
            inv_std[j],
            coefficient[j],
            sum_g[j],
            sum_g_xhat[j],
            xhat_mean[j],
        ];
        g[j] = dx(g[j], y[j], x[j], per_feature);
    }
}
