//! The threads of the large matrix products: a rayon pool of `n − 1` workers, with the calling
//! thread as the n-th, or no pool at all for one thread.
//!
//! Work is split only where it is worth a thread: shares of at least 2^19 multiply-adds
//! (`MIN_SHARE` in `kernels/gemm/mod.rs`). Shares are handed out with
//! [`rayon::ThreadPool::in_place_scope`], so the caller computes one share itself instead of
//! sleeping while a worker does all of them, and shares may borrow (each writes its own rows
//! of one output: no copies to stitch halves together).
//!
//! rayon's workers spin briefly, then sleep; the caller spins for theirs before it blocks
//! ([`SPIN`]). `cargo bench --bench ops -- handoff` measures the hand-off
//! (`docs/performance.md` has the figures).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

/// The thread count and its pool (`None` for one thread, or before first use).
struct Pool {
    threads: usize,
    workers: Option<Arc<ThreadPool>>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Pool>> {
    // The guarded value is replaced whole, never left half-written: a panic elsewhere while
    // it was held leaves it valid.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The cores this process may use (`taskset` and cgroup limits honoured).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Threads per core beyond which a count is refused: more only adds hand-offs (and a count
/// of 65,535 took seconds to start a pool for every large product).
const MAX_THREADS_PER_CORE: usize = 4;

/// The most threads [`set_num_threads`] and `TAPEGRAD_NUM_THREADS` accept: four per core
/// this process may use.
///
/// ```
/// use tapegrad::runtime;
/// assert!(runtime::max_threads() >= 4);
/// assert!(runtime::set_num_threads(runtime::max_threads() + 1).is_err());
/// ```
#[must_use]
pub fn max_threads() -> usize {
    MAX_THREADS_PER_CORE * cores()
}

/// The count tapegrad starts with: `TAPEGRAD_NUM_THREADS` if it is a count from 1 to
/// [`max_threads`], the cores this process may use otherwise (with a warning, once, when the
/// variable is set to anything else).
fn initial_threads() -> usize {
    let Ok(value) = std::env::var("TAPEGRAD_NUM_THREADS") else {
        return cores();
    };
    match value.trim().parse::<usize>() {
        Ok(threads) if (1..=max_threads()).contains(&threads) => threads,
        _ => {
            eprintln!(
                "tapegrad: TAPEGRAD_NUM_THREADS={value:?} is not a thread count from 1 to {}; \
                 using {} (the cores this process may use)",
                max_threads(),
                cores()
            );
            cores()
        }
    }
}

/// The number of threads tapegrad's kernels use (see [`crate::runtime`]).
///
/// ```
/// assert!(tapegrad::runtime::num_threads() >= 1);
/// ```
#[must_use]
pub fn num_threads() -> usize {
    let mut pool = lock();
    pool.get_or_insert_with(|| Pool {
        threads: initial_threads(),
        workers: None,
    })
    .threads
}

/// Sets the number of threads tapegrad's kernels use, for the whole process, from the next
/// product on. One thread means no pool: the workers of an earlier pool finish what they
/// are doing and exit, and none is started again.
///
/// ```
/// tapegrad::runtime::set_num_threads(2)?;
/// assert_eq!(tapegrad::runtime::num_threads(), 2);
/// # Ok::<(), tapegrad::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidSetting`] for 0 or more than [`max_threads`]; nothing changes.
pub fn set_num_threads(threads: usize) -> Result<()> {
    if !(1..=max_threads()).contains(&threads) {
        return Err(Error::InvalidSetting {
            op: "set_num_threads",
            setting: "thread count",
            value: threads as f64,
            expected: "from 1 to runtime::max_threads() (four per core this process may use)",
        });
    }
    let mut pool = lock();
    if pool.as_ref().is_none_or(|pool| pool.threads != threads) {
        *pool = Some(Pool {
            threads,
            workers: None,
        });
    }
    Ok(())
}

/// The thread count and the pool to run shares on (`None`: one thread, or the pool could not
/// be started, when everything runs on the caller).
pub(crate) fn current() -> (usize, Option<Arc<ThreadPool>>) {
    let mut guard = lock();
    let pool = guard.get_or_insert_with(|| Pool {
        threads: initial_threads(),
        workers: None,
    });
    if pool.threads > 1 && pool.workers.is_none() {
        pool.workers = ThreadPoolBuilder::new()
            .num_threads(pool.threads - 1)
            .thread_name(|i| format!("tapegrad-{}", i + 1))
            .build()
            .ok()
            .map(Arc::new);
    }
    match &pool.workers {
        Some(workers) => (pool.threads, Some(Arc::clone(workers))),
        None => (1, None),
    }
}

/// Runs `a` and `b`, on two threads when there is a pool (`a` on a worker, `b` on the caller),
/// and returns both results. A panic in either is resumed on the caller.
pub(crate) fn join<RA: Send, RB: Send>(
    pool: Option<&ThreadPool>,
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    let Some(pool) = pool else {
        return (a(), b());
    };
    let mut ra = None;
    let rb = run_shares(pool, vec![Box::new(|| ra = Some(a()))], b);
    (ra.expect("the scope waits for its spawned job"), rb)
}

/// Runs `share(i)` for `i` in `0..shares`, share 0 on the caller and the others on the
/// pool's workers (all on the caller without a pool), and returns when all are done.
pub(crate) fn for_each(pool: Option<&ThreadPool>, shares: usize, share: impl Fn(usize) + Sync) {
    match pool {
        Some(pool) if shares > 1 => for_each_item(Some(pool), (0..shares).collect(), share),
        _ => (0..shares).for_each(share),
    }
}

/// Runs `share(item)` for every item, the first on the caller and the others on the pool's
/// workers (all on the caller without a pool), and returns when all are done. Items may be
/// mutable views of disjoint parts of one output.
pub(crate) fn for_each_item<T: Send>(
    pool: Option<&ThreadPool>,
    items: Vec<T>,
    share: impl Fn(T) + Sync,
) {
    let mut items = items.into_iter();
    let Some(pool) = pool else {
        items.for_each(share);
        return;
    };
    let Some(first) = items.next() else { return };
    let share = &share;
    let others = items
        .map(|item| Box::new(move || share(item)) as Job<'_>)
        .collect();
    run_shares(pool, others, || share(first));
}

/// How long the caller spins for the workers' shares after finishing its own, before it
/// blocks: longer than a share's imbalance, far shorter than a product.
const SPIN: Duration = Duration::from_micros(200);

/// A share for a worker, borrowing from the caller's frame.
type Job<'a> = Box<dyn FnOnce() + Send + 'a>;

/// The `jobs` on the workers while `own()` runs on the caller; then the caller spins until the
/// workers are done (or [`SPIN`] has passed) before the scope blocks. Blocking at once would
/// put the caller to sleep, and waking it costs a futex round trip (about 20 µs on the
/// benchmark VM: `cargo bench --bench ops -- handoff`).
fn run_shares<'a, R: Send>(
    pool: &ThreadPool,
    jobs: Vec<Job<'a>>,
    own: impl FnOnce() -> R + Send,
) -> R {
    let (count, done) = (jobs.len(), AtomicUsize::new(0));
    pool.in_place_scope(|scope| {
        for job in jobs {
            let done = &done;
            scope.spawn(move |_| {
                job();
                done.fetch_add(1, Ordering::Release);
            });
        }
        let result = own();
        let start = Instant::now();
        // The clock is read once every 64 polls: reading it is most of a poll's cost.
        'spin: while start.elapsed() < SPIN {
            for _ in 0..64 {
                if done.load(Ordering::Acquire) == count {
                    break 'spin;
                }
                std::hint::spin_loop();
            }
        }
        result
    })
}
