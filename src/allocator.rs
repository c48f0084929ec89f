//! Keeping freed memory in the process, for training loops whose steps allocate and free the
//! same large arrays every time ([`retain_freed_memory`]); and the process's peak memory, for
//! programs that report it ([`peak_resident_mib`]).

/// Asks the C allocator to keep the memory of freed arrays for the next ones, instead of
/// handing it back to the operating system: for the whole process, from now on. Returns
/// whether the allocator took the setting (glibc on Linux does; elsewhere nothing changes
/// and this returns `false`).
///
/// Why: a training step makes its activations and gradients anew and frees them at its
/// end. glibc serves arrays of more than a few hundred KB with fresh pages from the
/// operating system (`mmap`), and returns the top of its heap when much of it is free, so
/// each step faults in and zeroes every large array again. On this project's VM that was a
/// third of the CNN-M step (59–61 ms plain, 40–42 ms with this setting, the same binary run
/// alternately: `docs/performance.md`). PyTorch users get the same effect from jemalloc or
/// tcmalloc; a Rust program may instead set a `#[global_allocator]`, which tapegrad leaves
/// to the program.
///
/// The cost: the process keeps its high-water mark of heap memory resident after a step,
/// and the peak grows a little with the heap's fragmentation (CNN-M: 38 MiB against 34).
/// The setting is glibc's `M_MMAP_THRESHOLD` at 32 MiB (arrays up
/// to that size come from the heap) and `M_TRIM_THRESHOLD` at 1 GiB (the heap top is handed
/// back only beyond that). A library should not make such a choice for its program, so
/// tapegrad never calls this itself; its examples and benchmarks do.
///
/// ```
/// let retained = tapegrad::runtime::retain_freed_memory();
/// assert_eq!(retained, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
// Called for its effect; the result only says whether the allocator took it.
#[allow(clippy::must_use_candidate)]
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's largest mmap threshold on 64-bit targets (`DEFAULT_MMAP_THRESHOLD_MAX`).
        const MMAP_THRESHOLD: libc::c_int = 32 << 20;
        const TRIM_THRESHOLD: libc::c_int = 1 << 30;
        // SAFETY: mallopt only sets the allocator's parameters; any value is safe to pass
        // (an out-of-range one is refused with 0).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The process's peak resident set size in MiB (`VmHWM` in `/proc/self/status`), or `None`
/// where the system does not report it: what the examples and benchmarks print beside their
/// times, as the peer scripts do.
///
/// ```
/// let peak = tapegrad::runtime::peak_resident_mib();
/// assert_eq!(peak.is_some(), cfg!(target_os = "linux"));
/// assert!(peak.is_none_or(|mib| mib > 0.0));
/// ```
#[must_use]
pub fn peak_resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
