//! Single-precision GEMM throughput of the WGSL kernel on a GPU adapter, by size.
//!
//! Protocol (bench/burn-matmul times burn's wgpu matmul the same way, so the two compare
//! number for number): 2 warm-up samples, then samples until at least 3 and `--min-time`
//! seconds have passed; a sample is `--calls-per-sample` back-to-back GEMMs followed by a
//! device sync, so per-call times include the GPU work and not one host round trip each.
//!
//!     cargo run --release --example gpu_gemm -- --sizes 1024,2048,4096 --peak-tflops 51
//!     WGPU_BACKEND=vulkan cargo run --release --example gpu_gemm -- --sizes 128,256,512

use clap::Parser;
use ringtrain::kernels::gpu::GpuBackend;
use ringtrain::kernels::{Backend, GemmSpec};
use serde::Serialize;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Time ringtrain's WGSL GEMM on square matrices")]
struct Args {
    /// Matrix sizes n (C = A B with n x n operands).
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096")]
    sizes: Vec<usize>,
    /// Which adapter (see the list printed at start; 0 is the best).
    #[arg(long, default_value_t = 0)]
    adapter: usize,
    /// Seconds of timed samples per size (at least 3 samples).
    #[arg(long, default_value_t = 0.5)]
    min_time: f64,
    /// GEMMs per timed sample, between two syncs.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    calls_per_sample: u32,
    /// The adapter's FP32 peak in TFLOP/s, to report each result as a fraction of it.
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Write the results as JSON (the schema scripts/gpu_gemm_report.py reads).
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    n: usize,
    gflops: f64,
    gflops_median: f64,
    best_ms: f64,
    median_ms: f64,
    samples: usize,
    fraction_of_peak: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    library: String,
    adapter: String,
    calls_per_sample: u32,
    gemm: Vec<Row>,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The deterministic operands bench/burn-matmul uses too.
fn operands(n: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..n * n)
        .map(|i| ((i * 7 + 1) % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b = (0..n * n)
        .map(|i| ((i * 5 + 2) % 11) as f32 * 0.01 - 0.05)
        .collect();
    (a, b)
}

/// Checks the first and last rows of `c` against an f64 reference.
fn verify(n: usize, a: &[f32], b: &[f32], c: &[f32]) -> Result<(), Box<dyn Error>> {
    for i in [0, n - 1] {
        for j in (0..n).step_by((n / 7).max(1)) {
            let want: f64 = (0..n)
                .map(|p| a[i * n + p] as f64 * b[p * n + j] as f64)
                .sum();
            let got = c[i * n + j] as f64;
            if (got - want).abs() > 1e-3 * want.abs().max(1e-2) {
                return Err(format!("n={n}: C[{i},{j}] = {got}, want {want}").into());
            }
        }
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    for (i, a) in GpuBackend::adapters()?.iter().enumerate() {
        println!("adapter {i}: {a}");
    }
    let gpu = GpuBackend::with_adapter(args.adapter)?;
    println!("timing on {}", gpu.adapter());
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let (a, b) = operands(n);
        let (ab, bb) = (gpu.upload(&a)?, gpu.upload(&b)?);
        let mut c = gpu.alloc(n * n)?;
        let spec = GemmSpec::new(n, n, n, false, false);
        let mut sample = || -> Result<f64, Box<dyn Error>> {
            let start = Instant::now();
            for _ in 0..args.calls_per_sample {
                gpu.gemm(&spec, &ab, &bb, &mut c)?;
            }
            gpu.synchronize()?;
            Ok(start.elapsed().as_secs_f64() / f64::from(args.calls_per_sample))
        };
        for _ in 0..2 {
            sample()?;
        }
        let (mut times, mut total) = (Vec::new(), 0.0);
        while times.len() < 5000 && (times.len() < 3 || total < args.min_time) {
            let dt = sample()?;
            times.push(dt);
            total += dt * f64::from(args.calls_per_sample);
        }
        verify(n, &a, &b, &gpu.download(&c)?)?;
        times.sort_by(f64::total_cmp);
        let (best, median) = (times[0], times[times.len() / 2]);
        let flops = 2.0 * (n as f64).powi(3);
        let row = Row {
            n,
            gflops: flops / best / 1e9,
            gflops_median: flops / median / 1e9,
            best_ms: best * 1e3,
            median_ms: median * 1e3,
            samples: times.len(),
            fraction_of_peak: args.peak_tflops.map(|p| flops / best / (p * 1e12)),
        };
        let peak = row
            .fraction_of_peak
            .map(|f| format!(", {:.1}% of peak", 100.0 * f))
            .unwrap_or_default();
        println!(
            "  ringtrain-wgsl n={n:5}  {:8.1} GFLOP/s (median {:.1}{peak})",
            row.gflops, row.gflops_median
        );
        rows.push(row);
    }
    let report = Report {
        library: format!("ringtrain {} (WGSL)", env!("CARGO_PKG_VERSION")),
        adapter: gpu.adapter().to_string(),
        calls_per_sample: args.calls_per_sample,
        gemm: rows,
    };
    if let Some(path) = &args.json_out {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&report)?)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}
