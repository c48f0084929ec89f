//! Matrix multiplication, and the affine map `x · kernel + bias` (fused when [`Fusion`] is on).

use ndarray::{ArrayD, ArrayView2, Ix2};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::gemm::{self, matrix};
use crate::kernels::sums::column_sums;
use crate::ops::fusion::Fusion;
use crate::shape::element_count;
use std::sync::Arc;

use crate::ops::tangent::sum_broadcast;
use crate::record::{Primal, Rules, record_rules};
use crate::tensor::Tensor;

fn as_matrix<'a, A: Float>(a: &'a ArrayD<A>, op: &'static str) -> Result<ArrayView2<'a, A>> {
    a.view()
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::invalid(op, a.shape(), "expected a 2-D array"))
}

impl<A: Float> Tensor<A> {
    /// Matrix product of two 2-D tensors: `(m, k) @ (k, n) -> (m, n)`.
    /// PyTorch: `a @ b`; the VJP is `dA = G Bᵀ`, `dB = Aᵀ G`.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// let a = Tensor::from_vec(&[2, 3], vec![1.0f64; 6])?;
    /// let b = Tensor::from_vec(&[3, 4], vec![1.0f64; 12])?;
    /// assert_eq!(a.matmul(&b)?.shape(), &[2, 4]);
    /// let err = b.matmul(&b).unwrap_err().to_string();
    /// assert!(err.contains("matmul") && err.contains("[3, 4]"));
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if an operand is not 2-D, [`Error::IncompatibleShapes`] if the
    /// inner dimensions differ, [`Error::DifferentTapes`]; nothing is recorded.
    pub fn matmul(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        let a = as_matrix(self.value(), "matmul")?;
        let b = as_matrix(other.value(), "matmul")?;
        if a.ncols() != b.nrows() {
            return Err(Error::incompatible(
                "matmul",
                self.shape(),
                other.shape(),
                "inner dimensions differ",
            ));
        }
        element_count::<A>("matmul", &[a.nrows(), b.ncols()])?;
        let value = gemm::forward(self.shared_value(), other.shared_value(), None).into_dyn();
        let rules = Rules {
            saved: [self.shared_value(), other.shared_value()],
            vjp: |[a, b]: &[Arc<ArrayD<A>>; 2], g: ArrayD<A>, needs: &[bool]| {
                let (da, db) = gemm::backward(g, a.clone(), b.clone(), (needs[0], needs[1]));
                vec![da.map(|d| d.into_dyn()), db.map(|d| d.into_dyn())]
            },
            recorded: |[a, b]: &[Arc<ArrayD<A>>; 2], g: &Tensor<A>, p: &Primal<'_, A>| {
                let da = p
                    .needs(0)
                    .then(|| g.matmul(&p.input(1, b).transpose()?))
                    .transpose()?;
                let db = p
                    .needs(1)
                    .then(|| p.input(0, a).transpose()?.matmul(g))
                    .transpose()?;
                Ok(vec![da, db])
            },
            jvp: |[a, b]: &[Arc<ArrayD<A>>; 2], t: &[Option<&ArrayD<A>>]| {
                Ok(product_tangent(a, b, t[0], t[1], None))
            },
        };
        record_rules("matmul", &[self, other], value, rules)
    }

    /// The affine map `x · kernel + bias` of a `(n, in)` input, a `(in, out)` kernel and an
    /// `(out)` bias: defined as `x.matmul(kernel)?.add(bias)`, and with [`Fusion::On`] one
    /// `linear` node, the bias written before the product accumulates onto it, and VJP
    /// `dx = g kernelᵀ`, `dkernel = xᵀ g`, `dbias = Σ_rows g`. Flax: `nn.Dense`'s
    /// computation; PyTorch: `F.linear(x, kernel.T, bias)`.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// let x = Tensor::from_vec(&[2, 3], vec![1.0f64; 6])?;
    /// let kernel = Tensor::from_vec(&[3, 1], vec![0.5; 3])?;
    /// let bias = Tensor::from_vec(&[1], vec![-1.0])?;
    /// assert_eq!(x.linear(&kernel, &bias)?.value().iter().copied().collect::<Vec<_>>(), [0.5, 0.5]);
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`] unless `x` is `(n, in)`, `kernel` `(in, out)` and `bias`
    /// `(out)`; [`Error::DifferentTapes`]; nothing is recorded.
    pub fn linear(&self, kernel: &Tensor<A>, bias: &Tensor<A>) -> Result<Tensor<A>> {
        let (x, w) = (self.value(), kernel.value());
        if x.ndim() != 2
            || w.ndim() != 2
            || x.shape()[1] != w.shape()[0]
            || bias.shape() != [w.shape()[1]]
        {
            return Err(Error::incompatible(
                "linear",
                self.shape(),
                kernel.shape(),
                format!(
                    "expected x (n, in), kernel (in, out), bias (out); the bias is {:?}",
                    bias.shape()
                ),
            ));
        }
        if !Fusion::is_on() {
            return self.matmul(kernel)?.add(bias); // the definition
        }
        element_count::<A>("linear", &[x.shape()[0], w.shape()[1]])?;
        let value = gemm::forward(
            self.shared_value(),
            kernel.shared_value(),
            Some(bias.shared_value()),
        );
        let rules = Rules {
            saved: [self.shared_value(), kernel.shared_value()],
            vjp: |[x, w]: &[Arc<ArrayD<A>>; 2], g: ArrayD<A>, needs: &[bool]| {
                let db = needs[2].then(|| column_sums(matrix(&g)).into_dyn());
                let (dx, dw) = gemm::backward(g, x.clone(), w.clone(), (needs[0], needs[1]));
                vec![dx.map(|d| d.into_dyn()), dw.map(|d| d.into_dyn()), db]
            },
            recorded: |[x, w]: &[Arc<ArrayD<A>>; 2], g: &Tensor<A>, p: &Primal<'_, A>| {
                let dx = p
                    .needs(0)
                    .then(|| g.matmul(&p.input(1, w).transpose()?))
                    .transpose()?;
                let dw = p
                    .needs(1)
                    .then(|| p.input(0, x).transpose()?.matmul(g))
                    .transpose()?;
                let db = p.needs(2).then(|| g.sum_axes(&[0], false)).transpose()?;
                Ok(vec![dx, dw, db])
            },
            jvp: |[x, w]: &[Arc<ArrayD<A>>; 2], t: &[Option<&ArrayD<A>>]| {
                Ok(product_tangent(x, w, t[0], t[1], t[2]))
            },
        };
        record_rules("linear", &[self, kernel, bias], value.into_dyn(), rules)
    }
}

/// The tangent of `a · b (+ bias)`: `ta · b + a · tb (+ tbias)`, a missing tangent zero.
fn product_tangent<A: Float>(
    a: &Arc<ArrayD<A>>,
    b: &Arc<ArrayD<A>>,
    ta: Option<&ArrayD<A>>,
    tb: Option<&ArrayD<A>>,
    tbias: Option<&ArrayD<A>>,
) -> ArrayD<A> {
    let product = |x: &Arc<ArrayD<A>>, y: &Arc<ArrayD<A>>| {
        gemm::forward(Arc::clone(x), Arc::clone(y), None).into_dyn()
    };
    let terms = [
        ta.map(|ta| product(&Arc::new(ta.clone()), b)),
        tb.map(|tb| product(a, &Arc::new(tb.clone()))),
        tbias.cloned(),
    ];
    sum_broadcast(&[a.shape()[0], b.shape()[1]], terms.into_iter().flatten())
}
