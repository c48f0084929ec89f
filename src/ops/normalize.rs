//! Batch normalisation's training computation as one op: the batch's statistics over every
//! axis but the features, the normalisation, the affine map, and optionally a ReLU after it.
//!
//! Defined as a composition of primitives (below, [`definition`]): the tape differentiates
//! through the statistics like any other op, and over replicas the per-feature sums are
//! `psum`s. With [`Fusion::On`], features on the last axis and no replicas, one `batch_norm`
//! node (`batch_norm_relu` with the ReLU) computes the same with a closed-form VJP, its
//! loops in `src/kernels/batch_norm.rs`.

use ndarray::{Array1, Array2, ArrayD};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::batch_norm;
use crate::ops::collective::global_count;
use crate::ops::fusion::Fusion;
use crate::replicas::ReplicaAxis;
use crate::shape::standard_layout_shared;
use std::sync::Arc;

use crate::record::{Primal, Rules, record_rules};
use crate::tensor::Tensor;

/// How to normalise: the feature axis (checked in range), epsilon, the replica axis whose
/// global batch the statistics are of (if any), and whether a ReLU follows.
pub(crate) struct Normalization<'a> {
    pub(crate) axis: usize,
    pub(crate) epsilon: f64,
    pub(crate) replicas: Option<&'a ReplicaAxis>,
    pub(crate) relu: bool,
}

/// The op's output and the batch's statistics, plain values for the running averages.
pub(crate) struct Normalized<A: Float> {
    /// `γ (x − μ) / √(σ² + ε) + β`, then ReLU if asked.
    pub(crate) output: Tensor<A>,
    /// The batch mean per feature, `(F)`.
    pub(crate) mean: ArrayD<A>,
    /// The batch's biased variance per feature, `(F)`.
    pub(crate) var: ArrayD<A>,
    /// How many values each feature's statistics are over (on every replica together).
    pub(crate) count: f64,
}

/// Normalises `x` over every axis but `how.axis` with the batch's statistics, then applies
/// `scale` and `bias` `(F)` and the ReLU if asked.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for statistics over fewer than two values per feature (as
/// PyTorch: "Expected more than 1 value per channel when training"), or for `scale` and
/// `bias` that are not `(F)`; a communicator's error over replicas. Nothing is recorded.
pub(crate) fn batch_norm_train<A: Float>(
    x: &Tensor<A>,
    scale: &Tensor<A>,
    bias: &Tensor<A>,
    how: &Normalization<'_>,
) -> Result<Normalized<A>> {
    let features = x.shape()[how.axis];
    if scale.shape() != [features] || bias.shape() != [features] {
        return Err(Error::incompatible(
            "BatchNorm",
            x.shape(),
            scale.shape(),
            "scale and bias must be (features)",
        ));
    }
    // Statistics of no value are 0 / 0, and of one value a variance of 0.
    let per_feature = (x.len() / features.max(1)) as f64;
    let count = match how.replicas {
        Some(replicas) => global_count(replicas, per_feature)?,
        None => per_feature,
    };
    if count < 2.0 {
        return Err(Error::invalid(
            "BatchNorm",
            x.shape(),
            format!(
                "expected more than 1 value per channel when training, got {count} \
                 (batch statistics of fewer are undefined or zero)"
            ),
        ));
    }
    let last = how.axis == x.ndim() - 1;
    if Fusion::is_on() && last && how.replicas.is_none() {
        return fused(x, scale, bias, how, count);
    }
    definition(x, scale, bias, how, count)
}

/// The fused node: features on the last axis, one replica.
fn fused<A: Float>(
    x: &Tensor<A>,
    scale: &Tensor<A>,
    bias: &Tensor<A>,
    how: &Normalization<'_>,
    count: f64,
) -> Result<Normalized<A>> {
    let features = x.shape()[how.axis];
    let (gamma, beta) = (
        standard_layout_shared(scale.shared_value()),
        standard_layout_shared(bias.shared_value()),
    );
    let (output, statistics, saved) = batch_norm::forward(
        standard_layout_shared(x.shared_value()),
        features,
        [
            gamma.as_slice().expect("standard layout"),
            beta.as_slice().expect("standard layout"),
        ],
        A::of(how.epsilon),
        how.relu,
    );
    let op = match how.relu {
        true => "batch_norm_relu",
        false => "batch_norm",
    };
    let fused = Fused {
        kernel: saved,
        inputs: [x.shared_value(), scale.shared_value(), bias.shared_value()],
        relu_output: how.relu.then(|| Arc::clone(&output)),
        epsilon: how.epsilon,
    };
    let rules = Rules {
        saved: fused,
        vjp: |f: &Fused<A>, g: ArrayD<A>, needs: &[bool]| {
            batch_norm::backward(&f.kernel, g, [needs[0], needs[1], needs[2]]).into()
        },
        recorded: |f: &Fused<A>, g: &Tensor<A>, p: &Primal<'_, A>| f.vjp_as_ops(g, p),
        jvp: |f: &Fused<A>, t: &[Option<&ArrayD<A>>]| Ok(f.tangent(t)),
    };
    let output = record_rules(op, &[x, scale, bias], output, rules)?;
    let vector = |v: Vec<A>| Array1::from(v).into_dyn();
    Ok(Normalized {
        output,
        mean: vector(statistics.mean),
        var: vector(statistics.var),
        count,
    })
}

