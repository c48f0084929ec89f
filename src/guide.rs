//! The tapegrad guide: from a tape by hand to training with running statistics.
//!
//! Each chapter is a Markdown file in `docs/`, included here so that `cargo test` compiles
//! and runs every code block in it (as clap does for its tutorial); `mdbook serve docs`
//! renders the same files as a book. (The build script embeds the chapters' pictures, so
//! that they show here and on docs.rs too.) Read them in order:
//!
//! 1. [A tape by hand](ch01_a_tape_by_hand): a Wengert list, reverse mode, finite differences.
//! 2. [Ops and their VJPs](ch02_ops_and_vjps): recording an op, broadcasting, accumulation.
//! 3. [Parameters and buffers](ch03_params_and_buffers): PyTorch, Flax, NNX and tapegrad.
//! 4. [BatchNorm with running statistics](ch04_batchnorm): modes, momentum conventions.
//! 5. [Three Flax examples, ported](ch05_porting_flax_examples), and their pitfalls.
//! 6. [Checking gradients](ch06_checking_gradients): central differences, cotangents.
//! 7. [Property testing a model](ch07_property_testing) with the crate's strategies.
//! 8. [Exercises](ch08_exercises), whose solutions are tests.

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/01-a-tape-by-hand.md"))]
pub mod ch01_a_tape_by_hand {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/02-ops-and-vjps.md"))]
pub mod ch02_ops_and_vjps {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/03-params-and-buffers.md"))]
pub mod ch03_params_and_buffers {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/04-batchnorm.md"))]
pub mod ch04_batchnorm {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/05-porting-flax-examples.md"))]
pub mod ch05_porting_flax_examples {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/06-checking-gradients.md"))]
pub mod ch06_checking_gradients {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/07-property-testing.md"))]
pub mod ch07_property_testing {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/08-exercises.md"))]
pub mod ch08_exercises {}

#[cfg(test)]
mod tests {
    /// Every chapter as rustdoc sees it: the build script's output.
    const CHAPTERS: [&str; 2] = [
        include_str!(concat!(env!("OUT_DIR"), "/guide/03-params-and-buffers.md")),
        include_str!("../docs/03-params-and-buffers.md"),
    ];

    #[test]
    fn pictures_are_embedded_for_rustdoc() {
        let [for_rustdoc, on_disk] = CHAPTERS;
        assert!(on_disk.contains("](img/bn_eval_tape.svg)"));
        assert!(
            !for_rustdoc.contains("](img/"),
            "a picture link was left for rustdoc"
        );
        let svg = include_bytes!("../docs/img/bn_eval_tape.svg");
        let embedded = for_rustdoc
            .split("src=\"data:image/svg+xml;base64,")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the picture is a data URI");
        assert_eq!(embedded.len(), svg.len().div_ceil(3) * 4);
        // "<?xml" in base64 (the file starts with an XML declaration).
        assert!(embedded.starts_with("PD94bWw"));
    }
}
