//! ferroquant's worker threads: one process-wide pool, bounded by the machine's CPUs.
//!
//! Work is split over output tiles and K is never split, so each output element is computed by
//! the same operations in the same order whatever the thread count.
//!
//! - **One pool.** Created on first parallel call; workers are started lazily up to what calls
//!   ask for, never more than the CPUs this process may run on minus one (the caller works
//!   too). A worker that fails to start is not an error: the call runs on fewer threads.
//! - **Sized per call by the work**: at most one thread per [`MACS_PER_THREAD`]
//!   multiply-accumulates, none below [`parallel_min_macs`]; the job tells the workers how many
//!   of them may join, the others go back to waiting.
//! - **Re-entrant and concurrent calls run inline.** A parallel call made from inside a pool
//!   task, or while another thread's call holds the pool, runs its tasks on the calling thread:
//!   no deadlock, no waiting, no oversubscription (several Python threads each get one core's
//!   worth instead of queueing).
//! - **torch's OpenMP threads when they are there.** Inside a process that runs torch with its
//!   OpenMP backend (the PyPI builds), two pools would fight for the same cores: our workers
//!   polling while torch's run its float ops, torch's spinning while ours run a GEMM (measured on
//!   this project's 2-vCPU VM: a 4-layer encoder at 2 threads took 15.7 ms with both pools, torch
//!   alone 8.2 ms). [`use_openmp_runtime`] points the kernels at the OpenMP runtime torch already
//!   loaded: parallel calls then run as OpenMP parallel regions (`GOMP_parallel`) on torch's own
//!   thread team, which is warm right after torch's ops, and our pool stays unused. The task split
//!   is the same either way, so results are too.
//! - **Waiting.** Waking a parked thread costs from microseconds to milliseconds (on a loaded
//!   VM the woken thread waits for a time slice), which can be longer than a whole GEMM. As
//!   OpenMP runtimes do, workers poll for a while after each job before parking. The poll lasts
//!   twice the last job's duration, between 50 µs and `FERROQUANT_SPIN_US` (default 2000 µs;
//!   0 parks at once): short calls do not leave cores spinning for long, which matters when
//!   torch's own threads run between our calls. Polling yields the CPU (`sched_yield`) between
//!   checks, so a waiting worker gives its core to any other runnable thread.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// Default of [`parallel_min_macs`]: below this many multiply-accumulates a call stays on the
/// calling thread. 2M (~5 µs on one VNNI core): a whole-graph plan runs its steps back to back
/// with the threads warm, and MobileNetV2's layers of 2–8M MACs then gain from a second thread
/// (2 threads: 1.09 → 0.90 ms against 8M; ResNet-18 2.55 → 2.46 ms; Linear ops unchanged or
/// faster, docs/performance.md).
pub const PARALLEL_MIN_MACS: usize = 1 << 21;

/// A call uses at most one thread per this many multiply-accumulates (~2.5 µs of work) by
/// default: half of [`parallel_min_macs`].
pub const MACS_PER_THREAD: usize = PARALLEL_MIN_MACS / 2;

/// Most threads any call may use, whatever is asked: the hard upper bound of the pool.
pub const MAX_THREADS_LIMIT: usize = 512;

static PARALLEL_MIN: AtomicUsize = AtomicUsize::new(PARALLEL_MIN_MACS);

/// The multiply-accumulates below which a call stays on one thread.
pub fn parallel_min_macs() -> usize {
    PARALLEL_MIN.load(Ordering::Relaxed)
}

/// Changes [`parallel_min_macs`] (and with it the work per thread, half of it; tests use 0 to
/// run small problems on several threads; results do not depend on it). Returns the previous
/// value.
pub fn set_parallel_min_macs(macs: usize) -> usize {
    PARALLEL_MIN.swap(macs, Ordering::Relaxed)
}

/// The most threads a call can use on this machine: the CPUs this process may run on
/// (`std::thread::available_parallelism`, which follows the affinity mask and cgroup quota),
/// at most [`MAX_THREADS_LIMIT`].
pub fn max_threads() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_THREADS_LIMIT)
    })
}

/// How many threads a call with `macs` multiply-accumulates uses, given the setting `threads`.
pub fn threads_for(macs: usize, threads: usize) -> usize {
    let min = parallel_min_macs();
    if macs < min {
        1
    } else {
        let per_thread = (min / 2).max(1);
        threads
            .clamp(1, max_threads())
            .min((macs / per_thread).max(1))
    }
}

