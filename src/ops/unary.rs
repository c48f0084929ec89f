//! Elementwise unary ops. Each is one line: its forward `f(x)`, its derivative written in
//! terms of the input `x` and the output `y`, whichever is cheaper, and the same derivative
//! as ops (for a recorded backward pass, which must differentiate the derivative too).

use std::sync::Arc;

use ndarray::{ArrayD, Zip};

use crate::float::{Float, nan_max};
use crate::ops::tangent::only;
use crate::record::{Primal, Rules, record_one};
use crate::tensor::Tensor;

/// What an elementwise op saves: its input and output, and its derivative on arrays.
struct Elementwise<A, D> {
    x: Arc<ArrayD<A>>,
    y: Arc<ArrayD<A>>,
    df: D,
}

impl<A: Float, D: Fn(A, A) -> A> Elementwise<A, D> {
    /// `g * df(x, y)`, in `g`'s buffer: the VJP (the Jacobian is diagonal, so the VJP and
    /// the JVP are the same product).
    fn times_derivative(&self, mut t: ArrayD<A>) -> ArrayD<A> {
        Zip::from(&mut t)
            .and(&*self.x)
            .and(&*self.y)
            .for_each(|t, &x, &y| *t *= (self.df)(x, y));
        t
    }

    /// `t * df(x, y)` in a new array: the JVP, which must not write the tangent it reads.
    fn tangent(&self, t: &ArrayD<A>) -> ArrayD<A> {
        Zip::from(t)
            .and(&*self.x)
            .and(&*self.y)
            .map_collect(|&t, &x, &y| t * (self.df)(x, y))
    }
}

