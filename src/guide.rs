//! The tapegrad guide: from a tape by hand to training with running statistics.
//!
//! Each chapter is a Markdown file in `docs/`, included here so that `cargo test` compiles
//! and runs every code block in it (as clap does for its tutorial); `mdbook serve docs`
//! renders the same files as a book. Read them in order:
//!
//! 1. [A tape by hand](ch01_a_tape_by_hand): a Wengert list, reverse mode, finite differences.
//! 2. [Ops and their VJPs](ch02_ops_and_vjps): recording an op, broadcasting, accumulation.
//! 3. [Parameters and buffers](ch03_params_and_buffers): PyTorch, Flax, NNX and tapegrad.
//! 4. [BatchNorm with running statistics](ch04_batchnorm): modes, momentum conventions.
//! 5. [Three Flax examples, ported](ch05_porting_flax_examples), and their pitfalls.
//! 6. [Checking gradients](ch06_checking_gradients): central differences, cotangents.
//! 7. [Property testing a model](ch07_property_testing) with the crate's strategies.
//! 8. [Exercises](ch08_exercises), whose solutions are tests.

#[doc = include_str!("../docs/01-a-tape-by-hand.md")]
pub mod ch01_a_tape_by_hand {}

#[doc = include_str!("../docs/02-ops-and-vjps.md")]
pub mod ch02_ops_and_vjps {}

#[doc = include_str!("../docs/03-params-and-buffers.md")]
pub mod ch03_params_and_buffers {}

#[doc = include_str!("../docs/04-batchnorm.md")]
pub mod ch04_batchnorm {}

#[doc = include_str!("../docs/05-porting-flax-examples.md")]
pub mod ch05_porting_flax_examples {}

#[doc = include_str!("../docs/06-checking-gradients.md")]
pub mod ch06_checking_gradients {}

#[doc = include_str!("../docs/07-property-testing.md")]
pub mod ch07_property_testing {}

#[doc = include_str!("../docs/08-exercises.md")]
pub mod ch08_exercises {}
