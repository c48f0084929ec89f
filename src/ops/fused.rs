//! Fused primitives: compositions that the training-step benchmark showed worth one node
//! each (`benches/train_step.rs`). Each replaces a chain of primitives with a single
//! forward pass and a closed-form VJP, derived below; `tests/fused_ops.rs` checks each
//! against the composite it replaces and against finite differences.

use std::sync::Arc;

use ndarray::{Array1, ArrayD, ArrayView2, Axis, Ix2, Zip};

use crate::shape::reshaped;
use crate::tensor::record;
use crate::{Error, Float, Result, Tensor};

/// The value as a matrix view `(rows, last dimension)`, flattening the leading dimensions
/// (a copy only if the array is not in standard layout).
fn as_rows<'a, A: Float>(
    op: &'static str,
    x: &'a ArrayD<A>,
) -> Result<ndarray::CowArray<'a, A, Ix2>> {
    let Some((&cols, leading)) = x.shape().split_last() else {
        return Err(Error::invalid(
            op,
            x.shape(),
            "expected at least one dimension",
        ));
    };
    let rows: usize = leading.iter().product();
    let standard = x.as_standard_layout();
    let matrix = standard
        .into_shape_with_order((rows, cols))
        .map_err(|_| Error::invalid(op, x.shape(), "not reshapeable to rows"))?;
    Ok(matrix)
}

fn as_vector<A: Float>(a: &ArrayD<A>) -> Array1<A> {
    a.view()
        .into_dimensionality::<ndarray::Ix1>()
        .expect("checked 1-D")
        .to_owned()
}

fn matrix<A: Float>(a: &ArrayD<A>) -> ArrayView2<'_, A> {
    a.view()
        .into_dimensionality::<Ix2>()
        .expect("a matrix by construction")
}

/// Training-mode batch normalisation of `x` `(…, F)` over every axis but the last, with
/// `scale` and `bias` `(F)`: returns the output and the batch mean and biased variance
/// (plain values, for the running statistics).
///
/// Forward, per feature over the `N` rows: `μ = Σx/N`, `σ² = Σ(x−μ)²/N`,
/// `x̂ = (x−μ)/√(σ²+ε)`, `y = γ x̂ + β`.
///
/// Backward: `dβ = Σg`, `dγ = Σ g x̂`, and since `x̂` depends on `x` through `μ` and `σ²` too,
/// ```text
/// dx = γ / (N √(σ²+ε)) · (N g − Σg − x̂ Σ(g x̂))
/// ```
/// (the two sums remove the components of `g` along the directions that normalisation
/// makes invisible: a shift of the batch and a scaling of it).
pub(crate) fn batch_norm_train<A: Float>(
    x: &Tensor<A>,
    scale: &Tensor<A>,
    bias: &Tensor<A>,
    epsilon: A,
) -> Result<(Tensor<A>, Array1<A>, Array1<A>)> {
    let rows = as_rows("BatchNorm", x.value())?;
    let (n, features) = rows.dim();
    if scale.shape() != [features] || bias.shape() != [features] {
        return Err(Error::incompatible(
            "BatchNorm",
            x.shape(),
            scale.shape(),
            "scale and bias must be (features)",
        ));
    }
    let count = A::of(n as f64);
    let mean = rows.sum_axis(Axis(0)) / count;
    let mut x_hat = &rows - &mean;
    // Row by row, so that the accumulation runs along contiguous memory.
    let mut var = Array1::zeros(features);
    for row in x_hat.rows() {
        Zip::from(&mut var).and(&row).for_each(|v, &d| *v += d * d);
    }
    var /= count;
    let inv_std = var.mapv(|v| (v + epsilon).sqrt().recip());
    x_hat *= &inv_std;
    let gamma = as_vector(scale.value());
    let beta = as_vector(bias.value());
    let y = Zip::from(&x_hat)
        .and_broadcast(&gamma)
        .and_broadcast(&beta)
        .map_collect(|&xh, &g, &b| xh * g + b);
    let y = reshaped(y.into_dyn(), x.shape());

    let x_hat = Arc::new(x_hat);
    let coefficient = &gamma * &inv_std / count;
    let out_shape = x.shape().to_vec();
    let tensor = record("batch_norm", &[x, scale, bias], y, move |g, needs| {
        let g = reshaped(g, &[n, features])
            .into_dimensionality::<Ix2>()
            .expect("(n, features)");
        let (mut sum_g, mut sum_g_xhat) = (Array1::zeros(features), Array1::zeros(features));
        for (g_row, xh_row) in g.rows().into_iter().zip(x_hat.rows()) {
            Zip::from(&mut sum_g)
                .and(&mut sum_g_xhat)
                .and(&g_row)
                .and(&xh_row)
                .for_each(|s, sx, &g, &xh| {
                    *s += g;
                    *sx += g * xh;
                });
        }
        let dx = needs[0].then(|| {
            let dx = Zip::from(&g)
                .and(&*x_hat)
                .and_broadcast(&sum_g)
                .and_broadcast(&sum_g_xhat)
                .and_broadcast(&coefficient)
                .map_collect(|&g, &xh, &s, &sx, &c| c * (count * g - s - xh * sx));
            reshaped(dx.into_dyn(), &out_shape)
        });
        vec![
            dx,
            needs[1].then(|| sum_g_xhat.into_dyn()),
            needs[2].then(|| sum_g.into_dyn()),
        ]
    })?;
    Ok((tensor, mean, var))
}

