//! Rust's arithmetic operators on tensors, each a spelling of an op defined elsewhere.
//!
//! Between two tensors an operator broadcasts, and broadcasting can fail, so `&a + &b` is a
//! `Result<Tensor>` (candle makes the same choice): `(&a * &b)? + &c` reads like the maths
//! and still names the op and the shapes when they do not fit. With a scalar nothing can
//! fail, so `&a * 2.0` and `-&a` are plain tensors. Both owned tensors and references work;
//! a reference does not consume the tensor (cloning a tensor only bumps reference counts
//! either way).
//!
//! ```
//! use ndarray::arr1;
//! use tapegrad::Tape;
//! let tape = Tape::<f64>::new();
//! let x = tape.leaf("x", arr1(&[1.0, 2.0]));
//! let y = tape.leaf("y", arr1(&[3.0, -1.0]));
//! let z = ((&x * &y)? + &x)? * 2.0 - 1.0; // 2 (x y + x) - 1
//! assert_eq!(z.value().as_slice().unwrap(), [7.0, -1.0]);
//! let grads = z.sum_all().backward()?;
//! assert_eq!(grads.wrt(&x)?.as_slice().unwrap(), [8.0, 0.0]); // 2 (y + 1)
//! assert!((&x + &tape.leaf("w", arr1(&[1.0, 2.0, 3.0]))).is_err()); // 2 against 3
//! # Ok::<(), tapegrad::Error>(())
//! ```

use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::error::Result;
use crate::float::Float;
use crate::tensor::Tensor;

/// `Tensor ∘ Tensor -> Result<Tensor>` for every pairing of owned and borrowed operands,
/// calling the named method.
macro_rules! tensor_operator {
    ($trait:ident, $method:ident) => {
        impl<A: Float> $trait<&Tensor<A>> for &Tensor<A> {
            type Output = Result<Tensor<A>>;
            fn $method(self, other: &Tensor<A>) -> Result<Tensor<A>> {
                Tensor::$method(self, other)
            }
        }
        impl<A: Float> $trait<Tensor<A>> for &Tensor<A> {
            type Output = Result<Tensor<A>>;
            fn $method(self, other: Tensor<A>) -> Result<Tensor<A>> {
                Tensor::$method(self, &other)
            }
        }
        impl<A: Float> $trait<&Tensor<A>> for Tensor<A> {
            type Output = Result<Tensor<A>>;
            fn $method(self, other: &Tensor<A>) -> Result<Tensor<A>> {
                Tensor::$method(&self, other)
            }
        }
        impl<A: Float> $trait<Tensor<A>> for Tensor<A> {
            type Output = Result<Tensor<A>>;
            fn $method(self, other: Tensor<A>) -> Result<Tensor<A>> {
                Tensor::$method(&self, &other)
            }
        }
    };
}

tensor_operator!(Add, add);
tensor_operator!(Sub, sub);
tensor_operator!(Mul, mul);
tensor_operator!(Div, div);

/// `Tensor ∘ scalar -> Tensor`, owned and borrowed, as `add_scalar` / `mul_scalar`.
/// Division by `c` is multiplication by `1 / c` (one rounding more than `x / c`, as in
/// PyTorch's CPU kernels for a scalar divisor).
macro_rules! scalar_operator {
    ($trait:ident, $method:ident, |$x:ident, $c:ident| $body:expr) => {
        impl<A: Float> $trait<A> for &Tensor<A> {
            type Output = Tensor<A>;
            fn $method(self, $c: A) -> Tensor<A> {
                let $x = self;
                $body
            }
        }
        impl<A: Float> $trait<A> for Tensor<A> {
            type Output = Tensor<A>;
            fn $method(self, $c: A) -> Tensor<A> {
                let $x = &self;
                $body
            }
        }
    };
}

