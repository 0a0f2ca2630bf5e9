//! Which backend should this machine train on? GEMM, a training step and the all-reduce,
//! measured on every backend side by side in one run.

use super::collective::{bus_bandwidth, time_all_reduce};
use super::protocol::{operands, time_at_least, verify, Res, Timed};
use crate::comm::ring;
use crate::kernels::cpu::gemm::{gemm_mixed, Epilogue, MatRef};
use crate::kernels::gpu::GpuBackend;
use crate::kernels::{Backend as _, GemmSpec};
use crate::nn::{Module, ModuleState};
use crate::optim::{Optimizer, Sgd, SgdConfig};
use crate::zoo::{mlp, Activation};
use crate::{rng_from_seed, with_precision, Device, Precision, Simd, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A way to compute a GEMM or a training step on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A textbook triple loop, one multiply-add at a time.
    Naive,
    /// ringtrain's FMA/SIMD kernel on one thread.
    Cpu1,
    /// ringtrain's FMA/SIMD kernel on all threads.
    Cpu,
    /// ringtrain's WGSL kernel on the GPU wgpu picks (WGPU_BACKEND, WGPU_ADAPTER_NAME).
    Gpu,
}

impl Backend {
    /// How tables and plots name it, on a machine of `threads` CPU threads.
    pub fn label(self, threads: usize) -> String {
        match self {
            Backend::Naive => "naive loop".into(),
            Backend::Cpu1 => "CPU, 1 thread".into(),
            Backend::Cpu => format!("CPU, {threads} threads"),
            Backend::Gpu => "GPU (WGSL)".into(),
        }
    }
}

/// What [`compare_backends`] measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Gemm,
    Train,
    Allreduce,
}

/// The settings of a [`compare_backends`] run.
#[derive(Debug, Clone)]
pub struct ComparisonConfig {
    /// Matrix sizes n of the GEMM sweep (square products).
    pub sizes: Vec<usize>,
    /// Backends to measure; `None` is all of them, the GPU left out with a note where
    /// none opens (a GPU asked for by name that does not open is an error).
    pub backends: Option<Vec<Backend>>,
    pub parts: Vec<Part>,
    /// The naive loop only up to this n (it takes seconds beyond).
    pub naive_max: usize,
    /// Seconds of timed samples per measurement, at least.
    pub min_time: f64,
    /// Timed samples per measurement, at least (each after 2 warm-up calls).
    pub reps: usize,
    /// The GPU's FP32 peak in TFLOP/s; `None` looks it up from the adapter's name.
    pub peak_tflops: Option<f64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// The GEMMs' input precision and the training step's (see [`crate::Precision`]):
    /// the naive loop stays f32.
    pub precision: Precision,
}