thread_local! {
    /// Set while this thread runs a pool task (workers always; the caller during its job).
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
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
    /// How many workers may join (the call's thread count minus the caller).
    helpers: usize,
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
    /// How long workers poll after a job, in nanoseconds (set per job by the caller).
    spin_ns: AtomicU64,
}

/// The process-wide pool: up to `max_threads() - 1` workers plus the calling thread.
struct Pool {
    shared: Arc<Shared>,
    /// Workers started so far.
    workers: Mutex<usize>,
    /// Set when the OS refused a thread: no further attempts.
    spawn_failed: AtomicBool,
    /// One parallel call at a time; others run inline.
    busy: Mutex<()>,
    /// Upper bound of the poll after a job.
    max_spin: Duration,
}

fn max_spin() -> Duration {
    let us = std::env::var("FERROQUANT_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000u64);
    Duration::from_micros(us)
}

fn worker(shared: Arc<Shared>) {
    IN_TASK.with(|c| c.set(true));
    let mut seen = shared.generation.load(Ordering::Acquire);
    loop {
        // poll for new work, then park
        let start = Instant::now();
        let spin = Duration::from_nanos(shared.spin_ns.load(Ordering::Relaxed));
        while shared.generation.load(Ordering::Acquire) == seen && start.elapsed() < spin {
            pause();
        }
        let mut slot = shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        while shared.generation.load(Ordering::Acquire) == seen {
            slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        seen = shared.generation.load(Ordering::Acquire);
        let job = slot.clone();
        // counted while the slot is locked: once `run` has emptied the slot, no worker can
        // enter the job any more
        let ticket = job
            .as_ref()
            .map(|j| j.entered.fetch_add(1, Ordering::AcqRel));
        drop(slot);
        if let (Some(j), Some(ticket)) = (job, ticket) {
            if ticket < j.helpers {
                j.work();
            }
            j.left.fetch_add(1, Ordering::AcqRel);
        }
    }
}

impl Pool {
    fn new() -> Pool {
        let max_spin = max_spin();
        Pool {
            shared: Arc::new(Shared {
                slot: Mutex::new(None),
                generation: AtomicU64::new(0),
                wake: Condvar::new(),
                spin_ns: AtomicU64::new(max_spin.as_nanos() as u64),
            }),
            workers: Mutex::new(0),
            spawn_failed: AtomicBool::new(false),
            busy: Mutex::new(()),
            max_spin,
        }
    }

    /// Starts workers until there are `want` (at most `max_threads() - 1`); returns how many
    /// there are. A refused thread stops the growth for good; the pool works with what it has.
    fn ensure_workers(&self, want: usize) -> usize {
        let want = want.min(max_threads() - 1);
        let mut have = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while *have < want && !self.spawn_failed.load(Ordering::Relaxed) {
            let s = self.shared.clone();
            let started = std::thread::Builder::new()
                .name(format!("ferroquant-{}", *have + 1))
                .spawn(move || worker(s));
            match started {
                Ok(_) => *have += 1,
                Err(_) => self.spawn_failed.store(true, Ordering::Relaxed),
            }
        }
        *have
    }

    /// Runs the tasks on this thread and up to `helpers` workers.
    fn run(&self, helpers: usize, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime is extended. Workers reach `f` only through the job while it
        // is in the slot or after entering it; before returning, this function empties the slot
        // and waits until every worker that entered has left, so no use of `f` outlives this call.
        let f_static: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Arc::new(Job {
            f: f_static,
            tasks,
            helpers,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
            left: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let start = Instant::now();
        {
            let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(job.clone());
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
            self.shared.wake.notify_all();
        }
        let was = IN_TASK.with(|c| c.replace(true));
        job.work();
        IN_TASK.with(|c| c.set(was));
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
        // (max, then min: FERROQUANT_SPIN_US may be below 50 µs, 0 included)
        let spin = (start.elapsed() * 2)
            .max(Duration::from_micros(50))
            .min(self.max_spin);
        self.shared
            .spin_ns
            .store(spin.as_nanos() as u64, Ordering::Relaxed);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a ferroquant worker task panicked");
        }
    }
}

/// An OpenMP runtime already loaded in the process (torch's), reached through the GNU OpenMP ABI
/// (`GOMP_parallel`, which libgomp, LLVM's libomp and Intel's libiomp5 all export).
#[cfg(target_os = "linux")]
mod openmp {
    use std::ffi::{c_char, c_int, c_uint, c_void, CString};

    #[link(name = "dl")]
    extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
    }
    const RTLD_NOW: c_int = 2;
    const RTLD_NOLOAD: c_int = 4;

    /// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`:
    /// runs `fn(data)` on a team of `num_threads` threads (the caller is one of them) and returns
    /// when every thread has returned.
    pub(super) type ParallelFn =
        unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

    /// `GOMP_parallel` of the library at `path`, if the process has already loaded it
    /// (`RTLD_NOLOAD`: nothing new is ever loaded).
    pub(super) fn load(path: &str) -> Option<ParallelFn> {
        let path = CString::new(path).ok()?;
        let sym = CString::new("GOMP_parallel").ok()?;
        // SAFETY: plain C calls with valid NUL-terminated strings; a non-null result of dlsym
        // for GOMP_parallel is a function with the signature above (the GNU OpenMP ABI).
        unsafe {
            let handle = dlopen(path.as_ptr(), RTLD_NOW | RTLD_NOLOAD);
            if handle.is_null() {
                return None;
            }
            let f = dlsym(handle, sym.as_ptr());
            if f.is_null() {
                return None;
            }
            Some(std::mem::transmute::<*mut c_void, ParallelFn>(f))
        }
    }

    /// What each thread of the team runs: takes tasks until none is left.
    unsafe extern "C" fn trampoline(data: *mut c_void) {
        // SAFETY: `data` is the `&Job` passed to GOMP_parallel by `run`, alive until it returns.
        let job = unsafe { &*(data as *const super::Job) };
        let was = super::IN_TASK.with(|c| c.replace(true));
        job.work(); // catches panics: nothing unwinds into C
        super::IN_TASK.with(|c| c.set(was));
    }

    /// Runs `job` on an OpenMP team of `threads`.
    pub(super) fn run(parallel: ParallelFn, job: &super::Job, threads: usize) {
        let threads = threads.min(c_uint::MAX as usize) as c_uint;
        // SAFETY: GOMP_parallel returns only after every thread has left `trampoline`, so the
        // pointer to `job` is never used after this call.
        unsafe {
            parallel(
                trampoline,
                job as *const super::Job as *mut c_void,
                threads,
                0,
            )
        }
    }
}

#[cfg(target_os = "linux")]
static OPENMP: OnceLock<openmp::ParallelFn> = OnceLock::new();
static OPENMP_ON: AtomicBool = AtomicBool::new(false);
/// The process that registered the OpenMP runtime. libgomp is not fork-safe: in a forked child
/// its team is gone but its state says otherwise, and a parallel region hangs (torch's own ops
/// hang there too unless the child sets one thread). A child therefore uses our own pool, where
/// the calling thread can always finish every task itself.
static OPENMP_PID: AtomicU64 = AtomicU64::new(0);

/// Runs parallel calls on the OpenMP runtime at `path` (a shared library the process has
/// already loaded, e.g. torch's `libgomp.so.1`) instead of ferroquant's own pool. Returns whether
/// it is in use: false when the library is not loaded or lacks `GOMP_parallel`, or off Linux.
/// The first library that works stays registered.
pub fn use_openmp_runtime(path: &str) -> bool {
    #[cfg(target_os = "linux")]
    {
        if OPENMP.get().is_none() {
            if let Some(f) = openmp::load(path) {
                let _ = OPENMP.set(f);
            }
        }
        let ok = OPENMP.get().is_some();
        OPENMP_PID.store(std::process::id() as u64, Ordering::Relaxed);
        OPENMP_ON.store(ok, Ordering::Relaxed);
        ok
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        false
    }
}

/// Switches between ferroquant's own pool (`false`) and the OpenMP runtime registered by
/// [`use_openmp_runtime`] (`true`); returns whether OpenMP is now in use.
pub fn set_openmp_enabled(on: bool) -> bool {
    #[cfg(target_os = "linux")]
    let ok = on && OPENMP.get().is_some();
    if ok {
        OPENMP_PID.store(std::process::id() as u64, Ordering::Relaxed);
    }
    #[cfg(not(target_os = "linux"))]
    let ok = {
        let _ = on;
        false
    };
    OPENMP_ON.store(ok, Ordering::Relaxed);
    ok
}

/// "openmp" when parallel calls run on the registered OpenMP runtime, else "own" (also in a
/// process forked after registering it).
pub fn thread_runtime() -> &'static str {
    if OPENMP_ON.load(Ordering::Relaxed)
        && OPENMP_PID.load(Ordering::Relaxed) == std::process::id() as u64
    {
        "openmp"
    } else {
        "own"
    }
}

fn the_pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::new)
}

