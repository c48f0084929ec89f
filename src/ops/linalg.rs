//! Matrix multiplication, and the affine map `x · kernel + bias` (fused when [`Fusion`] is on).

use ndarray::{ArrayD, ArrayView2, Ix2};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::gemm::{self, matrix};
use crate::kernels::sums::column_sums;
use crate::ops::fusion::Fusion;
use crate::shape::element_count;
use crate::tensor::{Tensor, record};

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
        let (a, b) = (self.shared_value(), other.shared_value());
        record("matmul", &[self, other], value, move |g, needs| {
            let (da, db) = gemm::backward(g, a.clone(), b.clone(), (needs[0], needs[1]));
            vec![da.map(|d| d.into_dyn()), db.map(|d| d.into_dyn())]
        })
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
        let (x, w) = (self.shared_value(), kernel.shared_value());
        record(
            "linear",
            &[self, kernel, bias],
            value.into_dyn(),
            move |g, needs| {
                let db = needs[2].then(|| column_sums(matrix(&g)).into_dyn());
                let (dx, dw) = gemm::backward(g, x.clone(), w.clone(), (needs[0], needs[1]));
                vec![dx.map(|d| d.into_dyn()), dw.map(|d| d.into_dyn()), db]
            },
        )
    }
}
