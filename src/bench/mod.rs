//! Measuring this machine, as library calls: the figures `docs/BENCHMARKS.md` records
//! come from here, so a program of the user's can ask the same questions the `bench`,
//! `gpu_gemm` and `allreduce` examples ask.
//!
//! - [`compare_backends`]: GEMM over a sweep of sizes, one training step and the
//!   all-reduce, on every backend of this machine, with the size from which the GPU
//!   beats the CPU ([`Comparison`] prints as tables);
//! - [`protocol`]: the GEMM timing protocol ringtrain shares with its peer benchmarks;
//! - [`collective`]: timing of collectives, after nccl-tests;
//! - [`ring_sweep`]: the in-process ring over group and message sizes, beside the naive
//!   group, memcpy and the ring with compressed values ([`RingSweep`] prints as tables);
//! - [`op_threads`]: the CPU backend's memory-bound ops on one thread and on N, around
//!   their parallel threshold;
//! - [`infer`]: a predictor's latency and throughput per batch size, and peak memory,
//!   timed as the peer script times PyTorch and onnxruntime;
//! - [`local_sgd_sweep`]: MNIST trained with local SGD at several synchronization
//!   periods beside gradient averaging, accuracy against bytes sent ([`LocalSgdSweep`]
//!   prints as a table);
//! - [`parallel_bench`]: ZeRO-1 beside plain data parallelism (state per replica, step
//!   time), and a CPU beside a GPU with equal and auto-balanced shards.

mod backends;
pub mod collective;
pub mod infer;
mod local_sgd;
pub mod op_threads;
mod parallel;
pub mod protocol;
mod ring_sweep;

pub use backends::{
    compare_backends, cpu_name, known_peak, Backend, Comparison, ComparisonConfig, GemmPoint, Part,
    ReducePoint, StepPoint,
};
pub use local_sgd::{local_sgd_sweep, LocalSgdSweep, LocalSgdSweepConfig, SweepRun};
pub use parallel::{parallel_bench, HeteroPoint, ParallelBench, ParallelBenchConfig, ZeroPoint};
pub use ring_sweep::{
    bytes_per_all_reduce, human_bytes, parse_bytes, ring_sweep, RingPoint, RingSweep,
    RingSweepConfig,
};

/// Writes `figures` as pretty JSON to `path`, atomically (a temporary file, then a
/// rename), as every benchmark here writes its report.
pub fn write_json(path: &std::path::Path, figures: &impl serde::Serialize) -> protocol::Res<()> {
    let json = serde_json::to_vec_pretty(figures)?;
    crate::checkpoint::write_atomically(path, |w| w.write_all(&json))?;
    Ok(())
}
