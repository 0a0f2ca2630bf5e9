//! Single-precision GEMM throughput of the WGSL kernel on a GPU adapter, by size.
//!
//! Protocol (`ringtrain::bench::protocol`, shared with bench/burn-matmul, which
//! times burn's wgpu matmul the same way): 2 warm-up samples, then samples until at least
//! 3 and `--min-time` seconds have passed; a sample is `--calls-per-sample` back-to-back
//! GEMMs followed by a device sync, so per-call times include the GPU work and not one
//! host round trip each.
//!
//!     cargo run --release --example gpu_gemm -- --sizes 1024,2048,4096 --peak-tflops 51
//!     WGPU_BACKEND=vulkan cargo run --release --example gpu_gemm -- --sizes 128,256,512

use clap::Parser;
use ringtrain::bench::protocol::{operands, time_samples, verify, Report, Row};
use ringtrain::kernels::gpu::GpuBackend;
use ringtrain::kernels::{Backend, GemmSpec};
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

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
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
        let timed = time_samples(args.calls_per_sample, args.min_time, || {
            let start = Instant::now();
            for _ in 0..args.calls_per_sample {
                gpu.gemm(&spec, &ab, &bb, &mut c)?;
            }
            gpu.synchronize()?;
            Ok(start.elapsed().as_secs_f64() / f64::from(args.calls_per_sample))
        })?;
        verify(n, &a, &b, &gpu.download(&c)?)?;
        let row = Row::new(n, &timed, args.peak_tflops);
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
        report.write(path)?;
    }
    Ok(())
}
