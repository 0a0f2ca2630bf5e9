//! Keeping rayon's workers awake through a training step.
//!
//! A step is hundreds of ops, most of them split across threads for tens to hundreds of
//! microseconds, with serial work in between. Rayon's idle workers go to sleep within
//! microseconds, and each op's parallel work then waits for a futex wake of a sleeping
//! thread: 30-80 us on a VM (measured in traces: the second GEMM task started that late),
//! as long as a small GEMM itself, so two threads ran the GPT step slower than one.
//! OpenMP runtimes avoid this by spinning for a while after a parallel region (Intel's
//! KMP_BLOCKTIME, 200 ms by default); [`with_awake_workers`] does the same for the span
//! of one call, inside rayon (no second pool to compete with it for the cores): every
//! other worker runs a job that keeps asking rayon for work until the call returns.

use rayon::Yield;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on a thread of rayon's pool while the pool's other workers wait for work by
/// spinning rather than sleeping, and returns its result. Results do not change (only
/// when work starts); the waiting workers burn their cores until `f` returns. Meant for
/// one caller at a time: a spinner runs whatever work the pool has, another caller's
/// included, and cannot stop before that work ends, so two callers at once (two
/// Trainers in one process) can hold each other's return back by one step.
pub fn with_awake_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        return rayon::scope(|_| f());
    }
    let done = AtomicBool::new(false);
    let done = &done;
    rayon::scope(|s| {
        let caller = rayon::current_thread_index();
        for _ in 1..threads {
            s.spawn(move |_| {
                // The caller's own thread may pick a spinner off its queue while it waits
                // inside `f` (in a join): it must not spin there, waiting for itself.
                if rayon::current_thread_index() == caller {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        // Signals the spinners even if `f` panics, so that the scope can end.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let _stop = Stop(done);
        f()
    })
}
