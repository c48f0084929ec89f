//! Initializers: closures from a random stream and a shape to an array.
//!
//! ```
//! use tapegrad::{nn::init, Initializer, SplitMix64};
//! let kernel: ndarray::ArrayD<f64> = init::lecun_normal().init(&mut SplitMix64::new(0), &[64, 10]);
//! assert_eq!(kernel.shape(), &[64, 10]);
//! ```

use ndarray::ArrayD;

use crate::float::Float;
use crate::rng::SplitMix64;

/// All zeros (biases, running means).
pub fn zeros<A: Float>() -> impl Fn(&mut SplitMix64, &[usize]) -> ArrayD<A> {
    |_, shape| ArrayD::zeros(shape)
}

/// All ones (BatchNorm scales, running variances).
pub fn ones<A: Float>() -> impl Fn(&mut SplitMix64, &[usize]) -> ArrayD<A> {
    |_, shape| ArrayD::ones(shape)
}

/// Every element `value`.
pub fn constant<A: Float>(value: f64) -> impl Fn(&mut SplitMix64, &[usize]) -> ArrayD<A> {
    move |_, shape| ArrayD::from_elem(shape, A::of(value))
}

/// Normal with mean 0 and standard deviation `stddev`.
pub fn normal<A: Float>(stddev: f64) -> impl Fn(&mut SplitMix64, &[usize]) -> ArrayD<A> {
    move |rng, shape| ArrayD::from_shape_simple_fn(shape, || A::of(stddev * rng.normal()))
}

/// Uniform in `[low, high)`.
pub fn uniform<A: Float>(low: f64, high: f64) -> impl Fn(&mut SplitMix64, &[usize]) -> ArrayD<A> {
    move |rng, shape| {
        ArrayD::from_shape_simple_fn(shape, || A::of(low + (high - low) * rng.uniform()))
    }
}

/// LeCun normal, Flax's default for `Dense` kernels: a normal truncated at two standard
/// deviations, scaled so that the variance is `1 / fan_in`, where `fan_in` is the product of
/// every dimension but the last (`in` for a kernel `(in, out)`).
pub fn lecun_normal<A: Float>() -> impl Fn(&mut SplitMix64, &[usize]) -> ArrayD<A> {
    // The standard deviation of a unit normal truncated to [-2, 2].
    const TRUNCATED_STDDEV: f64 = 0.879_625_661_034_239_8;
    |rng, shape| {
        let fan_in: usize = shape[..shape.len().saturating_sub(1)].iter().product();
        let stddev = (1.0 / fan_in.max(1) as f64).sqrt() / TRUNCATED_STDDEV;
        ArrayD::from_shape_simple_fn(shape, || {
            loop {
                let z = rng.normal();
                if z.abs() <= 2.0 {
                    break A::of(stddev * z);
                }
            }
        })
    }
}
