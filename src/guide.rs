//! The tapegrad guide: from a tape by hand to training with running statistics.
//!
//! Each chapter is a Markdown file in `docs/`, included here so that `cargo test` compiles
//! and runs every code block in it (as clap does for its tutorial). The same files are a
//! book (`mdbook serve docs`) and read on the repository's page, so they link as files do: a
//! chapter by its file name, an item by its docs.rs page. The build script embeds the
//! pictures and turns those links into intra-doc links for this page, which `cargo doc`
//! checks; `tests/guide_links.rs` checks them as files. Read the chapters in order; each uses
//! only what the chapters before it taught (`tests/guide.rs` checks it):
//!
//! 0. [Start here: what is `register_buffer` in Flax?](ch00_start_here): one model with a buffer in PyTorch, Flax linen, NNX, Equinox and tapegrad.
//! 1. [A tape by hand](ch01_a_tape_by_hand): a Wengert list, reverse mode, finite differences.
//! 2. [Build the engine](ch02_build_the_engine): a tape in a hundred lines, then the same ideas in `src/tape.rs`; the primitive table.
//! 3. [Ops and their VJPs](ch03_ops_and_vjps): recording an op, broadcasting, accumulation, composites.
//!    Then [build the collections](ch03b_build_the_collections): collections, a scope, plain-value writes, `init`, `apply`, `merge` on the toy tape; the bug they prevent.
//! 4. [Modules and scopes](ch04_modules_and_scopes): `Module`, `Scope`, `init`, `apply`, gradients with respect to params.
//! 5. [Parameters and buffers](ch05_params_and_buffers): PyTorch, Flax, NNX, Equinox and tapegrad; the eval tape.
//! 6. [BatchNorm with running statistics](ch06_batchnorm): modes, the training tape, conventions.
//! 7. [Three Flax examples, ported](ch07_porting_flax_examples): and their pitfalls.
//! 8. [Convolutional networks, ported from PyTorch](ch08_convolutional_networks): channel statistics and the NCHW/NHWC pitfalls.
//! 9. [Data parallelism and BatchNorm](ch09_data_parallel): per-replica and cross-replica statistics, replicas in process and over MPI.
//! 10. [Checking gradients](ch10_checking_gradients): central differences, cotangents, buffers held fixed.
//! 11. [Property testing a model](ch11_property_testing): with the crate's strategies.
//! 12. [Exercises](ch12_exercises): on the engine, collections, convolutions and replicas, and a capstone; their solutions are tests.
//! 13. [Training loops that update state once](ch13_state_updated_once): accumulation over micro-batches, recomputation, two forwards in a step, averaged weights.
//! 14. [Derivatives of derivatives](ch14_higher_orders): forward mode, a tape that records its own backward pass, Hessian-vector products, buffers at every order.
//! 15. [Solutions to the exercises](ch15_solutions): what each solution test does, and why.

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/00-start-here.md"))]
pub mod ch00_start_here {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/01-a-tape-by-hand.md"))]
pub mod ch01_a_tape_by_hand {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/02-build-the-engine.md"))]
pub mod ch02_build_the_engine {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/03-ops-and-vjps.md"))]
pub mod ch03_ops_and_vjps {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/03b-build-the-collections.md"))]
pub mod ch03b_build_the_collections {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/04-modules-and-scopes.md"))]
pub mod ch04_modules_and_scopes {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/05-params-and-buffers.md"))]
pub mod ch05_params_and_buffers {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/06-batchnorm.md"))]
pub mod ch06_batchnorm {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/07-porting-flax-examples.md"))]
pub mod ch07_porting_flax_examples {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/08-convolutional-networks.md"))]
pub mod ch08_convolutional_networks {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/09-data-parallel.md"))]
pub mod ch09_data_parallel {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/10-checking-gradients.md"))]
pub mod ch10_checking_gradients {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/11-property-testing.md"))]
pub mod ch11_property_testing {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/12-exercises.md"))]
pub mod ch12_exercises {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/13-state-updated-once.md"))]
pub mod ch13_state_updated_once {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/14-higher-orders.md"))]
pub mod ch14_higher_orders {}

#[doc = include_str!(concat!(env!("OUT_DIR"), "/guide/15-solutions.md"))]
pub mod ch15_solutions {}

#[cfg(test)]
mod tests {
    /// A chapter as rustdoc sees it (the build script's output) and as a file.
    const CHAPTERS: [&str; 2] = [
        include_str!(concat!(env!("OUT_DIR"), "/guide/05-params-and-buffers.md")),
        include_str!("../docs/05-params-and-buffers.md"),
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

    #[test]
    fn links_become_intra_doc_links_of_the_items_kind() {
        let [for_rustdoc, on_disk] = CHAPTERS;
        for (file, rustdoc) in [
            (
                "https://docs.rs/tapegrad/latest/tapegrad/optim/trait.Optimizer.html",
                "trait@crate::optim::Optimizer",
            ),
            (
                "https://docs.rs/tapegrad/latest/tapegrad/trait.IntoArray.html",
                "trait@crate::IntoArray",
            ),
            ("06-batchnorm.md", "mod@crate::guide::ch06_batchnorm"),
        ] {
            assert!(on_disk.contains(file), "{file}");
            assert!(!for_rustdoc.contains(file), "{file} was left for rustdoc");
            assert!(
                for_rustdoc.contains(rustdoc),
                "{file} did not become {rustdoc}"
            );
        }
    }
}
