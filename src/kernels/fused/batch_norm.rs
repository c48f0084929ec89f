//! Training-mode batch normalisation, optionally followed by ReLU, as one node.
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
//! The definition this implements is `BatchNorm`'s composite (src/nn/batch_norm.rs). How it
//! differs, for speed: every loop runs along contiguous rows of plain slices, so it
//! vectorises; the node keeps the input and output it already shares with its neighbours
//! instead of a new `x̂` (recomputed in backward); ReLU is applied to each value before it is
//! stored, and its mask is read off the output inside both backward passes; and backward
//! writes `dx` into the incoming gradient's buffer. Forward makes one new array and three
//! passes, backward none and two. (Measurements: docs/performance.md.)

use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array1, ArrayD};

use super::rows;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::{chunks, simd};
use crate::shape::{standard_layout, standard_layout_shared};
use crate::tensor::{Tensor, record};

/// What the kernel applies to the normalised values before it stores them (the name GEMM
/// libraries give the step that follows the main computation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Epilogue {
    /// Store `γ x̂ + β` itself.
    Nothing,
    /// Store `max(γ x̂ + β, 0)`.
    Relu,
}

/// The batch's statistics, plain values for the running averages: mean and biased variance.
pub(crate) struct BatchStatistics<A> {
    pub(crate) mean: Array1<A>,
    pub(crate) var: Array1<A>,
}

/// Normalises `x` `(…, F)` over every axis but the last with `scale` and `bias` `(F)`,
/// then applies `epilogue`. Returns the output and the batch statistics.
pub(crate) fn batch_norm_train<A: Float>(
    x: &Tensor<A>,
    scale: &Tensor<A>,
    bias: &Tensor<A>,
    epsilon: A,
    epilogue: Epilogue,
) -> Result<(Tensor<A>, BatchStatistics<A>)> {
    let Some(&features) = x.shape().last().filter(|&&f| f > 0) else {
        return Err(Error::invalid(
            "BatchNorm",
            x.shape(),
            "expected (…, features) with at least one feature",
        ));
    };
    if scale.shape() != [features] || bias.shape() != [features] {
        return Err(Error::incompatible(
            "BatchNorm",
            x.shape(),
            scale.shape(),
            "scale and bias must be (features)",
        ));
    }
    let input = standard_layout_shared(x.shared_value());
    let xs = input.as_slice().expect("standard layout");
    let count = A::of((xs.len() / features) as f64);
    let (scale_value, bias_value) = (
        standard_layout_shared(scale.shared_value()),
        standard_layout_shared(bias.shared_value()),
    );
    let gamma = scale_value.as_slice().expect("standard layout");
    let beta = bias_value.as_slice().expect("standard layout");

    let (mean, var) = batch_statistics(xs, features);
    let inv_std: Vec<A> = var.iter().map(|&v| (v + epsilon).sqrt().recip()).collect();
    let slope: Vec<A> = gamma.iter().zip(&inv_std).map(|(&g, &s)| g * s).collect();
    let y = normalize(xs, features, [&mean, &slope, beta], epilogue);
    let output =
        Arc::new(ArrayD::from_shape_vec(x.shape(), y).expect("one output per input element"));

    let statistics = BatchStatistics {
        mean: Array1::from(mean.clone()),
        var: Array1::from(var),
    };
    let kept_output = (epilogue == Epilogue::Relu).then(|| Arc::clone(&output));
    let op = match epilogue {
        Epilogue::Nothing => "batch_norm",
        Epilogue::Relu => "batch_norm_relu",
    };
    let tensor = record(op, &[x, scale, bias], output, move |g, needs| {
        let mut g = standard_layout(g);
        let xs = input.as_slice().expect("standard layout");
        let ys = kept_output
            .as_deref()
            .map(|y| y.as_slice().expect("standard layout"));
        let gs = g.as_slice_mut().expect("standard layout");
        let [sum_g, sum_g_xhat, sum_xhat] = backward_sums(gs, ys, xs, features, [&mean, &inv_std]);
        let dx = if needs[0] {
            let coefficient: Vec<A> = slope.iter().map(|&a| a / count).collect();
            let xhat_mean: Vec<A> = sum_xhat.iter().map(|&s| s / count).collect();
            let sums = rows::Sums {
                count,
                g: &sum_g,
                g_xhat: &sum_g_xhat,
                xhat_mean: &xhat_mean,
            };
            let per_feature = [&mean[..], &inv_std, &coefficient];
            input_gradient(gs, ys, xs, features, per_feature, &sums);
            Some(g) // dx, written over the incoming gradient
        } else {
            None
        };
        vec![
            dx,
            needs[1].then(|| Array1::from(sum_g_xhat).into_dyn()),
            needs[2].then(|| Array1::from(sum_g).into_dyn()),
        ]
    })?;
    Ok((tensor, statistics))
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
/// chunk by chunk over the pool ([`chunks`]), the chunks' sums added in order.
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
/// each summed by chunks over the pool ([`chunks`]). Two passes: the one-pass
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

/// `y = (x − μ) · slope + β` row by row, then ReLU if asked, by chunks over the pool.
fn normalize<A: Float>(
    xs: &[A],
    features: usize,
    per_feature: [&[A]; 3],
    epilogue: Epilogue,
) -> Vec<A> {
    let mut y = Vec::with_capacity(xs.len());
    let relu = epilogue == Epilogue::Relu;
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
/// `ys`; by chunks over the pool.
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

/// `dx` over `g`, row by row, by chunks over the pool; `per_feature` is
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

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    /// Features with a large offset and a small spread (`|μ| / σ` about 10^4): the rows of
    /// `dx` still sum to zero within a few roundings of its own size, so that a bias before
    /// the normalisation gets no gradient. (With `x̂` in place of `x̂ − Σx̂/N`, one of them
    /// was 9·10^-9: the rounding of `μ` times `1/σ²`.)
    #[test]
    fn the_input_gradient_sums_to_zero_over_the_batch_despite_an_offset() {
        let (rows, features) = (6, 3);
        let x = Array2::from_shape_fn((rows, features), |(i, j)| {
            1e3 * (j as f64 + 1.0) + 0.1 * ((i * 7 + j) as f64 * 0.9).sin()
        });
        let tape = crate::Tape::<f64>::new();
        let leaf = tape.leaf("x", x.into_dyn());
        let scale = Tensor::constant(Array1::from(vec![1.5, -0.7, 2.0]).into_dyn());
        let bias = Tensor::constant(Array1::from(vec![0.1, 0.2, 0.3]).into_dyn());
        for epilogue in [Epilogue::Nothing, Epilogue::Relu] {
            let (y, _) = batch_norm_train(&leaf, &scale, &bias, 1e-5, epilogue).unwrap();
            let weights = Array2::from_shape_fn((rows, features), |(i, j)| {
                1.0 + ((i * features + j) as f64 * 0.37).sin()
            });
            let loss = y
                .mul(&Tensor::constant(weights.into_dyn()))
                .unwrap()
                .sum_all();
            let dx = loss.backward().unwrap().get(&leaf).unwrap().clone();
            for column in dx.columns() {
                let largest = column.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                let rounding = rows as f64 * 8.0 * f64::EPSILON * largest;
                assert!(largest > 1.0, "{epilogue:?}: a gradient worth testing");
                assert!(
                    column.sum().abs() <= rounding,
                    "{epilogue:?}: Σ dx = {}",
                    column.sum()
                );
            }
        }
    }
}