impl Default for ComparisonConfig {
    fn default() -> Self {
        ComparisonConfig {
            sizes: vec![64, 128, 256, 512, 1024],
            backends: None,
            parts: vec![Part::Gemm, Part::Train, Part::Allreduce],
            naive_max: 512,
            min_time: 0.3,
            reps: 3,
            peak_tflops: None,
            progress: true,
            precision: Precision::F32,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GemmPoint {
    pub backend: Backend,
    pub n: usize,
    pub gflops_median: f64,
    pub gflops_best: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_peak: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepPoint {
    pub backend: Backend,
    pub ms_median: f64,
    pub samples_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReducePoint {
    pub peers: usize,
    pub bytes: usize,
    pub busbw_gbs: f64,
}

/// Every figure of a [`compare_backends`] run; `Display` prints them as tables with the
/// verdict, and the JSON (`write_json`) has the same fields.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub cpu: String,
    /// The GEMMs' and the training step's input precision.
    #[serde(serialize_with = "precision_name")]
    pub precision: Precision,
    pub threads: usize,
    pub gpu: Option<String>,
    /// How GPU kernels were timed: "timestamp queries" or "wall clock" (a clock around
    /// the calls and a device sync).
    pub gpu_timing: Option<&'static str>,
    pub peak_tflops: Option<f64>,
    /// The backends measured, in the order asked for.
    pub backends: Vec<Backend>,
    pub sizes: Vec<usize>,
    pub gemm: Vec<GemmPoint>,
    pub gpu_overtakes_cpu_at: Option<usize>,
    pub train_step: Vec<StepPoint>,
    pub allreduce: Vec<ReducePoint>,
    /// Said once before measuring (e.g. why the GPU was left out).
    #[serde(skip)]
    pub notes: Vec<String>,
}

fn precision_name<S: serde::Serializer>(p: &Precision, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

/// The MLP and batch of the training-step figure.
const STEP_BATCH: usize = 128;

/// FP32 peaks (TFLOP/s, non-tensor) from vendor datasheets, by a part of the adapter
/// name; PCIe variants first, as their names contain the SXM ones'.
const KNOWN_PEAKS: &[(&[&str], f64)] = &[
    (&["H100", "PCIe"], 51.2),
    (&["H100"], 66.9),
    (&["H200"], 66.9),
    (&["A100"], 19.5),
    (&["L40S"], 91.6),
    (&["L4"], 30.3),
    (&["A10"], 31.2),
    (&["T4"], 8.1),
    (&["V100"], 15.7),
    (&["RTX 4090"], 82.6),
    (&["RTX 3090"], 35.6),
];

/// The FP32 peak of a GPU known by `adapter` name, in TFLOP/s.
pub fn known_peak(adapter: &str) -> Option<f64> {
    KNOWN_PEAKS
        .iter()
        .find(|(parts, _)| parts.iter().all(|p| adapter.contains(p)))
        .map(|&(_, peak)| peak)
}

/// The CPU's model name, where the OS says; the architecture otherwise.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Measures what `config` asks on every backend it names. Every measurement warms up
/// first (2 calls), then takes samples until `min_time` seconds and `reps` samples have
/// passed; figures are medians (GEMM also has the best). GPU times come from timestamp
/// queries around the kernels where the adapter has them, otherwise from a wall clock
/// around the calls and a device sync. Every GEMM's result is checked.
pub fn compare_backends(config: &ComparisonConfig) -> Res<Comparison> {
    if config.sizes.is_empty() || config.sizes.contains(&0) {
        return Err("GEMM sizes must be at least 1".into());
    }
    let threads = rayon::current_num_threads();
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut notes = Vec::new();
    let mut backends = config
        .backends
        .clone()
        .unwrap_or_else(|| vec![Backend::Naive, Backend::Cpu1, Backend::Cpu, Backend::Gpu]);
    backends.dedup();
    let gpu = if backends.contains(&Backend::Gpu) {
        match GpuBackend::new() {
            Ok(g) => Some(g),
            Err(e) if config.backends.is_none() => {
                notes.push(format!("no GPU: {e}; measuring the CPU only"));
                backends.retain(|&b| b != Backend::Gpu);
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let peak = config
        .peak_tflops
        .or_else(|| gpu.as_ref().and_then(|g| known_peak(&g.adapter().name)));

    let wants = |p| config.parts.contains(&p);
    let gemm_runs: Vec<(Backend, usize)> = if wants(Part::Gemm) {
        backends
            .iter()
            .flat_map(|&b| config.sizes.iter().map(move |&n| (b, n)))
            .filter(|&(b, n)| b != Backend::Naive || n <= config.naive_max)
            .collect()
    } else {
        Vec::new()
    };
    let train_runs: Vec<Backend> = if wants(Part::Train) {
        backends
            .iter()
            .copied()
            .filter(|&b| b != Backend::Naive)
            .collect()
    } else {
        Vec::new()
    };
    let reduce_sizes: &[usize] = if wants(Part::Allreduce) {
        &[1 << 20, 16 << 20]
    } else {
        &[]
    };
    let total = gemm_runs.len() + train_runs.len() + reduce_sizes.len();
    let bar = if config.progress {
        ProgressBar::new(total as u64).with_style(ProgressStyle::with_template(
            "[{bar:30}] {pos}/{len} {msg}",
        )?)
    } else {
        ProgressBar::hidden()
    };

    let timing = Timing {
        reps: config.reps.max(1),
        min_time: config.min_time,
        one_thread: &one_thread,
        gpu: gpu.as_ref(),
        precision: config.precision,
    };
    let mut gemm = Vec::new();
    for &(backend, n) in &gemm_runs {
        bar.set_message(format!("GEMM {backend:?} n={n}"));
        let t = time_gemm(&timing, backend, n)?;
        let flops = 2.0 * (n as f64).powi(3);
        let (best, median) = (t.sorted[0], t.sorted[t.sorted.len() / 2]);
        gemm.push(GemmPoint {
            backend,
            n,
            gflops_median: flops / median / 1e9,
            gflops_best: flops / best / 1e9,
            fraction_of_peak: (backend == Backend::Gpu)
                .then_some(peak)
                .flatten()
                .map(|p| flops / median / (p * 1e12)),
        });
        bar.inc(1);
    }
    let mut train_step = Vec::new();
    for &backend in &train_runs {
        bar.set_message(format!("training step {backend:?}"));
        let seconds = time_train_step(&timing, backend)?;
        train_step.push(StepPoint {
            backend,
            ms_median: seconds * 1e3,
            samples_per_sec: STEP_BATCH as f64 / seconds,
        });
        bar.inc(1);
    }
    let mut allreduce = Vec::new();
    for &bytes in reduce_sizes {
        bar.set_message(format!("all-reduce {} MiB", bytes >> 20));
        let mut samples = time_all_reduce(
            ring(2)?,
            bytes / 4,
            timing.reps,
            Duration::from_secs_f64(config.min_time),
        )?;
        samples.sort_by(f64::total_cmp);
        let t = samples[samples.len() / 2];
        allreduce.push(ReducePoint {
            peers: 2,
            bytes,
            busbw_gbs: bus_bandwidth(bytes as f64 / t / 1e9, 2),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    Ok(Comparison {
        cpu: format!("{} ({}, {threads} threads)", cpu_name(), Simd::detect()),
        precision: config.precision,
        threads,
        gpu: gpu.as_ref().map(|g| g.adapter().to_string()),
        gpu_timing: gpu.as_ref().map(|g| {
            if g.has_timestamps() {
                "timestamp queries"
            } else {
                "wall clock"
            }
        }),
        peak_tflops: peak,
        gpu_overtakes_cpu_at: gpu_overtakes_cpu(&gemm),
        backends,
        sizes: config.sizes.clone(),
        gemm,
        train_step,
        allreduce,
        notes,
    })
}

impl Comparison {
    /// The GEMM figures of `backend`, as (n, median GFLOP/s), in the order measured.
    pub fn gemm_line(&self, backend: Backend) -> Vec<(usize, f64)> {
        self.gemm
            .iter()
            .filter(|p| p.backend == backend)
            .map(|p| (p.n, p.gflops_median))
            .collect()
    }

    /// Writes every figure as JSON, atomically (a temporary file, then a rename).
    pub fn write_json(&self, path: &Path) -> Res<()> {
        super::write_json(path, self)
    }

    /// The verdict: from which size the GPU beats the CPU on all threads, and so which
    /// to train on; `None` when the two were not both measured.
    pub fn verdict(&self) -> Option<String> {
        let largest = self.gemm.iter().map(|p| p.n).max()?;
        let at = |b: Backend| self.gemm.iter().find(|p| p.backend == b && p.n == largest);
        let ratio = at(Backend::Gpu)?.gflops_median / at(Backend::Cpu)?.gflops_median;
        Some(match self.gpu_overtakes_cpu_at {
            Some(n) => format!(
                "the GPU beats the CPU (all threads) from n = {n} on (at n = {largest}: \
                 {ratio:.2}x): train on the GPU"
            ),
            None => format!(
                "the GPU does not beat the CPU (all threads) at any measured size (at n = \
                 {largest}: {ratio:.2}x the CPU's GFLOP/s): train on the CPU"
            ),
        })
    }

    fn fmt_gemm(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_peak = self.peak_tflops.is_some() && self.backends.contains(&Backend::Gpu);
        writeln!(f, "GEMM C = A B, f32, square n: GFLOP/s (median)")?;
        write!(f, "{:>6}", "n")?;
        for &b in &self.backends {
            write!(f, " | {:>16}", b.label(self.threads))?;
        }
        if with_peak {
            write!(f, " | {:>12}", "GPU % peak")?;
        }
        writeln!(f)?;
        for &n in &self.sizes {
            write!(f, "{n:>6}")?;
            let point = |b: Backend| self.gemm.iter().find(|p| p.backend == b && p.n == n);
            for &b in &self.backends {
                let cell = point(b).map_or("-".into(), |p| format!("{:.2}", p.gflops_median));
                write!(f, " | {cell:>16}")?;
            }
            if with_peak {
                let cell = point(Backend::Gpu)
                    .and_then(|p| p.fraction_of_peak)
                    .map_or("-".into(), |x| format!("{:.1}%", 100.0 * x));
                write!(f, " | {cell:>12}")?;
            }
            writeln!(f)?;
        }
        match self.verdict() {
            Some(v) => writeln!(f, "\n{v}"),
            None if self.backends.contains(&Backend::Gpu) => {
                writeln!(
                    f,
                    "\n(measure both cpu and gpu at the same sizes to compare them)"
                )
            }
            None => Ok(()),
        }
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "CPU: {}", self.cpu)?;
        if self.precision.is_reduced() {
            writeln!(
                f,
                "GEMM inputs and training step: {} (sums in f32)",
                self.precision
            )?;
        }
        if let Some(gpu) = &self.gpu {
            let peak = self
                .peak_tflops
                .map_or("unknown (--peak-tflops)".into(), |p| format!("{p} TFLOP/s"));
            let timing = match self.gpu_timing {
                Some("wall clock") => "a synchronized wall clock",
                other => other.unwrap_or("-"),
            };
            writeln!(
                f,
                "GPU: {gpu} | kernels timed with {timing} | FP32 peak {peak}"
            )?;
        }
        if !self.gemm.is_empty() {
            writeln!(f)?;
            self.fmt_gemm(f)?;
        }
        if !self.train_step.is_empty() {
            writeln!(
                f,
                "\ntraining step, MLP 784-512-256-10, batch {STEP_BATCH}, SGD with momentum:"
            )?;
            for s in &self.train_step {
                writeln!(
                    f,
                    "  {:<16} {:8.2} ms  {:>9.0} samples/s",
                    s.backend.label(self.threads),
                    s.ms_median,
                    s.samples_per_sec
                )?;
            }
        }
        if !self.allreduce.is_empty() {
            writeln!(f, "\nall-reduce, in-process ring of 2 peers (threads):")?;
            for r in &self.allreduce {
                writeln!(
                    f,
                    "  {:>3} MiB  bus bandwidth {:6.2} GB/s",
                    r.bytes >> 20,
                    r.busbw_gbs
                )?;
            }
        }
        Ok(())
    }
}

/// A textbook GEMM: what the FMA/SIMD kernels are measured against.
fn naive_gemm(n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    for i in 0..n {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..n {
                acc += a[i * n + p] * b[p * n + j];
            }
            c[i * n + j] = acc;
        }
    }
}

/// How every figure is timed, and where.
struct Timing<'a> {
    /// Timed samples per figure, at least.
    reps: usize,
    /// Seconds of timed samples per figure, at least.
    min_time: f64,
    /// A pool of one thread, for the single-threaded CPU figures.
    one_thread: &'a rayon::ThreadPool,
    gpu: Option<&'a GpuBackend>,
    precision: Precision,
}

/// Seconds per GEMM of size `n` on `backend`, after checking the result.
fn time_gemm(timing: &Timing, backend: Backend, n: usize) -> Res<Timed> {
    let Timing {
        reps,
        min_time,
        one_thread,
        gpu,
        precision,
    } = *timing;
    let (a, b) = operands(n);
    let mut c = vec![0.0f32; n * n];
    let simd = Simd::detect();
    let inputs = if backend == Backend::Naive {
        Precision::F32
    } else {
        precision
    };
    let time_cpu = |c: &mut [f32]| {
        time_at_least(reps, 1, min_time, || {
            let t = Instant::now();
            let (a, b) = (
                MatRef::row_major(&a, n, n, false),
                MatRef::row_major(&b, n, n, false),
            );
            let none = Epilogue::default();
            gemm_mixed(simd, inputs, n, n, n, 1.0, a, b, 0.0, c, n, none)?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let timed = match backend {
        Backend::Naive => time_at_least(reps, 1, min_time, || {
            let t = Instant::now();
            naive_gemm(n, &a, &b, &mut c);
            std::hint::black_box(&mut c);
            Ok(t.elapsed().as_secs_f64())
        })?,
        // On the pool's thread, so the kernel runs single-threaded (errors cross the
        // thread boundary as text).
        Backend::Cpu1 => one_thread.install(|| time_cpu(&mut c).map_err(|e| e.to_string()))?,
        Backend::Cpu => time_cpu(&mut c)?,
        Backend::Gpu => {
            let gpu = gpu.ok_or("no GPU")?;
            let (ab, bb) = (gpu.upload(&a)?, gpu.upload(&b)?);
            let mut cb = gpu.alloc(n * n)?;
            let spec = GemmSpec::new(n, n, n, false, false).with_precision(inputs);
            // Enough products per sample that launch overhead does not dominate small n.
            let calls = (((1u64 << 27) / (n as u64).pow(3)).clamp(1, 64)) as u32;
            let timed = time_at_least(reps, calls, min_time, || {
                let start = Instant::now();
                let ((), on_gpu) = gpu.timed(|| {
                    for _ in 0..calls {
                        gpu.gemm(&spec, &ab, &bb, &mut cb)?;
                    }
                    gpu.synchronize()
                })?;
                let t = on_gpu.unwrap_or_else(|| start.elapsed());
                Ok(t.as_secs_f64() / f64::from(calls))
            })?;
            c = gpu.download(&cb)?;
            timed
        }
    };
    // The last timed product's result, against the product of the rounded inputs.
    let round = |v: &[f32]| v.iter().map(|&x| inputs.round(x)).collect::<Vec<_>>();
    verify(n, &round(&a), &round(&b), &c)?;
    Ok(timed)
}

/// Median seconds of one MLP training step on `backend`.
fn time_train_step(timing: &Timing, backend: Backend) -> Res<f64> {
    let Timing {
        reps,
        min_time,
        one_thread,
        gpu,
        precision,
    } = *timing;
    let device = match backend {
        Backend::Gpu => {
            gpu.ok_or("no GPU")?;
            Device::gpu()?
        }
        _ => Device::cpu(),
    };
    let mut rng = rng_from_seed(0);
    let model = mlp(784, &[512, 256], 10, Activation::Relu, &device, &mut rng)?;
    let mut opt = Sgd::new(
        model.parameters(),
        SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            ..SgdConfig::default()
        },
    )?;
    let x = Tensor::randn(0.0, 1.0, (STEP_BATCH, 784), &mut rng, &device)?;
    let labels: Vec<u32> = (0..STEP_BATCH as u32).map(|i| i % 10).collect();
    let mut step = || -> Res<f64> {
        let t = Instant::now();
        let loss = with_precision(precision, || model.forward(&x)?.cross_entropy(&labels))?;
        opt.step(&loss.backward()?)?;
        // Reading the loss waits for the device: a step is done when its loss is known.
        loss.to_scalar()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let timed = match backend {
        Backend::Cpu1 => one_thread
            .install(|| time_at_least(reps, 1, min_time, &mut step).map_err(|e| e.to_string()))?,
        _ => time_at_least(reps, 1, min_time, &mut step)?,
    };
    Ok(timed.sorted[timed.sorted.len() / 2])
}

/// The smallest measured n from which the GPU beats the CPU on all threads at every
/// larger measured n too.
fn gpu_overtakes_cpu(gemm: &[GemmPoint]) -> Option<usize> {
    let at = |b: Backend, n: usize| {
        gemm.iter()
            .find(|p| p.backend == b && p.n == n)
            .map(|p| p.gflops_median)
    };
    let mut sizes: Vec<usize> = gemm.iter().map(|p| p.n).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let wins: Vec<(usize, bool)> = sizes
        .iter()
        .filter_map(|&n| Some((n, at(Backend::Gpu, n)? > at(Backend::Cpu, n)?)))
        .collect();
    let first_loss_from_end = wins.iter().rposition(|&(_, w)| !w);
    match first_loss_from_end {
        None => wins.first().map(|&(n, _)| n),
        Some(i) => wins.get(i + 1).map(|&(n, _)| n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(backend: Backend, n: usize, gflops: f64) -> GemmPoint {
        GemmPoint {
            backend,
            n,
            gflops_median: gflops,
            gflops_best: gflops,
            fraction_of_peak: None,
        }
    }

    #[test]
    fn the_gpu_overtakes_from_the_first_size_after_its_last_loss() {
        let gemm = [
            point(Backend::Cpu, 64, 10.0),
            point(Backend::Gpu, 64, 1.0),
            point(Backend::Cpu, 256, 10.0),
            point(Backend::Gpu, 256, 20.0),
            point(Backend::Cpu, 512, 10.0),
            point(Backend::Gpu, 512, 5.0),
            point(Backend::Cpu, 1024, 10.0),
            point(Backend::Gpu, 1024, 50.0),
        ];
        assert_eq!(gpu_overtakes_cpu(&gemm), Some(1024));
        assert_eq!(gpu_overtakes_cpu(&gemm[..4]), Some(256));
        assert_eq!(gpu_overtakes_cpu(&gemm[..2]), None);
        assert_eq!(gpu_overtakes_cpu(&gemm[2..4]), Some(256));
    }

    #[test]
    fn known_peaks_prefer_the_pcie_variant() {
        assert_eq!(known_peak("NVIDIA H100 PCIe"), Some(51.2));
        assert_eq!(known_peak("NVIDIA H100 80GB HBM3"), Some(66.9));
        assert_eq!(known_peak("llvmpipe (LLVM 15.0.7, 256 bits)"), None);
    }
}
