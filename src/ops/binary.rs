//! Elementwise binary ops with NumPy broadcasting, each VJP beside its forward.
//!
//! VJPs return gradients in the broadcast output shape; the tape sums them back to each
//! input's shape (see `shape::sum_to_shape`), so no rule here reduces on its own.

use ndarray::{ArrayD, IxDyn, Zip};

use crate::error::Result;
use crate::float::Float;
use crate::shape::broadcast_shape;
use crate::tensor::{Tensor, record};

/// `f` applied to the broadcast of `a` and `b`.
fn zip_broadcast<A: Float>(
    op: &'static str,
    a: &ArrayD<A>,
    b: &ArrayD<A>,
    f: impl Fn(A, A) -> A,
) -> Result<ArrayD<A>> {
    let shape = IxDyn(&broadcast_shape(op, a.shape(), b.shape())?);
    // Both views broadcast to `shape`, which `broadcast_shape` has just validated.
    let (Some(a), Some(b)) = (a.broadcast(shape.clone()), b.broadcast(shape)) else {
        unreachable!("{op}: shapes were checked broadcastable");
    };
    Ok(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
}

/// The VJP of `a + b`: the gradient passes through to both, moved rather than copied where
/// only one input wants it.
fn pass_through<A: Float>(g: ArrayD<A>, needs: &[bool]) -> Vec<Option<ArrayD<A>>> {
    match (needs[0], needs[1]) {
        (true, true) => vec![Some(g.clone()), Some(g)],
        (true, false) => vec![Some(g), None],
        (false, true) => vec![None, Some(g)],
        (false, false) => vec![None, None],
    }
}

impl<A: Float> Tensor<A> {
    /// `self + other`, broadcasting. PyTorch: `torch.add`; JAX: `jnp.add`.
    ///
    /// ```
    /// use tapegrad::Tensor;
    /// use ndarray::{arr1, arr2};
    /// let a = Tensor::constant(arr2(&[[1.0f64], [2.0]])); // (2, 1)
    /// let b = Tensor::constant(arr1(&[10.0, 20.0, 30.0])); // (3,)
    /// assert_eq!(a.add(&b)?.shape(), &[2, 3]);
    /// let c = Tensor::constant(arr2(&[[1.0, 2.0], [3.0, 4.0]])); // (2, 2)
    /// assert!(b.add(&c).is_err()); // 3 against 2: not broadcastable
    /// # Ok::<(), tapegrad::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn add(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        let value = zip_broadcast("add", self.value(), other.value(), |x, y| x + y)?;
        record("add", &[self, other], value, pass_through)
    }

    /// `self - other`, broadcasting.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn sub(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        let value = zip_broadcast("sub", self.value(), other.value(), |x, y| x - y)?;
        record("sub", &[self, other], value, |g, needs| {
            vec![
                needs[0].then(|| g.clone()),
                needs[1].then(|| g.mapv(|x| -x)),
            ]
        })
    }

    /// `self * other` elementwise, broadcasting.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn mul(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        let value = zip_broadcast("mul", self.value(), other.value(), |x, y| x * y)?;
        let (a, b) = (self.shared_value(), other.shared_value());
        record("mul", &[self, other], value, move |mut g, needs| {
            // d(ab)/da = b, d(ab)/db = a. The last gradient reuses g's buffer.
            let ga = needs[0].then(|| {
                if needs[1] {
                    &g * &*b
                } else {
                    std::mem::take(&mut g) * &*b
                }
            });
            let gb = needs[1].then(|| g * &*a);
            vec![ga, gb]
        })
    }

    /// `self / other` elementwise, broadcasting.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn div(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        let value = zip_broadcast("div", self.value(), other.value(), |x, y| x / y)?;
        let (a, b) = (self.shared_value(), other.shared_value());
        record("div", &[self, other], value, move |g, needs| {
            // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2.
            let ga = needs[0].then(|| &g / &*b);
            let gb = needs[1].then(|| {
                let mut gb = &(g * &*a) / &(&*b * &*b);
                gb.mapv_inplace(|x| -x);
                gb
            });
            vec![ga, gb]
        })
    }

    /// Elementwise maximum, broadcasting; NaN if either side is NaN (PyTorch, JAX). At a tie
    /// the gradient is split evenly between the two inputs (as JAX does), so the sum of both
    /// gradients is always `g`.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn maximum(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        self.choose("maximum", other, |x, y| x > y)
    }

    /// Elementwise minimum, broadcasting; ties split as in [`Tensor::maximum`].
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn minimum(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        self.choose("minimum", other, |x, y| x < y)
    }

    /// Picks `self` where `prefer(self, other)`, `other` where `prefer(other, self)`, and at
    /// a tie either (they are equal), sending half of the gradient each way.
    fn choose(
        &self,
        op: &'static str,
        other: &Tensor<A>,
        prefer: fn(A, A) -> bool,
    ) -> Result<Tensor<A>> {
        // A NaN on either side is the result (as PyTorch's and JAX's maximum): `x + y` is it.
        let value = zip_broadcast(op, self.value(), other.value(), |x, y| {
            if x.is_nan() || y.is_nan() {
                x + y
            } else if prefer(y, x) {
                y
            } else {
                x
            }
        })?;
        let (a, b) = (self.shared_value(), other.shared_value());
        record(op, &[self, other], value, move |g, needs| {
            let share_of_a = zip_broadcast(op, &a, &b, |x, y| {
                if prefer(x, y) {
                    A::one()
                } else if prefer(y, x) {
                    A::zero()
                } else {
                    A::of(0.5)
                }
            })
            .expect("shapes checked in forward");
            vec![
                needs[0].then(|| &g * &share_of_a),
                needs[1].then(|| &g * &share_of_a.mapv(|s| A::one() - s)),
            ]
        })
    }

    /// `mask ? on_true : on_false` elementwise, broadcasting all three. `mask` is read as a
    /// constant (nonzero is true); gradients flow to the branch that was chosen.
    /// JAX: `jnp.where`; PyTorch: `torch.where`.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the three shapes do not
    /// broadcast together, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the branches
    /// are tracked on different tapes; nothing is recorded.
    pub fn select(
        mask: &Tensor<A>,
        on_true: &Tensor<A>,
        on_false: &Tensor<A>,
    ) -> Result<Tensor<A>> {
        let shape = broadcast_shape(
            "select",
            &broadcast_shape("select", mask.shape(), on_true.shape())?,
            on_false.shape(),
        )?;
        let dim = IxDyn(&shape);
        let chosen = mask
            .value()
            .broadcast(dim.clone())
            .expect("checked")
            .mapv(|m| if m != A::zero() { A::one() } else { A::zero() });
        let (t, f) = (
            on_true.value().broadcast(dim.clone()).expect("checked"),
            on_false.value().broadcast(dim).expect("checked"),
        );
        let value = Zip::from(&chosen)
            .and(&t)
            .and(&f)
            .map_collect(|&m, &x, &y| if m != A::zero() { x } else { y });
        record("select", &[on_true, on_false], value, move |g, needs| {
            vec![
                needs[0].then(|| &g * &chosen),
                needs[1].then(|| &g * &chosen.mapv(|m| A::one() - m)),
            ]
        })
    }

    /// `1.0` where `self > other`, else `0.0`: a constant mask (comparisons have no
    /// gradient). Broadcasts.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn gt(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        self.compare("gt", other, |x, y| x > y)
    }

    /// `1.0` where `self < other`, else `0.0`: a constant mask.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn lt(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        self.compare("lt", other, |x, y| x < y)
    }

    /// `1.0` where `self >= other`, else `0.0`: a constant mask.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn ge(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        self.compare("ge", other, |x, y| x >= y)
    }

    /// `1.0` where `self <= other`, else `0.0`: a constant mask.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn le(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        self.compare("le", other, |x, y| x <= y)
    }

    /// `1.0` where `self == other`, else `0.0`: a constant mask.
    ///
    /// # Errors
    ///
    /// [`Error::IncompatibleShapes`](crate::Error::IncompatibleShapes) if the shapes do not
    /// broadcast, [`Error::DifferentTapes`](crate::Error::DifferentTapes) if the operands are
    /// tracked on different tapes; nothing is recorded.
    pub fn eq_mask(&self, other: &Tensor<A>) -> Result<Tensor<A>> {
        self.compare("eq", other, |x, y| x == y)
    }

    fn compare(
        &self,
        op: &'static str,
        other: &Tensor<A>,
        test: fn(A, A) -> bool,
    ) -> Result<Tensor<A>> {
        let mask = zip_broadcast(op, self.value(), other.value(), |x, y| {
            if test(x, y) { A::one() } else { A::zero() }
        })?;
        Ok(Tensor::constant(mask))
    }
}