impl<A: Float> Tensor<A> {
    /// Applies `f` elementwise and records the VJP `g * df(x, y)`, where `df` is the
    /// derivative of `f` at `x` (given `y = f(x)` too, to reuse it), and `derivative`, the
    /// same as ops on the input and output tensors.
    fn unary(
        &self,
        op: &'static str,
        f: impl Fn(A) -> A,
        df: impl Fn(A, A) -> A + 'static,
        derivative: impl Fn(&Tensor<A>, &Tensor<A>) -> Tensor<A> + 'static,
    ) -> Tensor<A> {
        let y = Arc::new(self.value().mapv(f));
        let saved = Elementwise {
            x: self.shared_value(),
            y: Arc::clone(&y),
            df,
        };
        let rules = Rules {
            saved,
            // In place: the incoming gradient's buffer becomes the outgoing one.
            vjp: |s: &Elementwise<A, _>, g: ArrayD<A>, _: &[bool]| s.times_derivative(g),
            recorded: move |s: &Elementwise<A, _>, g: &Tensor<A>, p: &Primal<'_, A>| {
                g.mul(&derivative(&p.input(0, &s.x), &p.output(&s.y)))
            },
            jvp: |s: &Elementwise<A, _>, t: &[Option<&ArrayD<A>>]| Ok(s.tangent(only(t))),
        };
        record_one(op, self, y, rules)
    }

    /// `c * x` for a constant `c` (the rules of `neg` and `mul_scalar`).
    fn scale(&self, op: &'static str, c: A) -> Tensor<A> {
        let rules = Rules {
            saved: c,
            vjp: |&c: &A, mut g: ArrayD<A>, _: &[bool]| {
                g.mapv_inplace(|x| x * c);
                g
            },
            recorded: |&c: &A, g: &Tensor<A>, _: &Primal<'_, A>| Ok(g.mul_scalar(c)),
            jvp: |&c: &A, t: &[Option<&ArrayD<A>>]| Ok(only(t) * c),
        };
        record_one(op, self, self.value().mapv(|x| x * c), rules)
    }

    /// `-x`.
    #[must_use]
    pub fn neg(&self) -> Tensor<A> {
        self.scale("neg", -A::one())
    }

    /// `e^x`.
    #[must_use]
    pub fn exp(&self) -> Tensor<A> {
        self.unary("exp", A::exp, |_, y| y, |_, y| y.clone())
    }

    /// Natural logarithm; smooth for `x > 0`.
    #[must_use]
    pub fn log(&self) -> Tensor<A> {
        self.unary("log", A::ln, |x, _| x.recip(), |x, _| x.recip())
    }

    /// Square root; smooth for `x > 0`.
    #[must_use]
    pub fn sqrt(&self) -> Tensor<A> {
        self.unary(
            "sqrt",
            A::sqrt,
            |_, y| A::of(0.5) / y,
            |_, y| y.recip().mul_scalar(A::of(0.5)),
        )
    }

    /// `1 / x`; smooth away from 0.
    #[must_use]
    pub fn recip(&self) -> Tensor<A> {
        self.unary("recip", A::recip, |_, y| -y * y, |_, y| y.square().neg())
    }

    /// Hyperbolic tangent.
    #[must_use]
    pub fn tanh(&self) -> Tensor<A> {
        self.unary(
            "tanh",
            A::tanh,
            |_, y| A::one() - y * y,
            |_, y| y.square().neg().add_scalar(A::one()),
        )
    }

    /// Logistic sigmoid `1 / (1 + e^-x)`, computed without overflow for large `|x|`.
    #[must_use]
    pub fn sigmoid(&self) -> Tensor<A> {
        let sigmoid = |x: A| {
            if x >= A::zero() {
                (A::one() + (-x).exp()).recip()
            } else {
                let e = x.exp();
                e / (A::one() + e)
            }
        };
        self.unary(
            "sigmoid",
            sigmoid,
            |_, y| y * (A::one() - y),
            |_, y| y.mul(&y.neg().add_scalar(A::one())).expect("same shape"),
        )
    }

    /// `max(x, 0)`; NaN stays NaN, as in PyTorch and JAX (a ReLU that maps NaN to 0 hides a
    /// broken input from every later check). The derivative at exactly 0 is taken as 0, as
    /// PyTorch and JAX do.
    #[must_use]
    pub fn relu(&self) -> Tensor<A> {
        let step = |x: A, _| if x > A::zero() { A::one() } else { A::zero() };
        self.unary(
            "relu",
            |x| nan_max(x, A::zero()),
            step,
            |x, _| {
                Tensor::constant(
                    x.value()
                        .mapv(|x| if x > A::zero() { A::one() } else { A::zero() }),
                )
            },
        )
    }

    /// `|x|`. The derivative at exactly 0 is taken as 0.
    #[must_use]
    pub fn abs(&self) -> Tensor<A> {
        let sign = |x: A, _: A| {
            if x > A::zero() {
                A::one()
            } else if x < A::zero() {
                -A::one()
            } else {
                A::zero()
            }
        };
        self.unary("abs", A::abs, sign, move |x, _| {
            Tensor::constant(x.value().mapv(|x| sign(x, x)))
        })
    }

    /// `x^2`.
    #[must_use]
    pub fn square(&self) -> Tensor<A> {
        self.unary(
            "square",
            |x| x * x,
            |x, _| x + x,
            |x, _| x.mul_scalar(A::of(2.0)),
        )
    }

    /// `x^n` for an integer `n`.
    #[must_use]
    pub fn powi(&self, n: i32) -> Tensor<A> {
        let k = A::of(n.into());
        self.unary(
            "powi",
            move |x| x.powi(n),
            move |x, _| k * x.powi(n - 1),
            move |x, _| x.powi(n - 1).mul_scalar(k),
        )
    }

    /// `x^p` for a real `p`; smooth for `x > 0`.
    #[must_use]
    pub fn powf(&self, p: A) -> Tensor<A> {
        self.unary(
            "powf",
            move |x| x.powf(p),
            move |x, _| p * x.powf(p - A::one()),
            move |x, _| x.powf(p - A::one()).mul_scalar(p),
        )
    }

    /// The same value as a node of its own: where a recorded backward pass needs a separate
    /// handle on an input (see `recorded::vjp_by_definition`).
    pub(crate) fn identity(&self) -> Tensor<A> {
        let rules = Rules {
            saved: (),
            vjp: |(): &(), g: ArrayD<A>, _: &[bool]| g,
            recorded: |(): &(), g: &Tensor<A>, _: &Primal<'_, A>| Ok(g.clone()),
            jvp: |(): &(), t: &[Option<&ArrayD<A>>]| Ok(only(t).clone()),
        };
        record_one("identity", self, self.shared_value(), rules)
    }

    /// `x + c` for a scalar `c`.
    #[must_use]
    pub fn add_scalar(&self, c: A) -> Tensor<A> {
        let rules = Rules {
            saved: (),
            vjp: |(): &(), g: ArrayD<A>, _: &[bool]| g,
            recorded: |(): &(), g: &Tensor<A>, _: &Primal<'_, A>| Ok(g.clone()),
            jvp: |(): &(), t: &[Option<&ArrayD<A>>]| Ok(only(t).clone()),
        };
        record_one("add_scalar", self, self.value().mapv(|x| x + c), rules)
    }

    /// `c * x` for a scalar `c`.
    #[must_use]
    pub fn mul_scalar(&self, c: A) -> Tensor<A> {
        self.scale("mul_scalar", c)
    }
}
