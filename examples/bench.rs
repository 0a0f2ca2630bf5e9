//! Which backend should this machine train on? Measures, side by side in one run:
//!
//! - GEMM (C = A B, f32, square n) over a sweep of sizes on every backend: a naive
//!   scalar loop, ringtrain's FMA/SIMD CPU kernel on 1 thread and on all threads, and
//!   the WGSL kernel on the GPU wgpu picks; GFLOP/s, and for the GPU the fraction of its
//!   FP32 peak where known (or given with --peak-tflops);
//! - one MLP training step (784-512-256-10, batch 128, SGD with momentum) per backend;
//! - the in-process ring all-reduce (bus bandwidth, 2 peers);
//!
//! then prints the tables, the size from which the GPU beats the CPU, and writes an SVG
//! plot of GFLOP/s against size, one line per backend.
//!
//!     cargo run --release --example bench
//!     cargo run --release --example bench -- --sizes 256,1024,4096 --backends cpu,gpu --svg-out gemm.svg
//!
//! Every measurement warms up first (2 calls), then takes samples until --min-time
//! seconds and --reps samples have passed, and reports the median (best in the JSON). GPU
//! times come from timestamp queries around the kernels where the adapter has them,
//! otherwise from a wall clock around the calls and a device sync.

#[path = "support/bench_plot.rs"]
mod bench_plot;
#[path = "../benches/support/collective.rs"]
mod collective;
#[path = "support/gemm_protocol.rs"]
mod gemm_protocol;

use clap::{Parser, ValueEnum};
use gemm_protocol::{operands, time_at_least, verify, Res, Timed};
use indicatif::{ProgressBar, ProgressStyle};
use ringtrain::comm::ring;
use ringtrain::kernels::cpu::gemm::{sgemm, MatRef};
use ringtrain::kernels::gpu::GpuBackend;
use ringtrain::kernels::{Backend as _, GemmSpec};
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Which {
    /// A textbook triple loop, one multiply-add at a time.
    Naive,
    /// ringtrain's FMA/SIMD kernel on one thread.
    Cpu1,
    /// ringtrain's FMA/SIMD kernel on all threads.
    Cpu,
    /// ringtrain's WGSL kernel on the GPU wgpu picks (WGPU_BACKEND, WGPU_ADAPTER_NAME).
    Gpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Gemm,
    Train,
    Allreduce,
}

