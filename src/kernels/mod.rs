//! Performance code: what makes tapegrad fast, kept apart from what makes it correct.
//!
//! Nothing here defines a result. The core (the tape, the primitive ops, the layers of
//! [`nn`](crate::nn)) is correct without these kernels, and each of them is tested against
//! the core's definition of what it computes:
//!
//! * [`fused`]: layers and losses in one node each (Dense's matmul and bias, BatchNorm's
//!   training forward with an optional ReLU, softmax cross-entropy), each with a closed-form
//!   VJP. They run only with [`Fusion::On`](crate::Fusion); with fusion off the layers run
//!   their definitions, composed of primitives, and `tests/fusion.rs` checks that both give
//!   the same values, gradients and statistics.
//! * [`gemm`]: the matrix products of `matmul`, the fused `linear` and the convolutions, by
//!   the library of the [kernel path](crate::runtime::KernelPath), split over threads when
//!   large (tested against ndarray's plain `dot`).
//! * [`chunks`]: BatchNorm's passes over a large batch, in chunks of a fixed size over the
//!   same threads (the same sums whatever the thread count).
//! * [`pool`]: the threads those products use ([`crate::runtime::set_num_threads`]).
//! * [`simd`]: hot loops compiled again for AVX2 and for AVX-512 and chosen at run time (the
//!   same values on every path).
//!
//! Why each is written the way it is, with the measurements, is in `docs/performance.md`.

pub(crate) mod chunks;
pub(crate) mod fused;
pub(crate) mod gemm;
pub(crate) mod pool;
pub(crate) mod simd;