/// What the fused node keeps: the kernel's saved state for its VJP; and for the higher
/// orders its inputs (the same arrays the kernel holds), the output after the ReLU if there
/// is one (its mask), and epsilon. The higher-order rules are the closed forms of chapter 6,
/// features on the last axis of a standard-layout input, one replica (the fused node's
/// conditions).
struct Fused<A: Float> {
    kernel: batch_norm::Saved<A>,
    inputs: [Arc<ArrayD<A>>; 3],
    relu_output: Option<Arc<ArrayD<A>>>,
    epsilon: f64,
}

impl<A: Float> Fused<A> {
    /// `[x̂ ⊙ 1/σ]`: the batch's normalised input and `1/√(σ² + ε)` per feature, as ops of
    /// the input tensor `x` (the statistics over every axis but the last).
    fn normalized(&self, x: &Tensor<A>) -> Result<[Tensor<A>; 2]> {
        let axes: Vec<usize> = (0..x.ndim() - 1).collect();
        let centred = x.sub(&x.mean_axes(&axes, true)?)?;
        let variance = centred.square().mean_axes(&axes, true)?;
        let inv_std = variance.add_scalar(A::of(self.epsilon)).sqrt().recip();
        Ok([centred.mul(&inv_std)?, inv_std])
    }

    /// The VJP as ops: with `g_y` the gradient before the ReLU, `dβ = Σ g_y`,
    /// `dγ = Σ g_y x̂` and `dx = (ĝ − mean ĝ − x̂ mean(ĝ x̂)) / σ` with `ĝ = γ g_y`.
    fn vjp_as_ops(&self, g: &Tensor<A>, p: &Primal<'_, A>) -> Result<Vec<Option<Tensor<A>>>> {
        let x = p.input(0, &self.inputs[0]);
        let axes: Vec<usize> = (0..x.ndim() - 1).collect();
        let [normalized, inv_std] = self.normalized(&x)?;
        let gy = match &self.relu_output {
            Some(out) => g.mul(&Tensor::constant(out.mapv(positive)))?,
            None => g.clone(),
        };
        let dx = match p.needs(0) {
            true => {
                let gn = gy.mul(&p.input(1, &self.inputs[1]))?;
                let along = normalized.mul(&gn.mul(&normalized)?.mean_axes(&axes, true)?)?;
                Some(
                    gn.sub(&gn.mean_axes(&axes, true)?)?
                        .sub(&along)?
                        .mul(&inv_std)?,
                )
            }
            false => None,
        };
        let dscale = match p.needs(1) {
            true => Some(gy.mul(&normalized)?.sum_axes(&axes, false)?),
            false => None,
        };
        let dbias = p.needs(2).then(|| gy.sum_axes(&axes, false)).transpose()?;
        Ok(vec![dx, dscale, dbias])
    }

    /// The JVP: `ty = γ tx̂ + x̂ tγ + tβ` (then the ReLU's mask), with
    /// `tx̂ = (tx − mean tx) / σ − x̂ mean(x̂ (tx − mean tx)) / σ`, the variance's tangent
    /// through the statistics.
    fn tangent(&self, t: &[Option<&ArrayD<A>>]) -> ArrayD<A> {
        let x = rows(&self.inputs[0]);
        let (n, features) = x.dim();
        let mean_of = |a: &Array2<A>| a.sum_axis(ndarray::Axis(0)) * A::of(1.0 / n.max(1) as f64);
        let centred = &x - &mean_of(&x);
        let inv_std =
            mean_of(&centred.mapv(|v| v * v)).mapv(|v| (v + A::of(self.epsilon)).sqrt().recip());
        let normalized = &centred * &inv_std;
        let mut ty = Array2::zeros((n, features));
        if let Some(tx) = t[0] {
            let tx = rows(tx);
            let tc = &tx - &mean_of(&tx);
            let along = mean_of(&(&normalized * &tc));
            let txhat = (&tc - &(&normalized * &along)) * &inv_std;
            ty += &(txhat * &vector(&self.inputs[1]));
        }
        if let Some(tscale) = t[1] {
            ty += &(&normalized * &vector(tscale));
        }
        if let Some(tbias) = t[2] {
            ty += &vector(tbias);
        }
        let mut ty = ty
            .into_dyn()
            .into_shape_with_order(self.inputs[0].shape())
            .expect("x's shape");
        if let Some(out) = &self.relu_output {
            ty.zip_mut_with(out, |t, &o| *t *= positive(o));
        }
        ty
    }
}

