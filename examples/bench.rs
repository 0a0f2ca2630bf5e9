//! Which backend should this machine train on? Measures, side by side in one run
//! (`ringtrain::bench::compare_backends`):
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
//! seconds and --reps samples have passed, and reports the median (best in the JSON).

#[path = "support/bench_plot.rs"]
mod bench_plot;

use clap::Parser;
use ringtrain::bench::{compare_backends, Backend, ComparisonConfig, Part};
use ringtrain::Precision;
use std::path::PathBuf;

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
    backends: Option<Vec<Backend>>,
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
    /// The GEMMs' input precision and the training step's: f32, or bf16 / f16 rounded
    /// inputs summed in f32 (the naive loop stays f32).
    #[arg(long, default_value = "f32")]
    dtype: Precision,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.sizes.is_empty() || args.sizes.contains(&0) {
        return Err("--sizes: give sizes of at least 1".into());
    }
    let config = ComparisonConfig {
        sizes: args.sizes.clone(),
        backends: args.backends.clone(),
        parts: args.parts.clone(),
        naive_max: args.naive_max,
        min_time: args.min_time,
        reps: args.reps as usize,
        peak_tflops: args.peak_tflops,
        progress: true,
        precision: args.dtype,
    };
    let report = compare_backends(&config)?;
    for note in &report.notes {
        println!("{note}");
    }
    print!("{report}");
    if !report.gemm.is_empty() {
        let title = format!(
            "GEMM, {} | CPU: {}{}",
            report.precision,
            report.cpu,
            report
                .gpu
                .as_ref()
                .map(|g| format!(" | GPU: {g}"))
                .unwrap_or_default()
        );
        let lines: Vec<bench_plot::Line> = report
            .backends
            .iter()
            .map(|&b| bench_plot::Line {
                label: b.label(report.threads),
                points: report.gemm_line(b),
            })
            .filter(|l| !l.points.is_empty())
            .collect();
        bench_plot::write_svg(&args.svg_out, &title, &lines)?;
        println!("\nplot: {}", args.svg_out.display());
    }
    if let Some(path) = &args.json_out {
        report.write_json(path)?;
    }
    Ok(())
}
