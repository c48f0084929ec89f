//! Passes over the rows of a batch (BatchNorm's sums and its elementwise passes), split over
//! the pool in chunks of a fixed size.
//!
//! The chunks do not depend on the thread count: a sum is accumulated row by row within each
//! chunk, and the chunks' partial sums are added in chunk order, so a result is the same bits
//! on one thread or sixteen. A batch of at most [`CHUNK`] elements is one chunk: the plain
//! sequential loop, on the caller, with no hand-off (the MLP's S and M sizes stay there).
//! Each chunk runs under [`simd::vectorized_on`](crate::kernels::simd::vectorized_on) with the
//! caller's kernel path, so a [`KernelPath::run`] cap holds on the workers too.

use std::ops::Range;

use crate::kernels::pool;
use crate::runtime::KernelPath;

/// Elements per chunk: 256 KiB of `f32`, a few tens of microseconds a pass, far more than a
/// hand-off to a worker costs (a few µs), and about an L2 cache.
pub(crate) const CHUNK: usize = 1 << 16;

/// The row ranges of the chunks of `rows` rows of `len` elements: whole rows, at least one.
fn chunk_rows(rows: usize, len: usize) -> Vec<Range<usize>> {
    let per_chunk = (CHUNK / len.max(1)).max(1);
    let count = rows.div_ceil(per_chunk).max(1);
    (0..count)
        .map(|c| c * per_chunk..((c + 1) * per_chunk).min(rows))
        .collect()
}

/// Consecutive runs of `items`, one per share of the pool's threads (at most one per item).
fn shares<T>(items: Vec<T>, threads: usize) -> Vec<Vec<T>> {
    let count = threads.clamp(1, items.len().max(1));
    let total = items.len();
    let mut items = items.into_iter();
    (0..count)
        .map(|s| {
            let size = (s + 1) * total / count - s * total / count;
            items.by_ref().take(size).collect()
        })
        .collect()
}

/// `partial(path, rows)` for each chunk of `rows` rows of `len` elements, over the pool;
/// the results in chunk order.
pub(crate) fn map_chunks<T: Send>(
    rows: usize,
    len: usize,
    partial: impl Fn(KernelPath, Range<usize>) -> T + Sync,
) -> Vec<T> {
    let path = KernelPath::current();
    let chunks = chunk_rows(rows, len);
    if chunks.len() == 1 {
        return vec![partial(path, 0..rows)];
    }
    let (threads, workers) = pool::current();
    let mut results: Vec<Option<T>> = (0..chunks.len()).map(|_| None).collect();
    let items: Vec<_> = chunks.into_iter().zip(results.iter_mut()).collect();
    pool::for_each_item(workers.as_deref(), shares(items, threads), |share| {
        for (rows, slot) in share {
            *slot = Some(partial(path, rows));
        }
    });
    results
        .into_iter()
        .map(|r| r.expect("every chunk ran"))
        .collect()
}

/// `pass(path, item)` for one item per chunk of `rows` rows of `len` elements, over the
/// pool: `items(chunks)` makes them from the chunks' row ranges (each item carries what its
/// chunk writes: disjoint parts of the outputs).
pub(crate) fn for_each_chunk<T: Send>(
    rows: usize,
    len: usize,
    items: impl FnOnce(&[Range<usize>]) -> Vec<T>,
    pass: impl Fn(KernelPath, T) + Sync,
) {
    let path = KernelPath::current();
    let chunks = chunk_rows(rows, len);
    let mut items = items(&chunks);
    if items.len() == 1 {
        pass(path, items.pop().expect("one item"));
        return;
    }
    let (threads, workers) = pool::current();
    pool::for_each_item(workers.as_deref(), shares(items, threads), |share| {
        for item in share {
            pass(path, item);
        }
    });
}

/// `items` as the `FnOnce` it is: a closure bound to a name first is inferred `FnMut`, and
/// then cannot hand out the borrows it holds (the parts of the outputs).
pub(crate) fn once<T, F: FnOnce(&[Range<usize>]) -> T>(items: F) -> F {
    items
}

/// Cuts `data`, rows of `len` elements, into the chunks' parts.
pub(crate) fn split_rows<'a, T>(
    mut data: &'a mut [T],
    len: usize,
    chunks: &[Range<usize>],
) -> Vec<&'a mut [T]> {
    chunks
        .iter()
        .map(|rows| {
            let (part, tail) = std::mem::take(&mut data).split_at_mut(rows.len() * len);
            data = tail;
            part
        })
        .collect()
}

/// `pass(path, rows, part)` for each chunk of `data`, rows of `len` elements, over the pool:
/// `part` is the chunk's own elements of `data` (`rows` the row numbers they hold).
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    len: usize,
    pass: impl Fn(KernelPath, Range<usize>, &mut [T]) + Sync,
) {
    let rows = data.len() / len.max(1);
    for_each_chunk(
        rows,
        len,
        move |chunks| {
            chunks
                .iter()
                .cloned()
                .zip(split_rows(data, len, chunks))
                .collect()
        },
        |path, (rows, part)| pass(path, rows, part),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_whole_rows_covering_the_batch_in_order() {
        for (rows, len) in [(0, 4), (1, 1), (7, CHUNK), (3, CHUNK + 1), (100_000, 3)] {
            let chunks = chunk_rows(rows, len);
            assert_eq!(chunks.first().map(|c| c.start), Some(0));
            assert_eq!(chunks.last().map(|c| c.end), Some(rows));
            assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
            assert!(chunks.iter().all(|c| c.len() * len <= CHUNK.max(len)));
        }
    }

    #[test]
    fn shares_split_items_in_order_into_at_most_the_threads() {
        for (items, threads) in [(10, 2), (3, 8), (1, 1), (0, 4), (7, 3)] {
            let split = shares((0..items).collect(), threads);
            assert!(split.len() <= threads.max(1));
            assert_eq!(split.concat(), (0..items).collect::<Vec<_>>());
            assert!(split.iter().all(|s| !s.is_empty()) || items == 0);
        }
    }

    #[test]
    fn chunk_results_come_back_in_chunk_order() {
        let len = 3;
        let data: Vec<f64> = (0..len * 50_000).map(|i| (i as f64 * 0.37).sin()).collect();
        let rows = data.len() / len;
        let got = map_chunks(rows, len, |_, rows| rows);
        assert_eq!(got, chunk_rows(rows, len));
        assert!(got.len() > 1);
        let mut doubled = data.clone();
        for_each_chunk_mut(&mut doubled, len, |_, rows, part| {
            assert_eq!(part.len(), rows.len() * len);
            part.iter_mut().for_each(|v| *v *= 2.0);
        });
        assert!(doubled.iter().zip(&data).all(|(d, v)| *d == 2.0 * v));
    }
}
