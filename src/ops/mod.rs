//! The primitive ops, one file per family, each op's VJP beside its forward; the composites
//! and losses built from them. All are methods of [`Tensor`](crate::Tensor), except the
//! losses and [`one_hot`], which are free functions.

mod binary;
pub(crate) mod broadcast;
pub(crate) mod collective;
mod composite;
mod conv;
mod custom;
pub(crate) mod fusion;
mod linalg;
mod loss;
pub(crate) mod normalize;
mod operators;
mod pool;
mod reduce;
pub(crate) mod remat;
pub(crate) mod shape_ops;
mod tangent;
mod unary;
pub(crate) mod window;

pub use conv::ConvOptions;
pub use custom::{custom_op, custom_op_with_rules};
pub use fusion::Fusion;
pub use loss::{mse, softmax_cross_entropy};
pub use remat::remat;
pub use shape_ops::one_hot;
pub use window::Padding;
