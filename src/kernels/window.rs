//! One spatial axis of a sliding window (convolution, pooling): which input positions each
//! output position reads. Built and checked by the ops (src/ops/window.rs), which also define
//! the padding conventions; the loops of src/kernels/ read it.

/// One spatial axis of a sliding window: output position `o` reads input positions
/// `o · stride − pad_before + k · dilation` for `k < window`, where in range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowAxis {
    pub(crate) input: usize,
    pub(crate) window: usize,
    pub(crate) stride: usize,
    pub(crate) dilation: usize,
    pub(crate) pad_before: usize,
    pub(crate) output: usize,
}

impl WindowAxis {
    /// The input position read by output `o` at window offset `k`, if inside the input.
    #[inline]
    pub(crate) fn source(&self, o: usize, k: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(self.pad_before)
            .filter(|&i| i < self.input)
    }

    /// The window offsets `k` at which output `o` reads inside the input: one range, since
    /// the position read grows with `k` (empty for a window entirely in padding).
    #[inline]
    pub(crate) fn inside(&self, o: usize) -> std::ops::Range<usize> {
        let origin = o * self.stride; // the position read at k = 0, plus `pad_before`
        // The least k with origin + k·d ≥ pad_before, and the least with ≥ pad_before + input.
        let first_at = |bound: usize| bound.saturating_sub(origin).div_ceil(self.dilation);
        let first = first_at(self.pad_before).min(self.window);
        let end = first_at(self.pad_before + self.input).min(self.window);
        first..end.max(first)
    }
}
