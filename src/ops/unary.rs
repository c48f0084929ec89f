//! Elementwise unary ops. Each is one line: its forward `f(x)` and its derivative written in
//! terms of the input `x` and the output `y`, whichever is cheaper.

use ndarray::Zip;

use crate::float::{Float, nan_max};
use crate::tensor::Tensor;
use crate::tensor::record_one;

impl<A: Float> Tensor<A> {
    /// Applies `f` elementwise and records the VJP `g * df(x, y)`, where `df` is the
    /// derivative of `f` at `x` (given `y = f(x)` too, to reuse it).
    fn unary(
        &self,
        op: &'static str,
        f: impl Fn(A) -> A,
        df: impl Fn(A, A) -> A + 'static,
    ) -> Tensor<A> {
        let y = std::sync::Arc::new(self.value().mapv(f));
        let (x_in, y_out) = (self.shared_value(), y.clone());
        record_one(op, self, y, move |mut g| {
            // In place: the incoming gradient's buffer becomes the outgoing one.
            Zip::from(&mut g)
                .and(&*x_in)
                .and(&*y_out)
                .for_each(|g, &x, &y| *g *= df(x, y));
            g
        })
    }

    /// `-x`.
    #[must_use]
    pub fn neg(&self) -> Tensor<A> {
        record_one("neg", self, self.value().mapv(|x| -x), |mut g| {
            g.mapv_inplace(|x| -x);
            g
        })
    }

    /// `e^x`.
    #[must_use]
    pub fn exp(&self) -> Tensor<A> {
        self.unary("exp", A::exp, |_, y| y)
    }

    /// Natural logarithm; smooth for `x > 0`.
    #[must_use]
    pub fn log(&self) -> Tensor<A> {
        self.unary("log", A::ln, |x, _| x.recip())
    }

    /// Square root; smooth for `x > 0`.
    #[must_use]
    pub fn sqrt(&self) -> Tensor<A> {
        self.unary("sqrt", A::sqrt, |_, y| A::of(0.5) / y)
    }

    /// `1 / x`; smooth away from 0.
    #[must_use]
    pub fn recip(&self) -> Tensor<A> {
        self.unary("recip", A::recip, |_, y| -y * y)
    }

    /// Hyperbolic tangent.
    #[must_use]
    pub fn tanh(&self) -> Tensor<A> {
        self.unary("tanh", A::tanh, |_, y| A::one() - y * y)
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
        self.unary("sigmoid", sigmoid, |_, y| y * (A::one() - y))
    }

    /// `max(x, 0)`; NaN stays NaN, as in PyTorch and JAX (a ReLU that maps NaN to 0 hides a
    /// broken input from every later check). The derivative at exactly 0 is taken as 0, as
    /// PyTorch and JAX do.
    #[must_use]
    pub fn relu(&self) -> Tensor<A> {
        let step = |x: A, _| if x > A::zero() { A::one() } else { A::zero() };
        self.unary("relu", |x| nan_max(x, A::zero()), step)
    }

    /// `|x|`. The derivative at exactly 0 is taken as 0.
    #[must_use]
    pub fn abs(&self) -> Tensor<A> {
        let sign = |x: A, _| {
            if x > A::zero() {
                A::one()
            } else if x < A::zero() {
                -A::one()
            } else {
                A::zero()
            }
        };
        self.unary("abs", A::abs, sign)
    }

    /// `x^2`.
    #[must_use]
    pub fn square(&self) -> Tensor<A> {
        self.unary("square", |x| x * x, |x, _| x + x)
    }

    /// `x^n` for an integer `n`.
    #[must_use]
    pub fn powi(&self, n: i32) -> Tensor<A> {
        self.unary(
            "powi",
            move |x| x.powi(n),
            move |x, _| A::of(n.into()) * x.powi(n - 1),
        )
    }

    /// `x^p` for a real `p`; smooth for `x > 0`.
    #[must_use]
    pub fn powf(&self, p: A) -> Tensor<A> {
        self.unary(
            "powf",
            move |x| x.powf(p),
            move |x, _| p * x.powf(p - A::one()),
        )
    }

    /// `x + c` for a scalar `c`.
    #[must_use]
    pub fn add_scalar(&self, c: A) -> Tensor<A> {
        record_one("add_scalar", self, self.value().mapv(|x| x + c), |g| {
            g.clone()
        })
    }

    /// `c * x` for a scalar `c`.
    #[must_use]
    pub fn mul_scalar(&self, c: A) -> Tensor<A> {
        record_one("mul_scalar", self, self.value().mapv(|x| x * c), move |g| {
            g * c
        })
    }
}
