//! Performance code: the loops, kept apart from what defines a result.
//!
//! Nothing here sees a [`Tensor`](crate::Tensor) or the tape: each kernel takes arrays or
//! slices and returns arrays, and the op that calls it (in `src/ops/`) checks the shapes,
//! records the node and keeps what its VJP needs. The core (the tape, the primitive ops, the
//! layers of [`nn`](crate::nn)) is correct without the fused kernels, and each is tested
//! against the definition it replaces (`tests/fusion.rs`).
//!
//! * The loops of ops: [`conv`] (im2col and its products), [`pooling`] (max and average,
//!   forward and backward), [`batch_norm`] and [`rows`] (the fused training normalisation),
//!   [`cross_entropy`] (the fused loss), [`sums`] (column sums).
//! * [`gemm`]: the matrix products of `matmul`, `linear` and the convolutions, by the library
//!   of the [kernel path](crate::runtime::KernelPath), split over threads when large (tested
//!   against ndarray's plain `dot`).
//! * [`chunks`]: passes over a large batch in chunks of a fixed size over the threads (the
//!   same sums whatever the thread count).
//! * [`threads`]: the threads those products and passes use
//!   ([`crate::runtime::set_num_threads`]); [`path`]: the instruction set they run on.
//! * [`simd`]: hot loops compiled again for AVX2 and for AVX-512 and chosen at run time (the
//!   same values on every path).
//! * [`window`]: which input positions a sliding window reads (convolution, pooling).
//!
//! Why each is written the way it is, with the measurements, is in `docs/performance.md`.

pub(crate) mod batch_norm;
pub(crate) mod chunks;
pub(crate) mod conv;
pub(crate) mod cross_entropy;
pub(crate) mod gemm;
pub(crate) mod path;
pub(crate) mod pooling;
pub(crate) mod rows;
pub(crate) mod simd;
pub(crate) mod sums;
pub(crate) mod threads;
pub(crate) mod window;
