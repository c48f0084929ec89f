//! The element types tapegrad computes in: `f32` for speed, `f64` for checking.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

use ndarray::{LinalgScalar, ScalarOperand};

/// A floating-point element type: implemented for `f32` and `f64`, and sealed.
///
/// Everything in tapegrad is generic over `A: Float`. Gradients are checked in `f64`
/// (see [`gradcheck`](crate::gradcheck)); `f32` is for speed and is tested against `f64`.
///
/// ```
/// use tapegrad::Float;
/// assert_eq!(<f32 as Float>::of(0.5), 0.5f32);
/// assert_eq!(2.5f32.as_f64(), 2.5);
/// ```
pub trait Float:
    num_traits::Float
    + LinalgScalar
    + ScalarOperand
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + sealed::Sealed
{
    /// The type's name as NumPy spells it (`"float32"`, `"float64"`).
    const DTYPE: &'static str;

    /// Converts an `f64` constant (rounding for `f32`).
    fn of(x: f64) -> Self;

    /// Widens to `f64` (exact for both types, but for the payload of a signalling NaN, which
    /// the conversion quiets).
    fn as_f64(self) -> f64;

    /// Appends the value's little-endian bytes, bit for bit (a signalling NaN stays one).
    fn write_le(self, out: &mut Vec<u8>);

    /// The value whose little-endian bytes are `bytes` (of the type's size), bit for bit.
    fn read_le(bytes: &[u8]) -> Self;
}

impl Float for f32 {
    const DTYPE: &'static str = "float32";
    fn of(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        f64::from(self)
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Self {
        f32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }
}

impl Float for f64 {
    const DTYPE: &'static str = "float64";
    fn of(x: f64) -> Self {
        x
    }
    fn as_f64(self) -> f64 {
        self
    }
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn read_le(bytes: &[u8]) -> Self {
        f64::from_le_bytes(bytes.try_into().expect("8 bytes"))
    }
}

/// The larger of `a` and `b`, NaN if either is: NaN propagates, as in PyTorch's and JAX's
/// `maximum` (Rust's `f64::max` returns the other operand instead, which would hide it).
#[inline(always)]
pub(crate) fn nan_max<A: Float>(a: A, b: A) -> A {
    if b > a || b.is_nan() { b } else { a }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}
