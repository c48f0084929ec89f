//! The switch between an op's definition and its fused implementation.
//!
//! Every layer and loss in tapegrad is defined as a composition of primitive ops (what the
//! tape records with fusion off). A few compositions are also ops of their own, fused: the
//! same function in one node with a hand-derived VJP and loops in `src/kernels/`, which the
//! training-step benchmark showed to be faster. Each such op consults [`Fusion`], in one
//! place, to choose between its fused node and its definition:
//!
//! | op | definition | fused node |
//! |---|---|---|
//! | [`Tensor::linear`](crate::Tensor::linear) | `matmul`, `add` | `linear` |
//! | [`Tensor::conv2d_with_bias`](crate::Tensor::conv2d_with_bias) | `conv2d`, `add` | `conv2d_bias` |
//! | [`softmax_cross_entropy`](crate::softmax_cross_entropy) | `log_softmax`, `mul`, `sum_all`, `mul_scalar` | `softmax_cross_entropy` |
//! | BatchNorm's training normalisation (and a ReLU after it) | statistics, `sub`, `mul`, `add` (and `relu`) | `batch_norm` (`batch_norm_relu`) |
//!
//! [`Fusion`] says which one runs. It changes nothing but speed: values, gradients, running statistics and
//! variable names are the same either way (f64, to 1e-12; `tests/fusion.rs` checks each
//! fused implementation against its definition).
//!
//! The setting belongs to the current thread, like PyTorch's `torch.no_grad()`, and holds
//! for the whole computation run inside [`Fusion::run`]: the forward pass, the loss and the
//! backward pass. It starts as [`Fusion::On`], unless the environment variable
//! `TAPEGRAD_FUSION` is `off` when a thread first asks (for running a whole program, or a
//! test suite, with the definitions alone).

use std::cell::Cell;
use std::sync::OnceLock;

/// Whether layers run their fused implementations ([`Fusion::On`], the default) or their
/// definitions, composed of primitives ([`Fusion::Off`]).
///
/// ```
/// use tapegrad::{Fusion, Tape};
/// use tapegrad::nn::Dense;
/// use tapegrad::{ModuleExt, ParamTensors, ApplyOptions, Tensor};
///
/// let x = Tensor::from_vec(&[2, 3], vec![0.5f64; 6])?;
/// let variables = Dense::new(4).init(0, &x)?;
/// let ops_recorded = |fusion: Fusion| -> tapegrad::Result<Vec<&'static str>> {
///     fusion.run(|| {
///         let tape = Tape::new();
///         let params = ParamTensors::leaves(variables.params(), &tape);
///         Dense::new(4).apply_tracked(&params, &variables, &x, &ApplyOptions::eval())?;
///         Ok(tape.entries().iter().map(|e| e.op).filter(|&op| op != "leaf").collect())
///     })
/// };
/// assert_eq!(ops_recorded(Fusion::Off)?, ["matmul", "add"]); // the definition
/// assert_eq!(ops_recorded(Fusion::On)?, ["linear"]); // the same, in one node
/// # Ok::<(), tapegrad::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// Fused implementations where there are some: fewer nodes, fewer passes over memory.
    On,
    /// Every layer as its definition: the tape shows the primitives.
    Off,
}

thread_local! {
    /// `None` until this thread first asks: then the environment decides.
    static CURRENT: Cell<Option<Fusion>> = const { Cell::new(None) };
}

impl Fusion {
    /// The setting in force on this thread.
    #[must_use]
    pub fn current() -> Fusion {
        CURRENT.with(|current| {
            current.get().unwrap_or_else(|| {
                let initial = Fusion::from_environment();
                current.set(Some(initial));
                initial
            })
        })
    }

    /// Whether fused implementations run.
    #[must_use]
    pub fn is_on() -> bool {
        Fusion::current() == Fusion::On
    }

    /// Runs `f` with this setting on the current thread, and restores the previous one when
    /// `f` returns or panics. Settings nest.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        /// Restores the previous setting on drop, so a panic in `f` restores it too.
        struct Restore(Fusion);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|current| current.set(Some(self.0)));
            }
        }
        let _restore = Restore(Fusion::current());
        CURRENT.with(|current| current.set(Some(self)));
        f()
    }

    /// `TAPEGRAD_FUSION`, read once for the process: `off` or `on` (any case); anything else
    /// is warned about and leaves fusion on.
    fn from_environment() -> Fusion {
        static FROM_ENVIRONMENT: OnceLock<Fusion> = OnceLock::new();
        *FROM_ENVIRONMENT.get_or_init(|| {
            let Ok(value) = std::env::var("TAPEGRAD_FUSION") else {
                return Fusion::On;
            };
            match value.trim().to_ascii_lowercase().as_str() {
                "off" => Fusion::Off,
                "on" => Fusion::On,
                _ => {
                    eprintln!(
                        "tapegrad: TAPEGRAD_FUSION={value:?} is neither on nor off; fusion stays on"
                    );
                    Fusion::On
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Fusion;

    #[test]
    fn run_sets_the_setting_and_restores_it_even_after_a_panic() {
        let outer = Fusion::current();
        let inner = Fusion::Off.run(|| Fusion::On.run(Fusion::current));
        assert_eq!(inner, Fusion::On);
        let caught = std::panic::catch_unwind(|| Fusion::Off.run(|| panic!("in f")));
        assert!(caught.is_err());
        assert_eq!(Fusion::current(), outer);
    }

    #[test]
    fn the_setting_belongs_to_its_thread() {
        Fusion::Off.run(|| {
            let elsewhere = std::thread::spawn(Fusion::current).join().unwrap();
            assert_eq!(Fusion::current(), Fusion::Off);
            // A new thread starts from the environment's setting, not this one's.
            assert_eq!(elsewhere, Fusion::from_environment());
        });
    }
}