scalar_operator!(Add, add, |x, c| x.add_scalar(c));
scalar_operator!(Sub, sub, |x, c| x.add_scalar(-c));
scalar_operator!(Mul, mul, |x, c| x.mul_scalar(c));
scalar_operator!(Div, div, |x, c| x.mul_scalar(c.recip()));

/// `scalar ∘ Tensor -> Tensor` for `f32` and `f64` (a generic `impl<A> Mul<Tensor<A>> for A`
/// is not allowed by the orphan rule).
macro_rules! scalar_on_the_left {
    ($($float:ty),*) => {$(
        impl Add<&Tensor<$float>> for $float {
            type Output = Tensor<$float>;
            fn add(self, x: &Tensor<$float>) -> Tensor<$float> {
                x.add_scalar(self)
            }
        }
        impl Add<Tensor<$float>> for $float {
            type Output = Tensor<$float>;
            fn add(self, x: Tensor<$float>) -> Tensor<$float> {
                x.add_scalar(self)
            }
        }
        impl Sub<&Tensor<$float>> for $float {
            type Output = Tensor<$float>;
            fn sub(self, x: &Tensor<$float>) -> Tensor<$float> {
                x.neg().add_scalar(self)
            }
        }
        impl Sub<Tensor<$float>> for $float {
            type Output = Tensor<$float>;
            fn sub(self, x: Tensor<$float>) -> Tensor<$float> {
                x.neg().add_scalar(self)
            }
        }
        impl Mul<&Tensor<$float>> for $float {
            type Output = Tensor<$float>;
            fn mul(self, x: &Tensor<$float>) -> Tensor<$float> {
                x.mul_scalar(self)
            }
        }
        impl Mul<Tensor<$float>> for $float {
            type Output = Tensor<$float>;
            fn mul(self, x: Tensor<$float>) -> Tensor<$float> {
                x.mul_scalar(self)
            }
        }
    )*};
}

scalar_on_the_left!(f32, f64);

impl<A: Float> Neg for &Tensor<A> {
    type Output = Tensor<A>;
    fn neg(self) -> Tensor<A> {
        Tensor::neg(self)
    }
}

impl<A: Float> Neg for Tensor<A> {
    type Output = Tensor<A>;
    fn neg(self) -> Tensor<A> {
        Tensor::neg(&self)
    }
}

#[cfg(test)]
mod tests {
    use ndarray::arr1;

    use crate::tape::Tape;
    use crate::tensor::Tensor;

    #[test]
    fn operators_record_the_same_ops_as_the_methods() {
        let tape = Tape::<f64>::new();
        let x = tape.leaf("x", arr1(&[1.0, -2.0]));
        let y = tape.leaf("y", arr1(&[0.5, 4.0]));
        let by_operator = [
            (&x + &y).unwrap(),
            (&x - &y).unwrap(),
            (&x * &y).unwrap(),
            (&x / &y).unwrap(),
            -&x,
            &x * 3.0,
            3.0 * &x,
            &x + 1.0,
            1.0 - &x,
            &x / 4.0,
        ];
        let by_method = [
            x.add(&y).unwrap(),
            x.sub(&y).unwrap(),
            x.mul(&y).unwrap(),
            x.div(&y).unwrap(),
            x.neg(),
            x.mul_scalar(3.0),
            x.mul_scalar(3.0),
            x.add_scalar(1.0),
            x.neg().add_scalar(1.0),
            x.mul_scalar(0.25),
        ];
        for (a, b) in by_operator.iter().zip(&by_method) {
            assert_eq!(a.value(), b.value());
            assert!(a.is_tracked());
        }
    }

    #[test]
    fn a_shape_error_names_the_op() {
        let a = Tensor::<f64>::constant(arr1(&[1.0, 2.0]));
        let b = Tensor::<f64>::constant(arr1(&[1.0, 2.0, 3.0]));
        let err = (a * b).unwrap_err().to_string();
        assert!(err.contains("mul") && err.contains('3'), "{err}");
    }
}
