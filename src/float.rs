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

    /// Widens to `f64` (exact for both types).
    fn as_f64(self) -> f64;
}

impl Float for f32 {
    const DTYPE: &'static str = "float32";
    fn of(x: f64) -> Self {
        x as f32
    }
    fn as_f64(self) -> f64 {
        f64::from(self)
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
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}
