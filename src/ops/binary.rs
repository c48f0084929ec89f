//! Elementwise binary ops with NumPy broadcasting, each VJP beside its forward.
//!
//! VJPs return gradients in the broadcast output shape; the tape sums them back to each
//! input's shape (see `shape::sum_to_shape`), so no rule here reduces on its own.

use ndarray::{ArrayD, IxDyn, Zip};

use std::sync::Arc;

use crate::error::Result;
use crate::float::Float;
use crate::ops::broadcast::zip_broadcast;
use crate::ops::tangent::sum_broadcast;
use crate::record::{Primal, RecordedGrads, Rules, record_rules};
use crate::shape::broadcast_shape;
use crate::tensor::Tensor;

/// `a · b`, broadcasting.
fn times<A: Float>(a: &ArrayD<A>, b: &ArrayD<A>) -> ArrayD<A> {
    zip_broadcast("mul", a, b, |x, y| x * y).expect("shapes checked in the forward pass")
}

/// The VJP of `a + b`: the gradient passes through to both, moved rather than copied where
/// only one input wants it.
fn pass_through<A: Float, S>(_: &S, g: ArrayD<A>, needs: &[bool]) -> Vec<Option<ArrayD<A>>> {
    match (needs[0], needs[1]) {
        (true, true) => vec![Some(g.clone()), Some(g)],
        (true, false) => vec![Some(g), None],
        (false, true) => vec![None, Some(g)],
        (false, false) => vec![None, None],
    }
}

/// What a binary op saves: both inputs and the output's shape.
struct Operands<A> {
    a: Arc<ArrayD<A>>,
    b: Arc<ArrayD<A>>,
    shape: Vec<usize>,
}

impl<A: Float> Operands<A> {
    fn of(a: &Tensor<A>, b: &Tensor<A>, value: &ArrayD<A>) -> Self {
        Operands {
            a: a.shared_value(),
            b: b.shared_value(),
            shape: value.shape().to_vec(),
        }
    }

    /// The output's tangent: the sum of `da(ta)` and `db(tb)` for the inputs with a tangent.
    fn tangent(
        &self,
        tangents: &[Option<&ArrayD<A>>],
        da: impl Fn(&ArrayD<A>) -> ArrayD<A>,
        db: impl Fn(&ArrayD<A>) -> ArrayD<A>,
    ) -> ArrayD<A> {
        let terms = [tangents[0].map(da), tangents[1].map(db)];
        sum_broadcast(&self.shape, terms.into_iter().flatten())
    }
}

/// The recorded VJP of an op whose gradients are `g` times a fixed factor per input.
fn scaled<A: Float>(
    g: &Tensor<A>,
    p: &Primal<'_, A>,
    factors: [&ArrayD<A>; 2],
) -> RecordedGrads<A> {
    (0..2)
        .map(|i| {
            p.needs(i)
                .then(|| g.mul(&Tensor::constant(factors[i])))
                .transpose()
        })
        .collect()
}

