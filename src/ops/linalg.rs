//! Matrix multiplication.

use ndarray::{ArrayD, ArrayView2, Ix2};

use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::gemm;
use crate::shape::element_count;
use crate::tensor::Tensor;
use crate::tensor::record;

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
}
