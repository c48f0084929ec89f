//! The primitive ops, one file per family, each op's VJP beside its forward; and the
//! composites built from them. All are methods of [`Tensor`](crate::Tensor), except the
//! losses and [`one_hot`], which are free functions.

mod binary;
mod composite;
mod custom;
pub(crate) mod fused;
mod linalg;
mod reduce;
mod shape_ops;
mod unary;

pub use composite::{mse, softmax_cross_entropy};
pub use custom::custom_op;
pub use shape_ops::one_hot;
