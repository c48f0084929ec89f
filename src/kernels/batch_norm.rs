//! Training-mode batch normalisation over the rows of a `(N, F)` matrix, optionally followed
//! by ReLU: the loops of the fused `batch_norm` op (src/ops/normalize.rs), on slices.
//!
//! Per feature over the `N` rows: `μ = Σx/N`, `σ² = Σ(x−μ)²/N`, `x̂ = (x−μ)/√(σ²+ε)`,
//! `z = γ x̂ + β`, and `y = z` or `y = max(z, 0)`.
//!
//! Backward, with `g` the gradient of `y` and `g' = g · [y > 0]` (or `g' = g` without
//! ReLU): `dβ = Σg'`, `dγ = Σ g' x̂`, and since `x̂` depends on `x` through `μ` and `σ²` too,
//! ```text
//! dx = γ / (N √(σ²+ε)) · (N g' − Σg' − x̂ Σ(g' x̂))
//! ```
//! (computed with `x̂ − Σx̂/N` in place of `x̂`: equal in exact arithmetic, and it keeps the
//! rounding of `μ` out of `Σ dx`; see `rows::input_gradient`)
//! (the two sums remove the components of `g'` along the directions that normalisation
//! makes invisible: a shift of the batch and a scaling of it).
//!
//! How this differs from the composite definition, for speed: every loop runs along
//! contiguous rows of plain slices, so it vectorises; the backward pass keeps the input and
//! output the op already shares with its neighbours instead of a new `x̂` (recomputed in
//! backward); ReLU is applied to each value before it is stored, and its mask is read off
//! the output inside both backward passes; and backward writes `dx` into the incoming
//! gradient's buffer. Forward makes one new array and three passes, backward none and two.

use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array1, ArrayD};

use super::rows;
use crate::float::Float;
use crate::kernels::{chunks, simd};
use crate::shape::standard_layout;

/// The batch's statistics, per feature: mean and biased variance.
pub(crate) struct BatchStatistics<A> {
    pub(crate) mean: Vec<A>,
    pub(crate) var: Vec<A>,
}

/// What the backward pass reads: the input (and the output, after a ReLU) in standard
/// layout, and the per-feature values of the forward pass.
pub(crate) struct Saved<A> {
    input: Arc<ArrayD<A>>,
    relu_output: Option<Arc<ArrayD<A>>>,
    features: usize,
    mean: Vec<A>,
    inv_std: Vec<A>,
    slope: Vec<A>,
}

/// Normalises `input`, rows of `features` (the last axis; `input` in standard layout), with
/// `scale` and `bias` of `features` values each, then applies ReLU if `relu`. Returns the
/// output (the input's shape), the batch statistics and what [`backward`] needs.
pub(crate) fn forward<A: Float>(
    input: Arc<ArrayD<A>>,
    features: usize,
    [gamma, beta]: [&[A]; 2],
    epsilon: A,
    relu: bool,
) -> (Arc<ArrayD<A>>, BatchStatistics<A>, Saved<A>) {
    let xs = input.as_slice().expect("standard layout");
    let (mean, var) = batch_statistics(xs, features);
    let inv_std: Vec<A> = var.iter().map(|&v| (v + epsilon).sqrt().recip()).collect();
    let slope: Vec<A> = gamma.iter().zip(&inv_std).map(|(&g, &s)| g * s).collect();
    let y = normalize(xs, features, [&mean, &slope, beta], relu);
    let output =
        Arc::new(ArrayD::from_shape_vec(input.raw_dim(), y).expect("one output per input element"));
    let saved = Saved {
        relu_output: relu.then(|| Arc::clone(&output)),
        input,
        features,
        mean: mean.clone(),
        inv_std,
        slope,
    };
    (output, BatchStatistics { mean, var }, saved)
}

/// The gradients of the input, the scale and the bias from the output's gradient `g`, each
/// only if `needs` says so; `dx` is written over `g`'s buffer.
pub(crate) fn backward<A: Float>(
    saved: &Saved<A>,
    g: ArrayD<A>,
    needs: [bool; 3],
) -> [Option<ArrayD<A>>; 3] {
    let features = saved.features;
    let mut g = standard_layout(g);
    let xs = saved.input.as_slice().expect("standard layout");
    let count = A::of((xs.len() / features.max(1)) as f64);
    let ys = saved
        .relu_output
        .as_deref()
        .map(|y| y.as_slice().expect("standard layout"));
    let gs = g.as_slice_mut().expect("standard layout");
    let [sum_g, sum_g_xhat, sum_xhat] =
        backward_sums(gs, ys, xs, features, [&saved.mean, &saved.inv_std]);
    let dx = if needs[0] {
        let coefficient: Vec<A> = saved.slope.iter().map(|&a| a / count).collect();
        let xhat_mean: Vec<A> = sum_xhat.iter().map(|&s| s / count).collect();
        let sums = rows::Sums {
            count,
            g: &sum_g,
            g_xhat: &sum_g_xhat,
            xhat_mean: &xhat_mean,
        };
        let per_feature = [&saved.mean[..], &saved.inv_std, &coefficient];
        input_gradient(gs, ys, xs, features, per_feature, &sums);
        Some(g) // dx, written over the incoming gradient
    } else {
        None
    };
    let vector = |v: Vec<A>| Array1::from(v).into_dyn();
    [
        dx,
        needs[1].then(|| vector(sum_g_xhat)),
        needs[2].then(|| vector(sum_g)),
    ]
}

/// The rows of chunk `rows` of `values`, rows of `features` elements.
fn rows_of<A>(values: &[A], rows: Range<usize>, features: usize) -> &[A] {
    &values[rows.start * features..rows.end * features]
}