#[derive(Parser, Debug)]
#[command(
    about = "Measure GEMM, a training step and the all-reduce on every backend of this machine"
)]
struct Args {
    /// Matrix sizes n of the GEMM sweep.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512,1024")]
    sizes: Vec<usize>,
    /// Backends to measure [default: all; the GPU is skipped with a note if none opens].
    #[arg(long, value_delimiter = ',')]
    backends: Option<Vec<Which>>,
    /// What to measure.
    #[arg(long, value_delimiter = ',', default_value = "gemm,train,allreduce")]
    parts: Vec<Part>,
    /// The naive loop only up to this n (it takes seconds beyond).
    #[arg(long, default_value_t = 512)]
    naive_max: usize,
    /// Seconds of timed samples per measurement.
    #[arg(long, default_value_t = 0.3)]
    min_time: f64,
    /// Timed samples per measurement, at least (each after 2 warm-up calls).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=5000))]
    reps: u32,
    /// The GPU's FP32 peak in TFLOP/s [default: looked up from the adapter's name].
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Where to write the plot.
    #[arg(long, default_value = "bench.svg")]
    svg_out: PathBuf,
    /// Also write every figure as JSON.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Serialize)]
struct GemmPoint {
    backend: Which,
    n: usize,
    gflops_median: f64,
    gflops_best: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fraction_of_peak: Option<f64>,
}

#[derive(Serialize)]
struct StepPoint {
    backend: Which,
    ms_median: f64,
    samples_per_sec: f64,
}

#[derive(Serialize)]
struct ReducePoint {
    peers: usize,
    bytes: usize,
    busbw_gbs: f64,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    threads: usize,
    gpu: Option<String>,
    gpu_timing: Option<&'static str>,
    peak_tflops: Option<f64>,
    gemm: Vec<GemmPoint>,
    gpu_overtakes_cpu_at: Option<usize>,
    train_step: Vec<StepPoint>,
    allreduce: Vec<ReducePoint>,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

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

fn known_peak(adapter: &str) -> Option<f64> {
    KNOWN_PEAKS
        .iter()
        .find(|(parts, _)| parts.iter().all(|p| adapter.contains(p)))
        .map(|&(_, peak)| peak)
}

fn run(args: &Args) -> Res<()> {
    if args.sizes.is_empty() || args.sizes.contains(&0) {
        return Err("--sizes: give sizes of at least 1".into());
    }
    let threads = rayon::current_num_threads();
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let mut backends = args
        .backends
        .clone()
        .unwrap_or_else(|| vec![Which::Naive, Which::Cpu1, Which::Cpu, Which::Gpu]);
    backends.dedup();
    let gpu = if backends.contains(&Which::Gpu) {
        match GpuBackend::new() {
            Ok(g) => Some(g),
            Err(e) if args.backends.is_none() => {
                println!("no GPU: {e}; measuring the CPU only");
                backends.retain(|&b| b != Which::Gpu);
                None
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let peak = args
        .peak_tflops
        .or_else(|| gpu.as_ref().and_then(|g| known_peak(&g.adapter().name)));
    let cpu = format!(
        "{} ({}, {threads} threads)",
        cpu_name(),
        ringtrain::Simd::detect().isa()
    );
    println!("CPU: {cpu}");
    if let Some(g) = &gpu {
        println!(
            "GPU: {} | kernels timed with {} | FP32 peak {}",
            g.adapter(),
            if g.has_timestamps() {
                "timestamp queries"
            } else {
                "a synchronized wall clock"
            },
            peak.map_or("unknown (--peak-tflops)".into(), |p| format!("{p} TFLOP/s"))
        );
    }

    let do_part = |p| args.parts.contains(&p);
    let gemm_runs: Vec<(Which, usize)> = if do_part(Part::Gemm) {
        backends
            .iter()
            .flat_map(|&b| args.sizes.iter().map(move |&n| (b, n)))
            .filter(|&(b, n)| b != Which::Naive || n <= args.naive_max)
            .collect()
    } else {
        Vec::new()
    };
    let train_runs: Vec<Which> = if do_part(Part::Train) {
        backends
            .iter()
            .copied()
            .filter(|&b| b != Which::Naive)
            .collect()
    } else {
        Vec::new()
    };
    let reduce_sizes: &[usize] = if do_part(Part::Allreduce) {
        &[1 << 20, 16 << 20]
    } else {
        &[]
    };
    let bar = ProgressBar::new((gemm_runs.len() + train_runs.len() + reduce_sizes.len()) as u64)
        .with_style(ProgressStyle::with_template(
            "[{bar:30}] {pos}/{len} {msg}",
        )?);

    let timing = Timing {
        reps: args.reps as usize,
        min_time: args.min_time,
        one_thread: &one_thread,
        gpu: gpu.as_ref(),
    };
    let mut gemm = Vec::new();
    for &(which, n) in &gemm_runs {
        bar.set_message(format!("GEMM {which:?} n={n}"));
        let t = time_gemm(&timing, which, n)?;
        let flops = 2.0 * (n as f64).powi(3);
        let (best, median) = (t.sorted[0], t.sorted[t.sorted.len() / 2]);
        gemm.push(GemmPoint {
            backend: which,
            n,
            gflops_median: flops / median / 1e9,
            gflops_best: flops / best / 1e9,
            fraction_of_peak: (which == Which::Gpu)
                .then_some(peak)
                .flatten()
                .map(|p| flops / median / (p * 1e12)),
        });
        bar.inc(1);
    }
    let mut steps = Vec::new();
    for &which in &train_runs {
        bar.set_message(format!("training step {which:?}"));
        let seconds = time_train_step(&timing, which)?;
        steps.push(StepPoint {
            backend: which,
            ms_median: seconds * 1e3,
            samples_per_sec: 128.0 / seconds,
        });
        bar.inc(1);
    }
    let mut reduce = Vec::new();
    for &bytes in reduce_sizes {
        bar.set_message(format!("all-reduce {} MiB", bytes >> 20));
        let samples = collective::time_all_reduce(
            ring(2)?,
            bytes / 4,
            args.reps as usize,
            Duration::from_secs_f64(args.min_time),
        )?;
        let t = median(samples);
        reduce.push(ReducePoint {
            peers: 2,
            bytes,
            busbw_gbs: collective::bus_bandwidth(bytes as f64 / t / 1e9, 2),
        });
        bar.inc(1);
    }
    bar.finish_and_clear();

    let overtakes = gpu_overtakes_cpu(&gemm);
    print_gemm(&gemm, &backends, &args.sizes, threads, peak.is_some());
    if backends.contains(&Which::Gpu) && !gemm.is_empty() {
        println!("{}", describe_overtake(&gemm, overtakes));
    }
    if !steps.is_empty() {
        println!("\ntraining step, MLP 784-512-256-10, batch 128, SGD with momentum:");
        for s in &steps {
            println!(
                "  {:<16} {:8.2} ms  {:>9.0} samples/s",
                label(s.backend, threads),
                s.ms_median,
                s.samples_per_sec
            );
        }
    }
    if !reduce.is_empty() {
        println!("\nall-reduce, in-process ring of 2 peers (threads):");
        for r in &reduce {
            println!(
                "  {:>3} MiB  bus bandwidth {:6.2} GB/s",
                r.bytes >> 20,
                r.busbw_gbs
            );
        }
    }
    if !gemm.is_empty() {
        let title = format!(
            "GEMM, f32 | CPU: {cpu}{}",
            gpu.as_ref()
                .map(|g| format!(" | GPU: {}", g.adapter().name))
                .unwrap_or_default()
        );
        let lines: Vec<bench_plot::Line> = backends
            .iter()
            .map(|&b| bench_plot::Line {
                label: label(b, threads),
                points: gemm
                    .iter()
                    .filter(|p| p.backend == b)
                    .map(|p| (p.n, p.gflops_median))
                    .collect(),
            })
            .filter(|l| !l.points.is_empty())
            .collect();
        bench_plot::write_svg(&args.svg_out, &title, &lines)?;
        println!("\nplot: {}", args.svg_out.display());
    }
    if let Some(path) = &args.json_out {
        let report = Report {
            cpu,
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
            gemm,
            gpu_overtakes_cpu_at: overtakes,
            train_step: steps,
            allreduce: reduce,
        };
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&report)?)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn label(b: Which, threads: usize) -> String {
    match b {
        Which::Naive => "naive loop".into(),
        Which::Cpu1 => "CPU, 1 thread".into(),
        Which::Cpu => format!("CPU, {threads} threads"),
        Which::Gpu => "GPU (WGSL)".into(),
    }
}

/// The CPU's model name, where the OS says.
fn cpu_name() -> String {
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
}

/// Seconds per GEMM of size `n` on `which`, after checking the result.
fn time_gemm(timing: &Timing, which: Which, n: usize) -> Res<Timed> {
    let Timing {
        reps,
        min_time,
        one_thread,
        gpu,
    } = *timing;
    let (a, b) = operands(n);
    let mut c = vec![0.0f32; n * n];
    let simd = ringtrain::Simd::detect();
    let time_cpu = |c: &mut [f32]| {
        time_at_least(reps, 1, min_time, || {
            let t = Instant::now();
            sgemm(
                simd,
                n,
                n,
                n,
                1.0,
                MatRef::row_major(&a, n, n, false),
                MatRef::row_major(&b, n, n, false),
                0.0,
                c,
                n,
            )?;
            Ok(t.elapsed().as_secs_f64())
        })
    };
    let timed = match which {
        Which::Naive => time_at_least(reps, 1, min_time, || {
            let t = Instant::now();
            naive_gemm(n, &a, &b, &mut c);
            std::hint::black_box(&mut c);
            Ok(t.elapsed().as_secs_f64())
        })?,
        // On the pool's thread, so the kernel runs single-threaded (errors cross the
        // thread boundary as text).
        Which::Cpu1 => one_thread.install(|| time_cpu(&mut c).map_err(|e| e.to_string()))?,
        Which::Cpu => time_cpu(&mut c)?,
        Which::Gpu => {
            let gpu = gpu.ok_or("no GPU")?;
            let (ab, bb) = (gpu.upload(&a)?, gpu.upload(&b)?);
            let mut cb = gpu.alloc(n * n)?;
            let spec = GemmSpec::new(n, n, n, false, false);
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
    // The last timed product's result.
    verify(n, &a, &b, &c)?;
    Ok(timed)
}

/// Median seconds of one MLP training step on `which`.
fn time_train_step(timing: &Timing, which: Which) -> Res<f64> {
    let Timing {
        reps,
        min_time,
        one_thread,
        gpu,
    } = *timing;
    let device = match which {
        Which::Gpu => {
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
    let x = Tensor::randn(0.0, 1.0, (128, 784), &mut rng, &device)?;
    let labels: Vec<u32> = (0..128).map(|i| i % 10).collect();
    let mut step = || -> Res<f64> {
        let t = Instant::now();
        let loss = model.forward(&x)?.cross_entropy(&labels)?;
        opt.step(&loss.backward()?)?;
        // Reading the loss waits for the device: a step is done when its loss is known.
        loss.to_scalar()?;
        Ok(t.elapsed().as_secs_f64())
    };
    let timed = match which {
        Which::Cpu1 => one_thread
            .install(|| time_at_least(reps, 1, min_time, &mut step).map_err(|e| e.to_string()))?,
        _ => time_at_least(reps, 1, min_time, &mut step)?,
    };
    Ok(timed.sorted[timed.sorted.len() / 2])
}

/// The smallest measured n from which the GPU beats the CPU on all threads at every
/// larger measured n too.
fn gpu_overtakes_cpu(gemm: &[GemmPoint]) -> Option<usize> {
    let at = |b: Which, n: usize| {
        gemm.iter()
            .find(|p| p.backend == b && p.n == n)
            .map(|p| p.gflops_median)
    };
    let mut sizes: Vec<usize> = gemm.iter().map(|p| p.n).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let wins: Vec<(usize, bool)> = sizes
        .iter()
        .filter_map(|&n| Some((n, at(Which::Gpu, n)? > at(Which::Cpu, n)?)))
        .collect();
    let first_loss_from_end = wins.iter().rposition(|&(_, w)| !w);
    match first_loss_from_end {
        None => wins.first().map(|&(n, _)| n),
        Some(i) => wins.get(i + 1).map(|&(n, _)| n),
    }
}

fn describe_overtake(gemm: &[GemmPoint], at: Option<usize>) -> String {
    let largest = gemm.iter().map(|p| p.n).max().unwrap_or(0);
    let ratio = |n| {
        let g = gemm.iter().find(|p| p.backend == Which::Gpu && p.n == n)?;
        let c = gemm.iter().find(|p| p.backend == Which::Cpu && p.n == n)?;
        Some(g.gflops_median / c.gflops_median)
    };
    match (at, ratio(largest)) {
        (Some(n), Some(r)) => format!(
            "\nthe GPU beats the CPU (all threads) from n = {n} on (at n = {largest}: {r:.2}x): \
             train on the GPU"
        ),
        (None, Some(r)) => format!(
            "\nthe GPU does not beat the CPU (all threads) at any measured size (at n = \
             {largest}: {r:.2}x the CPU's GFLOP/s): train on the CPU"
        ),
        _ => "\n(measure both cpu and gpu at the same sizes to compare them)".into(),
    }
}

fn print_gemm(
    gemm: &[GemmPoint],
    backends: &[Which],
    sizes: &[usize],
    threads: usize,
    with_peak: bool,
) {
    if gemm.is_empty() {
        return;
    }
    println!("\nGEMM C = A B, f32, square n: GFLOP/s (median)");
    let mut header = format!("{:>6}", "n");
    for &b in backends {
        header += &format!(" | {:>16}", label(b, threads));
    }
    if with_peak && backends.contains(&Which::Gpu) {
        header += &format!(" | {:>12}", "GPU % peak");
    }
    println!("{header}");
    for &n in sizes {
        let mut line = format!("{n:>6}");
        for &b in backends {
            let cell = gemm
                .iter()
                .find(|p| p.backend == b && p.n == n)
                .map_or("-".into(), |p| format!("{:.2}", p.gflops_median));
            line += &format!(" | {cell:>16}");
        }
        if with_peak && backends.contains(&Which::Gpu) {
            let cell = gemm
                .iter()
                .find(|p| p.backend == Which::Gpu && p.n == n)
                .and_then(|p| p.fraction_of_peak)
                .map_or("-".into(), |f| format!("{:.1}%", 100.0 * f));
            line += &format!(" | {cell:>12}");
        }
        println!("{line}");
    }
}
