//! The process's peak memory, which the training examples report beside their time.

/// The peak resident set size (VmHWM in `/proc/self/status`), in MiB; 0 where the system does
/// not report it.
pub fn peak_resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