/// The rules of an op whose output is `share · a + (1 − share) · b` for a constant `share`
/// (of the output's shape): `maximum`, `minimum`, `select`.
fn shared_between<A: Float>(share: ArrayD<A>) -> impl crate::tape::Rule<A> {
    let other = share.mapv(|s| A::one() - s);
    Rules {
        saved: [share, other],
        vjp: |[a, b]: &[ArrayD<A>; 2], g: ArrayD<A>, needs: &[bool]| {
            vec![needs[0].then(|| &g * a), needs[1].then(|| &g * b)]
        },
        recorded: |[a, b]: &[ArrayD<A>; 2], g: &Tensor<A>, p: &Primal<'_, A>| scaled(g, p, [a, b]),
        jvp: |[a, b]: &[ArrayD<A>; 2], t: &[Option<&ArrayD<A>>]| {
            let terms = [t[0].map(|ta| times(ta, a)), t[1].map(|tb| times(tb, b))];
            Ok(sum_broadcast(a.shape(), terms.into_iter().flatten()))
        },
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
        let rules = Rules {
            saved: Operands::of(self, other, &value),
            vjp: pass_through,
            recorded: |_: &Operands<A>, g: &Tensor<A>, p: &Primal<'_, A>| {
                Ok(vec![
                    p.needs(0).then(|| g.clone()),
                    p.needs(1).then(|| g.clone()),
                ])
            },
            jvp: |s: &Operands<A>, t: &[Option<&ArrayD<A>>]| {
                Ok(s.tangent(t, ArrayD::clone, ArrayD::clone))
            },
        };
        record_rules("add", &[self, other], value, rules)
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
        let rules = Rules {
            saved: Operands::of(self, other, &value),
            vjp: |_: &Operands<A>, g: ArrayD<A>, needs: &[bool]| {
                vec![
                    needs[0].then(|| g.clone()),
                    needs[1].then(|| g.mapv(|x| -x)),
                ]
            },
            recorded: |_: &Operands<A>, g: &Tensor<A>, p: &Primal<'_, A>| {
                Ok(vec![
                    p.needs(0).then(|| g.clone()),
                    p.needs(1).then(|| g.neg()),
                ])
            },
            jvp: |s: &Operands<A>, t: &[Option<&ArrayD<A>>]| {
                Ok(s.tangent(t, ArrayD::clone, |tb| tb.mapv(|x| -x)))
            },
        };
        record_rules("sub", &[self, other], value, rules)
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
        let rules = Rules {
            saved: Operands::of(self, other, &value),
            vjp: |s: &Operands<A>, mut g: ArrayD<A>, needs: &[bool]| {
                // d(ab)/da = b, d(ab)/db = a. The last gradient reuses g's buffer.
                let ga = needs[0].then(|| {
                    if needs[1] {
                        &g * &*s.b
                    } else {
                        std::mem::take(&mut g) * &*s.b
                    }
                });
                let gb = needs[1].then(|| g * &*s.a);
                vec![ga, gb]
            },
            recorded: |s: &Operands<A>, g: &Tensor<A>, p: &Primal<'_, A>| {
                let ga = p.needs(0).then(|| g.mul(&p.input(1, &s.b))).transpose()?;
                let gb = p.needs(1).then(|| g.mul(&p.input(0, &s.a))).transpose()?;
                Ok(vec![ga, gb])
            },
            jvp: |s: &Operands<A>, t: &[Option<&ArrayD<A>>]| {
                Ok(s.tangent(t, |ta| times(ta, &s.b), |tb| times(&s.a, tb)))
            },
        };
        record_rules("mul", &[self, other], value, rules)
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
        let rules = Rules {
            saved: Operands::of(self, other, &value),
            vjp: |s: &Operands<A>, g: ArrayD<A>, needs: &[bool]| {
                // d(a/b)/da = 1/b, d(a/b)/db = -a/b^2.
                let ga = needs[0].then(|| &g / &*s.b);
                let gb = needs[1].then(|| {
                    let mut gb = &(g * &*s.a) / &(&*s.b * &*s.b);
                    gb.mapv_inplace(|x| -x);
                    gb
                });
                vec![ga, gb]
            },
            recorded: |s: &Operands<A>, g: &Tensor<A>, p: &Primal<'_, A>| {
                let b = p.input(1, &s.b);
                let ga = p.needs(0).then(|| g.div(&b)).transpose()?;
                let gb = match p.needs(1) {
                    true => Some(g.mul(&p.input(0, &s.a))?.div(&b.square())?.neg()),
                    false => None,
                };
                Ok(vec![ga, gb])
            },
            jvp: |s: &Operands<A>, t: &[Option<&ArrayD<A>>]| {
                let quotient = |x: &ArrayD<A>, y: &ArrayD<A>| {
                    zip_broadcast("div", x, y, |x, y| x / y).expect("shapes checked")
                };
                let da = |ta: &ArrayD<A>| quotient(ta, &s.b);
                let db = |tb: &ArrayD<A>| {
                    let b_squared = s.b.mapv(|b| -(b * b));
                    quotient(&times(tb, &s.a), &b_squared)
                };
                Ok(s.tangent(t, da, db))
            },
        };
        record_rules("div", &[self, other], value, rules)
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
        let share_of_a = zip_broadcast(op, self.value(), other.value(), |x, y| {
            if prefer(x, y) {
                A::one()
            } else if prefer(y, x) {
                A::zero()
            } else {
                A::of(0.5)
            }
        })?;
        record_rules(op, &[self, other], value, shared_between(share_of_a))
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
        record_rules(
            "select",
            &[on_true, on_false],
            value,
            shared_between(chosen),
        )
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
