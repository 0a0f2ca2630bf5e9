//! Measuring this machine, as library calls: the figures `docs/BENCHMARKS.md` records
//! come from here, so a program of the user's can ask the same questions the `bench`,
//! `gpu_gemm` and `allreduce` examples ask.
//!
//! - [`compare_backends`]: GEMM over a sweep of sizes, one training step and the
//!   all-reduce, on every backend of this machine, with the size from which the GPU
//!   beats the CPU ([`Comparison`] prints as tables);
//! - [`protocol`]: the GEMM timing protocol ringtrain shares with its peer benchmarks;
//! - [`collective`]: timing of collectives, after nccl-tests;
//! - [`op_threads`]: the CPU backend's memory-bound ops on one thread and on N, around
//!   their parallel threshold.

mod backends;
pub mod collective;
pub mod op_threads;
pub mod protocol;

pub use backends::{
    compare_backends, cpu_name, known_peak, Backend, Comparison, ComparisonConfig, GemmPoint, Part,
    ReducePoint, StepPoint,
};
