//! A second core for the large matrix products: one helper thread that spins while work is
//! coming and sleeps when it stops.
//!
//! Why not a general pool (`matrixmultiply`'s own threads, rayon): their workers go to sleep
//! between products, and waking one costs a round trip of about 15 µs on the benchmark's
//! virtual machine. A training step at size M issues a large product every few tens of
//! microseconds, so most of the second core's gain went to waking it (two threads measured no
//! faster than one, docs/performance.md). The helper instead polls its queue for
//! [`SPIN`] after each job before it blocks, as OpenMP runtimes do, so during a step it
//! picks work up at once. The cost is up to [`SPIN`] of one core's time after the last job.
//!
//! Jobs own their data (`'static`): callers share operands through `Arc`, so this module needs
//! no `unsafe`. A job that panics is reported to its caller as a panic; the helper goes on.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, SendError, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

/// How long the helper (and a caller waiting for its result) polls before blocking.
const SPIN: Duration = Duration::from_millis(2);

type Job = Box<dyn FnOnce() + Send>;

/// The helper's queue, started on first use; `None` on a single core (or if the thread could
/// not be spawned), where jobs run on the caller's thread.
fn helper() -> Option<&'static Sender<Job>> {
    static HELPER: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            if cores < 2 {
                return None;
            }
            let (jobs, queue) = channel::<Job>();
            std::thread::Builder::new()
                .name("tapegrad-helper".into())
                .spawn(move || serve(queue))
                .ok()
                .map(|_| jobs)
        })
        .as_ref()
}

thread_local! {
    /// Whether this thread is the helper: a job that itself calls [`join`] runs both halves
    /// in place instead of queueing behind itself (which would wait forever).
    static ON_HELPER: Cell<bool> = const { Cell::new(false) };
}

fn serve(queue: Receiver<Job>) {
    ON_HELPER.with(|on| on.set(true));
    while let Some(job) = receive_spinning(&queue) {
        // A panicking job drops its result sender: its caller sees that and panics.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

/// The next message: polled for up to [`SPIN`], then waited for; `None` once disconnected.
fn receive_spinning<T>(from: &Receiver<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        match from.try_recv() {
            Ok(message) => return Some(message),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if started.elapsed() < SPIN => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return from.recv().ok(),
        }
    }
}

/// Runs `background` on the helper thread and `here` on this one, and returns both results.
/// Without a helper (one core), or on the helper itself, runs both here.
pub(crate) fn join<RA, RB>(
    background: impl FnOnce() -> RA + Send + 'static,
    here: impl FnOnce() -> RB,
) -> (RA, RB)
where
    RA: Send + 'static,
{
    let helper = helper().filter(|_| !ON_HELPER.with(Cell::get));
    let Some(helper) = helper else {
        return (background(), here());
    };
    let (result, receive) = channel();
    let job: Job = Box::new(move || {
        let _ = result.send(background());
    });
    if let Err(SendError(job)) = helper.send(job) {
        job(); // the helper is gone: do its work here
    }
    let mine = here();
    match receive_spinning(&receive) {
        Some(theirs) => (theirs, mine),
        None => resume_unwind(Box::new(
            "a matrix product panicked on tapegrad's helper thread",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_results_come_back_in_order() {
        let (a, b) = join(|| (0..1000u64).sum::<u64>(), || "here");
        assert_eq!((a, b), (499_500, "here"));
    }

    #[test]
    fn many_callers_share_the_helper() {
        let handles: Vec<_> = (0..8u64)
            .map(|i| std::thread::spawn(move || join(move || i * 2, move || i * 3)))
            .collect();
        for (i, handle) in handles.into_iter().enumerate() {
            let i = i as u64;
            assert_eq!(handle.join().unwrap(), (i * 2, i * 3));
        }
    }

    #[test]
    fn a_job_that_joins_runs_its_halves_in_place() {
        let (nested, here) = join(|| join(|| 1, || 2), || 3);
        assert_eq!((nested, here), ((1, 2), 3));
    }

    #[test]
    fn a_panicking_job_panics_its_caller_and_the_helper_survives() {
        let caught = std::panic::catch_unwind(|| join(|| panic!("boom"), || 1));
        assert!(caught.is_err());
        assert_eq!(join(|| 2, || 3), (2, 3));
    }
}