/// Runs `f(start, part)` over `out` cut into about `threads` contiguous parts (`start` is the
/// part's first index; every part but the last a multiple of `align` elements): elementwise and
/// line-by-line work, whose results cannot depend on the cut. On this thread alone when
/// `threads <= 1`.
pub(crate) fn for_parts<T: Send>(
    threads: usize,
    align: usize,
    out: &mut [T],
    f: &(dyn Fn(usize, &mut [T]) + Sync),
) {
    let align = align.max(1);
    if threads <= 1 || out.len() <= align {
        return f(0, out);
    }
    let per = out.len().div_ceil(threads).div_ceil(align) * align;
    let parts: Vec<Mutex<&mut [T]>> = out.chunks_mut(per).map(Mutex::new).collect();
    parallel_for(threads, parts.len(), &|i| {
        let mut part = parts[i].lock().unwrap_or_else(|e| e.into_inner());
        f(i * per, &mut part);
    });
}

/// Runs `f(0)`, …, `f(tasks - 1)` on up to `threads` threads (this one included) and returns
/// when all are done. Runs them on this thread alone when `threads` or `tasks` is 1, when
/// called from inside a task, when another call holds the pool, or when no worker could be
/// started. A panicking task is re-raised here after the others finish.
pub(crate) fn parallel_for(threads: usize, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    let inline = || (0..tasks).for_each(f);
    if threads <= 1 || tasks <= 1 || IN_TASK.with(|c| c.get()) {
        return inline();
    }
    let pool = the_pool();
    let _guard = match pool.busy.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => return inline(),
    };
    #[cfg(target_os = "linux")]
    if OPENMP_ON.load(Ordering::Relaxed)
        && OPENMP_PID.load(Ordering::Relaxed) == std::process::id() as u64
    {
        if let Some(&parallel) = OPENMP.get() {
            // SAFETY: only the lifetime is extended; `openmp::run` returns after every thread
            // of the team has finished with the job.
            let f_static: &'static (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
            let job = Job {
                f: f_static,
                tasks,
                helpers: 0,
                next: AtomicUsize::new(0),
                done: AtomicUsize::new(0),
                entered: AtomicUsize::new(0),
                left: AtomicUsize::new(0),
                panicked: AtomicBool::new(false),
            };
            JOBS.fetch_add(1, Ordering::Relaxed);
            openmp::run(parallel, &job, threads.min(tasks));
            if job.panicked.load(Ordering::Relaxed) {
                panic!("a ferroquant task panicked");
            }
            return;
        }
    }
    let helpers = pool.ensure_workers(threads.min(tasks) - 1).min(threads - 1);
    if helpers == 0 {
        return inline();
    }
    JOBS.fetch_add(1, Ordering::Relaxed);
    pool.run(helpers, tasks, f);
}