/// The per-feature sums of the chunks, added in chunk order.
fn add_parts<A: Float, const K: usize>(parts: Vec<[Vec<A>; K]>) -> [Vec<A>; K] {
    let mut parts = parts.into_iter();
    let mut total = parts.next().expect("at least one chunk");
    for part in parts {
        for (total, part) in total.iter_mut().zip(part) {
            rows::add(total, &part);
        }
    }
    total
}

/// `Σ_rows add(row)` per feature of `xs`, rows of `features`: `add(sum, row)` accumulates
/// one row (mark it `#[inline(always)]`, so that it is compiled into the vectorised copy),
/// chunk by chunk over the threads ([`chunks`]), the chunks' sums added in order.
fn feature_sums<A: Float>(
    xs: &[A],
    features: usize,
    add: impl Fn(&mut [A], &[A]) + Sync,
) -> Vec<A> {
    let parts = chunks::map_chunks(xs.len() / features, features, |path, chunk| {
        simd::vectorized_on(
            path,
            #[inline(always)]
            || {
                let mut sum = vec![A::zero(); features];
                for row in rows_of(xs, chunk, features).chunks_exact(features) {
                    add(&mut sum, row);
                }
                [sum]
            },
        )
    });
    let [sum] = add_parts(parts);
    sum
}

/// The batch mean and biased variance of each feature (column) of `xs`, rows of `features`,
/// each summed by chunks over the threads ([`chunks`]). Two passes: the one-pass
/// `E[x²] − E[x]²` loses digits when `|μ| ≫ σ`.
fn batch_statistics<A: Float>(xs: &[A], features: usize) -> (Vec<A>, Vec<A>) {
    let rows = xs.len() / features;
    let count = A::of(rows as f64);
    let mut mean = feature_sums(
        xs,
        features,
        #[inline(always)]
        |sum, row| rows::add(sum, row),
    );
    mean.iter_mut().for_each(|m| *m /= count);
    let mut var = feature_sums(
        xs,
        features,
        #[inline(always)]
        |sum, row| {
            rows::add_squared_deviation(sum, row, &mean);
        },
    );
    var.iter_mut().for_each(|v| *v /= count);
    (mean, var)
}

/// `y = (x − μ) · slope + β` row by row, then ReLU if asked, by chunks over the threads.
fn normalize<A: Float>(xs: &[A], features: usize, per_feature: [&[A]; 3], relu: bool) -> Vec<A> {
    let mut y = Vec::with_capacity(xs.len());
    chunks::for_each_chunk_mut(
        &mut y.spare_capacity_mut()[..xs.len()],
        features,
        |path, chunk, out| {
            simd::vectorized_on(
                path,
                #[inline(always)]
                || {
                    let x_rows = rows_of(xs, chunk, features).chunks_exact(features);
                    for (out_row, x_row) in out.chunks_exact_mut(features).zip(x_rows) {
                        rows::write_affine(out_row, x_row, per_feature, relu);
                    }
                },
            );
        },
    );
    // SAFETY: the chunks cover the rows, and each row's elements were written above.
    unsafe { y.set_len(xs.len()) };
    y
}

/// `Σg'`, `Σ g' x̂` and `Σx̂` per feature, `g'` the gradient through the ReLU whose output is
/// `ys`; by chunks over the threads.
fn backward_sums<A: Float>(
    gs: &[A],
    ys: Option<&[A]>,
    xs: &[A],
    features: usize,
    per_feature: [&[A]; 2],
) -> [Vec<A>; 3] {
    let parts = chunks::map_chunks(xs.len() / features, features, |path, chunk| {
        simd::vectorized_on(
            path,
            #[inline(always)]
            || {
                let mut sums = [(); 3].map(|()| vec![A::zero(); features]);
                let (g_rows, x_rows) = (
                    rows_of(gs, chunk.clone(), features).chunks_exact(features),
                    rows_of(xs, chunk.clone(), features).chunks_exact(features),
                );
                let ys = ys.map(|ys| rows_of(ys, chunk, features));
                for (i, (g_row, x_row)) in g_rows.zip(x_rows).enumerate() {
                    let [sum_g, sum_g_xhat, sum_xhat] = &mut sums;
                    rows::add_backward_sums(
                        [sum_g, sum_g_xhat, sum_xhat],
                        g_row,
                        output_row(ys, i, features),
                        x_row,
                        per_feature,
                    );
                }
                sums
            },
        )
    });
    add_parts(parts)
}

/// Row `i` of the ReLU's output, if the node has one.
#[inline(always)]
fn output_row<A>(ys: Option<&[A]>, i: usize, features: usize) -> Option<&[A]> {
    ys.map(|ys| &ys[i * features..(i + 1) * features])
}

/// `dx` over `g`, row by row, by chunks over the threads; `per_feature` is
/// `[μ, 1/√(σ²+ε), γ/(N√(σ²+ε))]`.
fn input_gradient<A: Float>(
    gs: &mut [A],
    ys: Option<&[A]>,
    xs: &[A],
    features: usize,
    per_feature: [&[A]; 3],
    sums: &rows::Sums<'_, A>,
) {
    chunks::for_each_chunk_mut(gs, features, |path, chunk, g_part| {
        simd::vectorized_on(
            path,
            #[inline(always)]
            || {
                let x_rows = rows_of(xs, chunk.clone(), features).chunks_exact(features);
                let ys = ys.map(|ys| rows_of(ys, chunk, features));
                let row_pairs = g_part.chunks_exact_mut(features).zip(x_rows);
                for (i, (g_row, x_row)) in row_pairs.enumerate() {
                    let y_row = output_row(ys, i, features);
                    rows::input_gradient(g_row, y_row, x_row, per_feature, sums);
                }
            },
        );
    });
}
