//! Reverse mode from a tensor, and [`LeafGradients`], what it returns.

use ndarray::ArrayD;

use crate::error::{Error, Result};
use crate::float::Float;
use crate::into_array::IntoArray;
use crate::tape::{GradientSlots, Saved};
use crate::tensor::Tensor;

/// The result of a backward pass from a tensor: the gradient of the output with respect to
/// each leaf it reached, looked up by the leaf tensor. (What [`value_and_grad`](crate::value_and_grad)
/// returns instead is [`Grads`](crate::Grads), keyed by param path.) Intermediate gradients are released during the pass, as in PyTorch, and so is
/// what each op saved for it (unless the pass was [`Tensor::backward_retaining`]).
///
/// `LeafGradients` keeps no handle on the tape: only the leaves' gradients stay alive with it,
/// not the activations the forward pass recorded.
pub struct LeafGradients<A: Float> {
    /// The id of the tape the pass walked, to tell its leaves from other tapes'.
    tape: Option<u64>,
    grads: GradientSlots<A>,
}

impl<A: Float> LeafGradients<A> {
    /// The gradient with respect to leaf `x`, or `None` if `x` is a constant, belongs to
    /// another tape, is not a leaf, or was not reached (the output does not depend on it).
    #[must_use]
    pub fn get(&self, x: &Tensor<A>) -> Option<&ArrayD<A>> {
        let (tape, id) = x.node()?;
        if Some(tape.id()) != self.tape {
            return None;
        }
        self.grads.get(id)?.as_ref()
    }

    /// The gradient with respect to leaf `x`, zeros if it was not reached; an error if `x`
    /// is not on this tape.
    ///
    /// # Errors
    ///
    /// [`Error::DifferentTapes`] if `x` is not a leaf of the tape these gradients came from.
    pub fn wrt(&self, x: &Tensor<A>) -> Result<ArrayD<A>> {
        match x.node() {
            Some((tape, _)) if Some(tape.id()) == self.tape => Ok(self
                .get(x)
                .cloned()
                .unwrap_or_else(|| ArrayD::zeros(x.shape()))),
            _ => Err(Error::DifferentTapes {
                op: "LeafGradients::wrt",
            }),
        }
    }

    /// Moves the gradient of the leaf with node `id` out (zeros of `shape` if not reached).
    pub(crate) fn take(&mut self, id: usize, shape: &[usize]) -> ArrayD<A> {
        self.grads
            .get_mut(id)
            .and_then(Option::take)
            .unwrap_or_else(|| ArrayD::zeros(shape))
    }
}

impl<A: Float> Tensor<A> {
    /// Reverse mode from a one-element tensor (the loss): the gradient of it with respect
    /// to every leaf it depends on. A non-scalar is an error; see [`Tensor::backward_with`].
    ///
    /// Each op's saved values are released once its VJP has run (PyTorch's default), so a
    /// second backward pass over the same nodes is [`Error::BackwardTwice`].
    ///
    /// # Errors
    ///
    /// [`Error::NotScalar`] if the tensor has more than one element, [`Error::BackwardTwice`] if
    /// the tape's saved values were already released by an earlier backward pass.
    pub fn backward(&self) -> Result<LeafGradients<A>> {
        if self.len() != 1 {
            return Err(Error::NotScalar {
                op: "backward",
                shape: self.shape().into(),
            });
        }
        self.backward_with(ArrayD::ones(self.shape()))
    }

    /// Reverse mode seeded with an explicit cotangent of this tensor's shape: the result
    /// holds `J^T cotangent` for each leaf. PyTorch: `y.backward(gradient=cotangent)`.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`] if `cotangent` does not have this tensor's shape,
    /// [`Error::BackwardTwice`] as for [`Tensor::backward`].
    pub fn backward_with(&self, cotangent: impl IntoArray<A>) -> Result<LeafGradients<A>> {
        self.reverse("backward_with", &cotangent.into_array(), Saved::Release)
    }

    /// [`Tensor::backward_with`], keeping every op's saved values so that the tape can be
    /// walked again, with another cotangent (one per output, for a Jacobian).
    /// PyTorch: `y.backward(gradient=cotangent, retain_graph=True)`.
    ///
    /// ```
    /// use tapegrad::Tape;
    /// use ndarray::arr1;
    /// let tape = Tape::<f64>::new();
    /// let x = tape.leaf("x", arr1(&[1.0, 2.0]));
    /// let y = x.square(); // dy_i/dx_i = 2 x_i
    /// let first = y.backward_retaining(&arr1(&[1.0, 0.0]))?;
    /// let second = y.backward_with(&arr1(&[0.0, 1.0]))?; // the last walk
    /// assert_eq!(first.wrt(&x)?.as_slice().unwrap(), &[2.0, 0.0]);
    /// assert_eq!(second.wrt(&x)?.as_slice().unwrap(), &[0.0, 4.0]);
    /// assert!(y.backward_with(&arr1(&[1.0, 1.0])).is_err()); // released
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Tensor::backward_with`].
    pub fn backward_retaining(&self, cotangent: impl IntoArray<A>) -> Result<LeafGradients<A>> {
        self.reverse("backward_retaining", &cotangent.into_array(), Saved::Retain)
    }

    fn reverse(
        &self,
        op: &'static str,
        cotangent: &ArrayD<A>,
        saved: Saved,
    ) -> Result<LeafGradients<A>> {
        if cotangent.shape() != self.shape() {
            return Err(Error::incompatible(
                op,
                self.shape(),
                cotangent.shape(),
                "the cotangent must have the output's shape",
            ));
        }
        let Some((tape, root)) = self.node() else {
            // A constant depends on no leaf: there are no gradients.
            return Ok(LeafGradients {
                tape: None,
                grads: Vec::new(),
            });
        };
        let grads = tape.backward_from(root, cotangent.clone(), saved)?;
        Ok(LeafGradients {
            tape: Some(tape.id()),
            grads,
        })
    }
}

impl<A: Float> std::fmt::Debug for LeafGradients<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reached = self.grads.iter().filter(|g| g.is_some()).count();
        write!(f, "LeafGradients({reached} leaves reached)")
    }
}