static JOBS: AtomicUsize = AtomicUsize::new(0);

/// Calls that ran on more than one thread since the process started (for tests: proves that a
/// "several threads" test really used several).
pub fn parallel_jobs() -> usize {
    JOBS.load(Ordering::Relaxed)
}

/// Workers started so far (for tests and diagnostics).
pub fn pool_workers() -> usize {
    *the_pool().workers.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 3, 64] {
            for tasks in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                parallel_for(threads, tasks, &|t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
        // bounded by the machine, whatever was asked
        assert!(pool_workers() < max_threads().max(2));
    }

    #[test]
    fn a_panicking_task_is_reported_to_the_caller() {
        let r = catch_unwind(AssertUnwindSafe(|| {
            parallel_for(2, 8, &|t| assert!(t != 5))
        }));
        assert!(r.is_err());
        // the pool still works afterwards
        let n = AtomicUsize::new(0);
        parallel_for(2, 8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn nested_calls_run_inline_instead_of_deadlocking() {
        let n = AtomicUsize::new(0);
        parallel_for(4, 6, &|_| {
            parallel_for(4, 5, &|_| {
                parallel_for(4, 3, &|_| {
                    n.fetch_add(1, Ordering::Relaxed);
                });
            });
        });
        assert_eq!(n.load(Ordering::Relaxed), 90);
    }

    #[test]
    fn concurrent_callers_all_finish() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        parallel_for(4, 16, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 8 * 50 * 16);
    }

    #[test]
    fn threads_are_bounded_by_the_machine_and_the_work() {
        assert_eq!(threads_for(1, 64), 1);
        let big = usize::MAX / 2;
        assert_eq!(threads_for(big, 1_000_000), max_threads());
        assert_eq!(threads_for(PARALLEL_MIN_MACS, 64), 2.min(max_threads()));
    }
}