fn positive<A: Float>(v: A) -> A {
    if v > A::zero() { A::one() } else { A::zero() }
}

/// An input with features on its last axis as `(rows, features)`, in standard layout.
fn rows<A: Float>(x: &ArrayD<A>) -> Array2<A> {
    let features = x.shape().last().copied().unwrap_or(1);
    let n = x.len() / features.max(1);
    x.as_standard_layout()
        .into_owned()
        .into_shape_with_order((n, features))
        .expect("rows of features")
}

fn vector<A: Float>(v: &ArrayD<A>) -> ndarray::Array1<A> {
    v.iter().copied().collect()
}

/// The definition. Statistics over every axis but the features, the variance biased (divided
/// by N); the gradient flows through both. Over replicas, the per-feature sums are
/// all-reduced (`psum`, whose VJP all-reduces the gradient's sums) and divided by the global
/// count.
fn definition<A: Float>(
    x: &Tensor<A>,
    scale: &Tensor<A>,
    bias: &Tensor<A>,
    how: &Normalization<'_>,
    count: f64,
) -> Result<Normalized<A>> {
    let features = x.shape()[how.axis];
    let axes: Vec<usize> = (0..x.ndim()).filter(|&a| a != how.axis).collect();
    let mean_over_batch = |t: &Tensor<A>| match how.replicas {
        None => t.mean_axes(&axes, true),
        Some(replicas) => Ok(t
            .sum_axes(&axes, true)?
            .psum(replicas)?
            .mul_scalar(A::of(1.0 / count))),
    };
    let mean = mean_over_batch(x)?;
    let centred = x.sub(&mean)?;
    let var = mean_over_batch(&centred.square())?;
    let inv_std = var.add_scalar(A::of(how.epsilon)).sqrt().recip();
    let along = along_axis(how.axis, x.ndim());
    let y = centred
        .mul(&inv_std)?
        .mul(&along(scale)?)?
        .add(&along(bias)?)?;
    let flat = |t: &Tensor<A>| {
        t.value()
            .clone()
            .into_shape_with_order(vec![features])
            .expect("(F) values")
    };
    Ok(Normalized {
        output: if how.relu { y.relu() } else { y },
        mean: flat(&mean),
        var: flat(&var),
        count,
    })
}

/// Shapes a per-feature `(F)` tensor to broadcast along `axis` of a rank-`ndim` input: as it
/// is when `axis` is the last, `(1, F, 1, 1)` for NCHW.
pub(crate) fn along_axis<A: Float>(
    axis: usize,
    ndim: usize,
) -> impl Fn(&Tensor<A>) -> Result<Tensor<A>> {
    move |t| {
        if axis == ndim - 1 {
            Ok(t.clone())
        } else {
            let mut shape = vec![1; ndim];
            shape[axis] = t.len();
            t.reshape(&shape)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, Array2};

    /// Features with a large offset and a small spread (`|μ| / σ` about 10^4): the rows of
    /// `dx` still sum to zero within a few roundings of its own size, so that a bias before
    /// the normalisation gets no gradient. (With `x̂` in place of `x̂ − Σx̂/N`, one of them
    /// is 9·10^-9: the rounding of `μ` times `1/σ²`.)
    #[test]
    fn the_fused_input_gradient_sums_to_zero_over_the_batch_despite_an_offset() {
        let (rows, features) = (6, 3);
        let x = Array2::from_shape_fn((rows, features), |(i, j)| {
            1e3 * (j as f64 + 1.0) + 0.1 * ((i * 7 + j) as f64 * 0.9).sin()
        });
        let tape = crate::Tape::<f64>::new();
        let leaf = tape.leaf("x", x.into_dyn());
        let scale = Tensor::constant(Array1::from(vec![1.5, -0.7, 2.0]).into_dyn());
        let bias = Tensor::constant(Array1::from(vec![0.1, 0.2, 0.3]).into_dyn());
        for relu in [false, true] {
            let how = Normalization {
                axis: 1,
                epsilon: 1e-5,
                replicas: None,
                relu,
            };
            let y = Fusion::On
                .run(|| batch_norm_train(&leaf, &scale, &bias, &how))
                .unwrap()
                .output;
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
                assert!(largest > 1.0, "relu {relu}: a gradient worth testing");
                assert!(
                    column.sum().abs() <= rounding,
                    "relu {relu}: Σ dx = {}",
                    column.sum()
                );
            }
        }
    }
}
