//! Layers, one file each, with Flax's names and conventions: `Dense` has `kernel` `(in, out)`
//! and `bias`; `BatchNorm` has params `scale`, `bias` and batch_stats `mean`, `var`; `Embed`
//! has `embedding`.

mod accumulator;
mod activation;
mod batch_norm;
mod conv;
mod dense;
mod dropout;
mod embed;
mod frozen_embed;
pub mod init;
mod mlp;
mod pool;
mod remat;
mod sequential;

pub use accumulator::Accumulator;
pub use activation::Activation;
pub use batch_norm::{BATCH_MOMENTS, BatchNorm, BatchNormRelu, StatsConvention};
pub use conv::Conv;
pub use dense::Dense;
pub use dropout::Dropout;
pub use embed::Embed;
pub use frozen_embed::FrozenEmbed;
pub use mlp::Mlp;
pub use pool::{Flatten, GlobalAvgPool, Pool, PoolKind};
pub use remat::Remat;
pub use sequential::Sequential;
