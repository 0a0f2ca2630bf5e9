//! Mixed precision: the format the products of a forward and backward pass take their
//! inputs in, set for a stretch of code on one thread, as PyTorch's `autocast` does.
//!
//! Inside [`with_precision`]`(Precision::Bf16, ..)`, `matmul`, `linear`, `conv2d` and
//! `attention` round their inputs to bf16 and sum in f32; every other op (sums,
//! normalisations, softmax, the loss, the optimizer) and every tensor in memory stay f32,
//! so the parameters are f32 master weights. Each op records the precision it ran in and
//! its backward pass uses the same, rounding the incoming gradient too, wherever
//! `backward` is called. The gradient of a rounding is taken as the identity (a cast's,
//! as autocast's).

use crate::Precision;
use std::cell::Cell;

thread_local! {
    static COMPUTE: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The input precision of products on this thread: f32 unless inside [`with_precision`].
pub fn compute_precision() -> Precision {
    COMPUTE.with(Cell::get)
}

/// Runs `f` with this thread's products taking `precision` inputs, and restores the
/// previous setting after (also when `f` panics). Data-parallel replicas each run their
/// step on a thread of their own: the Trainer sets the precision in each.
pub fn with_precision<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPUTE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPUTE.with(|c| c.replace(precision)));
    f()
}
