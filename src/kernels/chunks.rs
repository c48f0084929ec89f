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

use crate::kernels::path::KernelPath;
use crate::kernels::threads;

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

/// Whether `rows` rows of `len` elements are one chunk: the common case of a small batch,
/// which the passes run on the caller without making the list of chunks.
fn is_one_chunk(rows: usize, len: usize) -> bool {
    rows <= (CHUNK / len.max(1)).max(1)
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

/// `partial(path, rows)` for each chunk of `rows` rows of `len` elements, over the threads;
/// the results in chunk order.
pub(crate) fn map_chunks<T: Send>(
    rows: usize,
    len: usize,
    partial: impl Fn(KernelPath, Range<usize>) -> T + Sync,
) -> Vec<T> {
    let path = KernelPath::current();
    if is_one_chunk(rows, len) {
        return vec![partial(path, 0..rows)];
    }
    let chunks = chunk_rows(rows, len);
    let (threads, workers) = threads::current();
    let mut results: Vec<Option<T>> = (0..chunks.len()).map(|_| None).collect();
    let items: Vec<_> = chunks.into_iter().zip(results.iter_mut()).collect();
    threads::for_each_item(workers.as_deref(), shares(items, threads), |share| {
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
    let (threads, workers) = threads::current();
    threads::for_each_item(workers.as_deref(), shares(items, threads), |share| {
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

/// `pass(path, rows, part)` for each chunk of `data`, rows of `len` elements, over the threads:
/// `part` is the chunk's own elements of `data` (`rows` the row numbers they hold).
pub(crate) fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    len: usize,
    pass: impl Fn(KernelPath, Range<usize>, &mut [T]) + Sync,
) {
    let rows = data.len() / len.max(1);
    if is_one_chunk(rows, len) {
        // Without the lists of chunks and parts that the split below allocates.
        pass(KernelPath::current(), 0..rows, data);
        return;
    }
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

/// Elementwise work on parts of several arrays of one length, which may be cut anywhere:
/// what an optimizer's update pass works on (a param, its gradient, its state).
pub(crate) trait Elementwise: Send + Sized {
    /// The elements in this part.
    fn len(&self) -> usize;
    /// The first `mid` elements and the rest.
    fn split_at(self, mid: usize) -> (Self, Self);
}

impl<A: Send + Sync> Elementwise for (&mut [A], &[A]) {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let ((p0, p1), (g0, g1)) = (self.0.split_at_mut(mid), self.1.split_at(mid));
        ((p0, g0), (p1, g1))
    }
}

impl<A: Send + Sync> Elementwise for (&mut [A], &mut [A], &[A]) {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p, v, g) = self;
        let ((p0, p1), (v0, v1), (g0, g1)) =
            (p.split_at_mut(mid), v.split_at_mut(mid), g.split_at(mid));
        ((p0, v0, g0), (p1, v1, g1))
    }
}

impl<A: Send + Sync> Elementwise for (&mut [A], &mut [A], &mut [A], &[A]) {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn split_at(self, mid: usize) -> (Self, Self) {
        let (p, m, v, g) = self;
        let ((p0, p1), (m0, m1)) = (p.split_at_mut(mid), m.split_at_mut(mid));
        let ((v0, v1), (g0, g1)) = (v.split_at_mut(mid), g.split_at(mid));
        ((p0, m0, v0, g0), (p1, m1, v1, g1))
    }
}

/// `pass(path, part)` over all of `parts`, split over the threads into shares of equal element
/// counts (a part is cut where a share ends), at most one share per [`CHUNK`] elements: all
/// on the caller for at most `CHUNK` elements. Elementwise work gives the same bits however
/// it is cut, so the thread count changes nothing but the time.
pub(crate) fn for_each_elementwise<T: Elementwise>(
    parts: Vec<T>,
    pass: impl Fn(KernelPath, T) + Sync,
) {
    let path = KernelPath::current();
    let total: usize = parts.iter().map(Elementwise::len).sum();
    let (threads, workers) = if total > CHUNK {
        threads::current()
    } else {
        (1, None)
    };
    let count = threads.clamp(1, total.div_ceil(CHUNK).max(1));
    if count == 1 {
        parts.into_iter().for_each(|part| pass(path, part));
        return;
    }
    threads::for_each_item(
        workers.as_deref(),
        even_shares(parts, total, count),
        |share| {
            share.into_iter().for_each(|part| pass(path, part));
        },
    );
}

/// `parts` (of `total` elements) as `count` runs of consecutive elements, of equal size
/// within one element.
fn even_shares<T: Elementwise>(parts: Vec<T>, total: usize, count: usize) -> Vec<Vec<T>> {
    let mut shares: Vec<Vec<T>> = (0..count).map(|_| Vec::new()).collect();
    let mut share = 0;
    let mut filled = 0; // elements given to shares 0..=share
    let share_end = |s: usize| (s + 1) * total / count;
    for mut part in parts {
        while part.len() > 0 {
            let room = share_end(share) - filled;
            if room == 0 {
                share += 1;
                continue;
            }
            let take = room.min(part.len());
            let (head, tail) = part.split_at(take);
            shares[share].push(head);
            filled += take;
            part = tail;
        }
    }
    shares
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
    fn one_chunk_is_said_exactly_when_there_is_one() {
        let per_row = [1, 3, 64, CHUNK / 2, CHUNK, CHUNK + 1];
        for (len, rows) in per_row
            .into_iter()
            .flat_map(|l| [0, 1, 2, 3, 1024, 65_537].map(|r| (l, r)))
        {
            assert_eq!(
                is_one_chunk(rows, len),
                chunk_rows(rows, len).len() == 1,
                "{rows} rows of {len}"
            );
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

    #[test]
    fn even_shares_cut_parts_into_equal_consecutive_runs() {
        for (lens, count) in [
            (vec![10, 3, 0, 7], 2),
            (vec![5], 3),
            (vec![1, 1, 1], 3),
            (vec![100, 1], 4),
        ] {
            let mut data: Vec<Vec<usize>> = lens.iter().map(|&n| (0..n).collect()).collect();
            let marks: Vec<Vec<usize>> = lens.iter().map(|&n| vec![0; n]).collect();
            let total: usize = lens.iter().sum();
            let parts: Vec<(&mut [usize], &[usize])> = data
                .iter_mut()
                .zip(&marks)
                .map(|(d, m)| (d.as_mut_slice(), m.as_slice()))
                .collect();
            let shares = even_shares(parts, total, count);
            assert_eq!(shares.len(), count);
            let sizes: Vec<usize> = shares
                .iter()
                .map(|s| s.iter().map(Elementwise::len).sum())
                .collect();
            assert_eq!(sizes.iter().sum::<usize>(), total);
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
            // Consecutive: the parts, read share by share, are the arrays in order.
            let read: Vec<usize> = shares
                .into_iter()
                .flatten()
                .flat_map(|(d, _)| d.to_vec())
                .collect();
            let expected: Vec<usize> = lens.iter().flat_map(|&n| 0..n).collect();
            assert_eq!(read, expected);
        }
    }

    #[test]
    fn elementwise_work_over_the_pool_reaches_every_element_once() {
        let lens = [3 * CHUNK + 17, 5, CHUNK / 2];
        let mut data: Vec<Vec<f64>> = lens.iter().map(|&n| vec![1.0; n]).collect();
        let steps: Vec<Vec<f64>> = lens
            .iter()
            .map(|&n| (0..n).map(|i| i as f64).collect())
            .collect();
        let parts = data
            .iter_mut()
            .zip(&steps)
            .map(|(d, s)| (d.as_mut_slice(), s.as_slice()))
            .collect();
        for_each_elementwise(parts, |_, (d, s): (&mut [f64], &[f64])| {
            d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
        });
        for (d, s) in data.iter().zip(&steps) {
            assert!(d.iter().zip(s).all(|(d, s)| *d == 1.0 + s));
        }
    }
}
