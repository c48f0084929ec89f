//! The instruction set the kernels run on, detected once and capped by the environment or
//! by [`KernelPath::run`]; described for users in [`runtime`](crate::runtime).

use std::cell::Cell;
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The instruction set tapegrad's kernels run on, from the least to the most capable.
///
/// ```
/// use tapegrad::runtime::KernelPath;
///
/// // The path in force is never more than the CPU has.
/// assert!(KernelPath::current() <= KernelPath::detected());
/// // Portable code runs everywhere.
/// assert_eq!(KernelPath::Portable.run(KernelPath::current), KernelPath::Portable);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelPath {
    /// The target's baseline (SSE2 on x86-64), and `matrixmultiply` for products.
    Portable,
    /// AVX2 and FMA: 8 floats an instruction (x86-64 CPUs since about 2013).
    Avx2,
    /// AVX-512 (F, BW, DQ, VL): 16 floats an instruction (Intel since Skylake-SP, AMD since
    /// Zen 4).
    Avx512,
}

thread_local! {
    /// A cap set by [`KernelPath::run`] on this thread.
    static CAP: Cell<Option<KernelPath>> = const { Cell::new(None) };
}

impl KernelPath {
    /// Every path, portable first.
    pub const ALL: [KernelPath; 3] = [KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512];

    /// The most capable path this CPU runs.
    #[must_use]
    pub fn detected() -> KernelPath {
        static DETECTED: OnceLock<KernelPath> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// The path in force on this thread: [`detected`](Self::detected), capped by
    /// `TAPEGRAD_KERNELS` and by the innermost enclosing [`run`](Self::run).
    #[must_use]
    pub fn current() -> KernelPath {
        static PROCESS: OnceLock<KernelPath> = OnceLock::new();
        let process = *PROCESS.get_or_init(|| {
            let Ok(name) = std::env::var("TAPEGRAD_KERNELS") else {
                return KernelPath::detected();
            };
            match KernelPath::from_name(&name) {
                Ok(cap) => cap.min(KernelPath::detected()),
                Err(_) => {
                    eprintln!(
                        "tapegrad: TAPEGRAD_KERNELS={name:?} is not a kernel path (portable, \
                         avx2 or avx512); using {} (what this CPU runs)",
                        KernelPath::detected().name()
                    );
                    KernelPath::detected()
                }
            }
        });
        CAP.with(|cap| cap.get().map_or(process, |cap| cap.min(process)))
    }

    /// The path's name: `portable`, `avx2` or `avx512` (what `TAPEGRAD_KERNELS` takes).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Portable => "portable",
            KernelPath::Avx2 => "avx2",
            KernelPath::Avx512 => "avx512",
        }
    }

    /// The path named `portable`, `avx2` or `avx512` (what `TAPEGRAD_KERNELS` takes).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for any other name.
    pub fn from_name(name: &str) -> Result<KernelPath> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" => Ok(KernelPath::Portable),
            "avx2" => Ok(KernelPath::Avx2),
            "avx512" => Ok(KernelPath::Avx512),
            other => Err(Error::invalid(
                "KernelPath::from_name",
                &[],
                format!("{other:?} is not a kernel path: portable, avx2 or avx512"),
            )),
        }
    }

    /// Runs `f` on this thread with the kernel path capped at `self` (a cap above what the CPU
    /// has changes nothing), and restores the previous cap when `f` returns or panics. The
    /// cap reaches the products' pool threads too: each product reads it once, on the calling
    /// thread.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        /// Restores the previous cap on drop, so a panic in `f` restores it too.
        struct Restore(Option<KernelPath>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CAP.with(|cap| cap.set(self.0));
            }
        }
        let outer = CAP.with(|cap| cap.replace(Some(self)));
        let _restore = Restore(outer);
        f()
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> KernelPath {
    use std::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("fma") {
        KernelPath::Avx512
    } else if has!("avx2") && has!("fma") {
        KernelPath::Avx2
    } else {
        KernelPath::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> KernelPath {
    KernelPath::Portable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_others_are_refused() {
        assert_eq!(KernelPath::from_name("AVX2 ").unwrap(), KernelPath::Avx2);
        assert_eq!(
            KernelPath::from_name("portable").unwrap(),
            KernelPath::Portable
        );
        let err = KernelPath::from_name("sse9").unwrap_err().to_string();
        assert!(err.contains("sse9") && err.contains("avx512"), "{err}");
    }

    #[test]
    fn a_cap_nests_and_is_restored_after_a_panic() {
        let outside = KernelPath::current();
        KernelPath::Portable.run(|| {
            assert_eq!(KernelPath::current(), KernelPath::Portable);
            // The innermost cap is the one in force (as with `Fusion::run`); it never
            // raises the path above the process's.
            KernelPath::Avx512.run(|| assert_eq!(KernelPath::current(), outside));
            assert_eq!(KernelPath::current(), KernelPath::Portable);
        });
        let _ = std::panic::catch_unwind(|| KernelPath::Portable.run(|| panic!("inside")));
        assert_eq!(KernelPath::current(), outside);
    }
}
