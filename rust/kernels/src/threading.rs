//! ferroquant's worker threads.
//!
//! Work is split over output tiles and K is never split, so each output element is computed by
//! the same operations in the same order whatever the thread count.
//!
//! Why not a sleeping pool: waking a parked thread costs from microseconds to milliseconds (on a
//! loaded VM the woken thread waits for a time slice; measured ~2 ms on this project's 2-vCPU
//! machine while another process kept one vCPU busy), which can be longer than a whole GEMM.
//! As OpenMP runtimes do, workers here keep polling for a while after each job
//! (`FERROQUANT_SPIN_US`, default 2000 µs; 0 parks at once) before parking, and the calling
//! thread takes tasks itself and polls, never sleeps, while the last tasks finish. Polling yields the CPU (`sched_yield`) between checks,
//! so a waiting worker gives its core to any other runnable thread (torch's own OpenMP threads
//! between our calls) instead of fighting it.
//!
//! A call uses at most one thread per [`MACS_PER_THREAD`] multiply-accumulates, so small GEMMs
//! do not pay for waking many threads.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Below this many multiply-accumulates a call stays on the calling thread.
pub const PARALLEL_MIN_MACS: usize = 1 << 23;

/// A call uses at most one thread per this many multiply-accumulates (~20 µs of work).
pub const MACS_PER_THREAD: usize = 1 << 22;

/// How many threads a call with `macs` multiply-accumulates uses, given the setting `threads`.
pub fn threads_for(macs: usize, threads: usize) -> usize {
    if macs < PARALLEL_MIN_MACS {
        1
    } else {
        threads.clamp(1, (macs / MACS_PER_THREAD).max(1))
    }
}

/// Waits politely: a spin hint, then the CPU goes to any other runnable thread.
#[inline]
fn pause() {
    std::hint::spin_loop();
    std::thread::yield_now();
}

/// One parallel call: `tasks` indices handed out one at a time.
struct Job {
    /// The task body. Its true lifetime is the `run` call that published the job; `run` does
    /// not return before every worker that entered the job has left it (see `run`).
    f: &'static (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    entered: AtomicUsize,
    left: AtomicUsize,
    panicked: AtomicBool,
}

impl Job {
    /// Takes and runs tasks until none is left.
    fn work(&self) {
        loop {
            let t = self.next.fetch_add(1, Ordering::Relaxed);
            if t >= self.tasks {
                return;
            }
            if catch_unwind(AssertUnwindSafe(|| (self.f)(t))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

struct Shared {
    slot: Mutex<Option<Arc<Job>>>,
    generation: AtomicU64,
    wake: Condvar,
    spin: Duration,
}

/// `threads - 1` workers plus the calling thread.
pub(crate) struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    /// One parallel call at a time per pool.
    busy: Mutex<()>,
}

fn spin_duration() -> Duration {
    let us = std::env::var("FERROQUANT_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000u64);
    Duration::from_micros(us)
}

fn worker(shared: Arc<Shared>) {
    let mut seen = shared.generation.load(Ordering::Acquire);
    loop {
        // spin for new work, then park
        let start = Instant::now();
        while shared.generation.load(Ordering::Acquire) == seen && start.elapsed() < shared.spin {
            pause();
        }
        let mut slot = shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        while shared.generation.load(Ordering::Acquire) == seen {
            slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = slot.clone();
        if let Some(j) = &job {
            // counted while the slot is locked: once `run` has emptied the slot, no worker can
            // enter the job any more
            j.entered.fetch_add(1, Ordering::AcqRel);
        }
        drop(slot);
        if let Some(j) = job {
            j.work();
            j.left.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            slot: Mutex::new(None),
            generation: AtomicU64::new(0),
            wake: Condvar::new(),
            spin: spin_duration(),
        });
        for i in 1..threads {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("ferroquant-{i}"))
                .spawn(move || worker(s))
                .expect("failed to start a ferroquant worker thread");
        }
        Pool {
            threads,
            shared,
            busy: Mutex::new(()),
        }
    }

    /// Runs `f(0)`, …, `f(tasks - 1)` on this thread and the workers; returns when all are done.
    pub(crate) fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.threads <= 1 || tasks <= 1 {
            (0..tasks).for_each(f);
            return;
        }
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: only the lifetime is extended. Workers reach `f` only through the job while it
        // is in the slot or after entering it; before returning, this function empties the slot
        // and waits until every worker that entered has left, so no use of `f` outlives this call.
        let f_static: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f: f_static,
            tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(job.clone());
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
            self.shared.wake.notify_all();
        }
        job.work();
        while job.done.load(Ordering::Acquire) < tasks {
            pause();
        }
        let entered = {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = None;
            job.entered.load(Ordering::Acquire)
        };
        while job.left.load(Ordering::Acquire) < entered {
            pause();
        }
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a ferroquant worker task panicked");
        }
    }
}

/// The pool for `threads` threads (built on first use and kept).
pub(crate) fn pool(threads: usize) -> Arc<Pool> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<Pool>>>> = OnceLock::new();
    let map = POOLS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(threads)
        .or_insert_with(|| Arc::new(Pool::new(threads)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3] {
            let p = pool(threads);
            for tasks in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                p.run(tasks, &|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn a_panicking_task_is_reported_to_the_caller() {
        let p = pool(2);
        let r = catch_unwind(AssertUnwindSafe(|| p.run(8, &|t| assert!(t != 5))));
        assert!(r.is_err());
        // the pool still works afterwards
        let n = AtomicUsize::new(0);
        p.run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