/// `x · w + b` for `x` `(n, in)`, `w` `(in, out)`, `b` `(out)`: a matmul and a broadcast
/// add in one node. VJP: `dx = g wᵀ`, `dw = xᵀ g`, `db = Σ_rows g`.
pub(crate) fn linear<A: Float>(x: &Tensor<A>, w: &Tensor<A>, b: &Tensor<A>) -> Result<Tensor<A>> {
    let (xv, wv) = (x.value(), w.value());
    if xv.ndim() != 2
        || wv.ndim() != 2
        || xv.shape()[1] != wv.shape()[0]
        || b.shape() != [wv.shape()[1]]
    {
        return Err(Error::incompatible(
            "linear",
            x.shape(),
            w.shape(),
            "expected x (n, in), w (in, out), b (out)",
        ));
    }
    let mut y = matrix(xv).dot(&matrix(wv));
    y += &b
        .value()
        .view()
        .into_dimensionality::<ndarray::Ix1>()
        .expect("checked (out)");
    let (x_in, w_in) = (x.shared_value(), w.shared_value());
    record("linear", &[x, w, b], y.into_dyn(), move |g, needs| {
        let g = matrix(&g);
        vec![
            needs[0].then(|| g.dot(&matrix(&w_in).t()).into_dyn()),
            needs[1].then(|| matrix(&x_in).t().dot(&g).into_dyn()),
            needs[2].then(|| g.sum_axis(Axis(0)).into_dyn()),
        ]
    })
}

/// Mean softmax cross-entropy of `logits (B, C)` with integer labels, in one node.
///
/// Forward, per row: `lse = m + ln Σ e^(z−m)` with `m = max z` (stable), loss
/// `(1/B) Σ_b (lse_b − z_{b,y_b})`. Backward: `dz = g (softmax(z) − onehot(y)) / B`, with the
/// softmax kept from the forward pass.
pub(crate) fn softmax_cross_entropy_fused<A: Float>(
    logits: &Tensor<A>,
    labels: &[usize],
) -> Result<Tensor<A>> {
    let z = logits.value();
    let &[batch, classes] = z.shape() else {
        return Err(Error::invalid(
            "softmax_cross_entropy",
            z.shape(),
            "expected logits of shape (batch, classes)",
        ));
    };
    if labels.len() != batch {
        return Err(Error::incompatible(
            "softmax_cross_entropy",
            z.shape(),
            &[labels.len()],
            "one label per row of logits",
        ));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::IndexOutOfRange {
            op: "softmax_cross_entropy",
            index: bad,
            len: classes,
        });
    }
    let mut probabilities = matrix(z).to_owned();
    let mut total = A::zero();
    for (mut row, &label) in probabilities.rows_mut().into_iter().zip(labels) {
        let max = row.iter().fold(A::neg_infinity(), |m, &v| m.max(v));
        let picked = row[label];
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        total += max + sum.ln() - picked;
        row /= sum;
    }
    let inv_batch = A::of(1.0 / batch.max(1) as f64);
    let loss = ArrayD::from_elem(vec![], total * inv_batch);
    let labels = labels.to_vec();
    record("softmax_cross_entropy", &[logits], loss, move |g, _| {
        let scale = g.iter().next().copied().unwrap_or_else(A::zero) * inv_batch;
        let mut dz = probabilities.clone();
        for (mut row, &label) in dz.rows_mut().into_iter().zip(&labels) {
            row[label] -= A::one();
        }
        dz *= scale;
        vec![Some(dz.into_dyn())]
    })
}
