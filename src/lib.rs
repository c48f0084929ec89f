//! # tapegrad
//!
//! A tape-based reverse-mode automatic-differentiation engine on [`ndarray`], with
//! Flax-style variable collections, in which non-trainable state (BatchNorm's running
//! statistics, frozen embeddings, counters: what PyTorch keeps with `register_buffer`) is
//! excluded from gradients by construction.
//!
//! * A [`Tape`] records the ops applied to tracked [`Tensor`]s; backward walks it once in
//!   reverse.
//! * [`value_and_grad`] differentiates a closure with respect to [`Params`] only, and returns
//!   [`Grads`] keyed exactly like them.
//! * [`gradcheck`] checks any gradient against central finite differences.
//! * A backward pass can be recorded and differentiated again ([`grad_of`]), and tangents
//!   swept forward: [`jvp`], [`hvp`], [`hessian`], with buffers constants at every order.
//! * A block can be recomputed during backward instead of kept ([`remat`],
//!   [`nn::Remat`]), and training loops that run several forwards a step update the state
//!   once ([`accumulate`], [`average`]).
//!
//! ```
//! use tapegrad::{value_and_grad, Params, Tensor};
//! use ndarray::{arr1, arr2};
//!
//! // A linear model y = x w + b and a squared-error loss.
//! let mut params = Params::<f64>::new();
//! params.insert("w", arr2(&[[0.5], [-1.0]]));
//! params.insert("b", arr1(&[0.1]));
//! let x = Tensor::constant(arr2(&[[1.0, 2.0], [3.0, 4.0]]));
//! let y = Tensor::constant(arr2(&[[1.0], [0.0]]));
//!
//! let (loss, grads) = value_and_grad(&params, |p| {
//!     let prediction = x.matmul(p.get("w")?)?.add(p.get("b")?)?;
//!     tapegrad::mse(&prediction, &y)
//! })?;
//! assert!(loss > 0.0);
//! assert_eq!(grads.paths().collect::<Vec<_>>(), ["b", "w"]);
//! assert_eq!(grads.get("w").unwrap().shape(), &[2, 1]);
//! # Ok::<(), tapegrad::Error>(())
//! ```
//!
//! ## Errors: `Result` for every op that can fail
//!
//! Ops whose success depends on their inputs' shapes (binary ops, matmul, reshape,
//! reductions over axes, gathers) return [`Result`]; ops that cannot fail (elementwise
//! unary ops, full reductions, scalar arithmetic) return a [`Tensor`] directly, so the
//! signature tells which is which. We chose `Result` over panics because a shape is user
//! input: it comes from the data and the configuration, and a training program should be
//! able to report a bad one and carry on (a notebook kernel, a server) rather than abort.
//! `?` keeps the cost of that choice to one character per fallible call. The errors name the
//! op and the shapes (see [`Error`]). Panics are left for broken internal invariants.
//!
//! ## Empty inputs
//!
//! One rule for every op, as in JAX: an op whose output has no elements (a batch of zero
//! images, a softmax over an empty axis, pooling over zero channels) returns that empty output,
//! shaped as the op defines it, and its VJP an empty gradient. An op that needs a value of an
//! empty set is an error naming it: a maximum over an empty axis, BatchNorm's batch
//! statistics in training (PyTorch returns an empty output there; an error says more about
//! the data pipeline that made an empty batch, and the running statistics are left as they
//! were). A window larger than its padded input is a shape error, as in PyTorch.

#![warn(missing_docs)]
// Every fallible public function says how it fails, and a value computed for nothing is a
// warning (CI denies warnings, so these hold).
#![warn(
    clippy::missing_errors_doc,
    clippy::must_use_candidate,
    clippy::return_self_not_must_use
)]

pub mod accumulate;
mod allocator;
mod autodiff;
pub mod average;
mod backward;
pub mod checkpoint;
mod collection;
mod dot;
mod error;
mod float;
pub mod gradcheck;
mod grads;
pub mod guide;
mod higher_order;
mod into_array;
mod kernels;
mod module;
pub mod nn;
mod ops;
pub mod optim;
mod record;
mod recorded;
pub mod replicas;
mod rng;
pub mod runtime;
mod shape;
mod tangents;
mod tape;
mod tensor;
#[cfg(feature = "testing")]
pub mod testing;
mod variables;

/// The README's code, compiled and run by `cargo test` so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use autodiff::{ParamTensors, grad, value_and_grad, value_and_grad_with_aux};
pub use backward::LeafGradients;
pub use collection::{Collection, Iter, Params};
pub use dot::Picture;
pub use error::{Error, Result, Shape};
pub use float::Float;
pub use grads::Grads;
pub use higher_order::{
    Hessian, hessian, hvp, hvp_reverse_over_reverse, hvp_with_aux, jvp, jvp_with_aux,
};
pub use into_array::IntoArray;
pub use module::{ApplyOptions, Initializer, Module, ModuleExt, Scope, Variable};
pub use ops::{
    ConvOptions, Fusion, Padding, custom_op, custom_op_with_rules, mse, one_hot, remat,
    softmax_cross_entropy,
};
pub use recorded::grad_of;
pub use rng::{IntoSeed, SplitMix64};
pub use tape::{Operand, Tape, TapeEntry};
pub use tensor::Tensor;
pub use variables::{Mutable, Updates, Variables};
