//! A team of spinning threads for decode steps.
//!
//! A decode step is a few hundred small products (tens of microseconds each) with serial
//! work between them. Through rayon each product wakes the other workers, who went to sleep
//! during the serial part: a futex wake and a reschedule per product, which cost as much as
//! the product itself on two threads. [`decode`] instead wakes a team of helper threads once
//! per step, which spin until it ends, and [`par_for`] hands them each product's tasks
//! through a few atomics, as llama.cpp's thread pool does.
//!
//! The helpers are threads of their own, not rayon's workers (which sleep meanwhile): a
//! helper never runs a rayon job, so no rayon wait can end up behind a spinning helper.
//! Outside [`decode`], [`par_for`] is rayon's parallel loop, so kernels call it either way.

use std::cell::{Cell, UnsafeCell};
use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;

/// Spins on `wait` (true while the condition is unmet), yielding the core now and then: a
/// machine with more runnable threads than cores must still let the awaited one run.
fn spin_while(mut wait: impl FnMut() -> bool) {
    let mut n = 0u32;
    while wait() {
        n = n.wrapping_add(1);
        if n.is_multiple_of(1 << 12) {
            std::thread::yield_now();
        } else {
            spin_loop();
        }
    }
}

/// The job being handed out: `f(i)` for `i` in `0..n`.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
}

struct Team {
    /// Even: `job` is published; odd: the owner is writing it.
    epoch: AtomicUsize,
    job: UnsafeCell<Job>,
    /// The next task index to claim, and how many tasks have finished.
    next: AtomicUsize,
    done: AtomicUsize,
    /// Helpers between joining a job and leaving it.
    inside: AtomicUsize,
    /// How many helpers take part in the current step (0: no step; they sleep).
    active: AtomicUsize,
    /// Held by the thread whose step the team serves.
    owned: AtomicBool,
    helpers: Mutex<Vec<Thread>>,
}

// SAFETY: `job` is written only by the owner while no helper is inside (odd epoch, `inside`
// zero, see `Team::run`), and read by helpers only while inside with an even epoch.
unsafe impl Sync for Team {}
// SAFETY: the job's closure is `Sync` and only called while its owner waits for it.
unsafe impl Send for Team {}

fn noop(_: usize) {}

impl Team {
    /// Claims and runs tasks of `job` until none is left.
    fn work(&self, job: Job) {
        loop {
            let i = self.next.fetch_add(1, AcqRel);
            if i >= job.n {
                return;
            }
            // SAFETY: the owner keeps `f` alive until every claimed task is done.
            unsafe { (*job.f)(i) };
            self.done.fetch_add(1, Release);
        }
    }

    /// The owner: runs `f(i)` for `i` in `0..n` with the helpers, returning when all are
    /// done.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        // Close the last job to newcomers, and wait for helpers still inside it to leave
        // (they can only be failing to claim: all its tasks are done).
        let e = self.epoch.fetch_add(1, SeqCst) + 1;
        spin_while(|| self.inside.load(SeqCst) > 0);
        // SAFETY: odd epoch and nobody inside: no helper reads `job` now. The lifetime is
        // erased; `f` outlives every call made through it (we wait for `done` below).
        unsafe {
            *self.job.get() = Job {
                f: std::mem::transmute::<
                    *const (dyn Fn(usize) + Sync + '_),
                    *const (dyn Fn(usize) + Sync + 'static),
                >(f),
                n,
            }
        };
        self.next.store(0, SeqCst);
        self.done.store(0, SeqCst);
        self.epoch.store(e + 1, SeqCst);
        // SAFETY: written above by this thread.
        self.work(unsafe { *self.job.get() });
        spin_while(|| self.done.load(Acquire) < n);
    }

    /// Helper `k`'s life: asleep between steps, spinning for jobs during the steps it takes
    /// part in.
    fn help(&self, k: usize) {
        let mut seen = self.epoch.load(SeqCst);
        let mut idle = 0u32;
        loop {
            if k >= self.active.load(Acquire) {
                std::thread::park();
                continue;
            }
            let e = self.epoch.load(SeqCst);
            if e == seen || e % 2 == 1 {
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(1 << 12) {
                    std::thread::yield_now();
                } else {
                    spin_loop();
                }
                continue;
            }
            self.inside.fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) == e {
                seen = e;
                // SAFETY: inside with the epoch still even: the owner does not write `job`
                // until we leave.
                self.work(unsafe { *self.job.get() });
            }
            self.inside.fetch_sub(1, SeqCst);
        }
    }
}

/// The process's team (helpers are started on first use, as many as asked for since).
fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team {
        epoch: AtomicUsize::new(0),
        job: UnsafeCell::new(Job { f: &noop, n: 0 }),
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        inside: AtomicUsize::new(0),
        active: AtomicUsize::new(0),
        owned: AtomicBool::new(false),
        helpers: Mutex::new(Vec::new()),
    })
}

thread_local! {
    /// Whether this thread owns the team (inside [`decode`]).
    static OWNER: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f(i)` for every `i` in `0..n`, in parallel: on the decode team when the calling
/// thread owns it, else on rayon's pool.
pub fn par_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    if n <= 1 {
        (0..n).for_each(f);
    } else if OWNER.with(|o| o.get()) {
        team().run(n, f);
    } else {
        use rayon::prelude::*;
        (0..n).into_par_iter().for_each(f);
    }
}

/// Runs `body` (one decode step) on a worker of rayon's pool, with as many helpers as the
/// pool has other workers spinning for [`par_for`]'s tasks until it returns. Only for short,
/// mostly serial steps. When the team is busy with another thread's step, or the pool has
/// one thread, `body` runs with rayon alone.
pub fn decode<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    super::on_pool(|| {
        let want = rayon::current_num_threads() - 1;
        let t = team();
        if want == 0
            || OWNER.with(|o| o.get())
            || t.owned
                .compare_exchange(false, true, Acquire, Relaxed)
                .is_err()
        {
            return body();
        }
        let helpers = {
            let mut hs = t.helpers.lock().unwrap_or_else(|e| e.into_inner());
            while hs.len() < want {
                let k = hs.len();
                match std::thread::Builder::new()
                    .name(format!("ferroformer-decode-{k}"))
                    .spawn(move || team().help(k))
                {
                    Ok(h) => hs.push(h.thread().clone()),
                    // Without another thread the step just has fewer hands.
                    Err(_) => break,
                }
            }
            hs[..want.min(hs.len())].to_vec()
        };
        struct Step;
        impl Drop for Step {
            fn drop(&mut self) {
                let t = team();
                OWNER.with(|o| o.set(false));
                t.active.store(0, Release);
                t.owned.store(false, Release);
            }
        }
        let _step = Step;
        t.active.store(helpers.len(), Release);
        for h in &helpers {
            h.unpark();
        }
        OWNER.with(|o| o.set(true));
        body()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_per_job_with_and_without_a_team() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let check = || {
            for n in [0usize, 1, 2, 7, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                par_for(n, &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "n = {n}");
            }
        };
        pool.install(check);
        // Two threads stepping at once: one gets the team, the other runs on rayon alone.
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    pool.install(|| {
                        for _ in 0..200 {
                            decode(|| {
                                check();
                                // A rayon loop inside the step still completes.
                                use rayon::prelude::*;
                                let s: usize = (0..1000usize).into_par_iter().sum();
                                assert_eq!(s, 999 * 500);
                                // And a nested step is just the step.
                                decode(check);
                            });
                        }
                    })
                });
            }
        });
    }
}
