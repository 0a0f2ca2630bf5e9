//! Single-precision GEMM throughput of the CPU backend, timed exactly as
//! scripts/peers.py times numpy/OpenBLAS (2 warm-up calls, then single calls until 0.5 s
//! and 3 calls have passed; best and median), so the two can be compared number for
//! number. scripts/bench_all.sh runs both in interleaved rounds.
//!
//!     cargo run --release --example sgemm -- --threads 1 --json-out sgemm.json
//!     cargo run --release --example sgemm -- --shapes 1024x192x64/nt,192x64x1024/tn
//!     cargo run --release --example sgemm -- --dtype bf16
//!
//! `--shapes` takes `MxNxK` products, optionally `/ab` with `a`, `b` each `n` (row-major)
//! or `t` (transposed): the layouts a layer's forward (`/nt`, X W^T) and backward (`/nn`
//! for dX, `/tn` for dW) pass to the GEMM. `--dtype bf16|f16` times products whose inputs
//! are rounded to that format and summed in f32 (`vdpbf16ps` on AVX512-BF16), as mixed
//! precision computes them.

use clap::Parser;
use ringtrain::kernels::cpu::gemm::{gemm_mixed, Epilogue, MatRef};
use ringtrain::kernels::cpu::{CpuBackend, Simd};
use ringtrain::kernels::{Backend, Precision};
use serde::Serialize;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Time ringtrain's CPU SGEMM")]
struct Args {
    /// Matrix sizes n (C = A B with n x n operands).
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,1536,2048")]
    sizes: Vec<usize>,
    /// Products `MxNxK[/ab]` to time instead of the squares (see the module docs).
    #[arg(long, value_delimiter = ',', value_parser = parse_shape)]
    shapes: Vec<Product>,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    threads: u32,
    /// The inputs' format: f32, or bf16 / f16 with f32 accumulation.
    #[arg(long, default_value = "f32")]
    dtype: Precision,
    /// Seconds of timed calls per size (at least 3 calls).
    #[arg(long, default_value_t = 0.5)]
    min_time: f64,
    /// Write the results as JSON (the schema scripts/bench_report.py reads).
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// C (m x n) = op(A) (m x k) op(B) (k x n).
#[derive(Clone, Copy, Debug, Serialize)]
struct Product {
    m: usize,
    n: usize,
    k: usize,
    a_transposed: bool,
    b_transposed: bool,
}

fn parse_shape(text: &str) -> Result<Product, String> {
    let bad = || format!("{text:?} is not MxNxK[/ab] (e.g. 1024x192x64/nt)");
    let (dims, layout) = text.split_once('/').unwrap_or((text, "nn"));
    let dims: Vec<usize> = dims
        .split('x')
        .map(|d| d.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let &[m, n, k] = dims.as_slice() else {
        return Err(bad());
    };
    let transposed = |c: char| match c {
        'n' => Ok(false),
        't' => Ok(true),
        _ => Err(bad()),
    };
    let mut flags = layout.chars();
    let (Some(a), Some(b), None) = (flags.next(), flags.next(), flags.next()) else {
        return Err(bad());
    };
    Ok(Product {
        m,
        n,
        k,
        a_transposed: transposed(a)?,
        b_transposed: transposed(b)?,
    })
}

#[derive(Serialize)]
struct Row {
    #[serde(skip_serializing_if = "Option::is_none")]
    product: Option<Product>,
    n: usize,
    gflops: f64,
    gflops_median: f64,
    best_ms: f64,
    median_ms: f64,
    reps: usize,
}

#[derive(Serialize)]
struct Report {
    isa: String,
    dtype: String,
    threads: u32,
    gemm: Vec<Row>,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    // The global pool, so single-threaded calls run right here on the main thread, as
    // numpy's do, with no hand-off to a pool thread.
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads as usize)
        .build_global()?;
    let simd = Simd::detect();
    let cpu = CpuBackend::with_simd(simd);
    let products: Vec<(Product, bool)> = if args.shapes.is_empty() {
        let square = |n| Product {
            m: n,
            n,
            k: n,
            a_transposed: false,
            b_transposed: false,
        };
        args.sizes.iter().map(|&n| (square(n), false)).collect()
    } else {
        args.shapes.iter().map(|&p| (p, true)).collect()
    };
    let mut rows = Vec::new();
    for (p, named) in products {
        let Product { m, n, k, .. } = p;
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7 + 1) % 13) as f32 * 0.01 - 0.06)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 5 + 2) % 11) as f32 * 0.01 - 0.05)
            .collect();
        // The operands as the CPU backend holds a model's tensors (large ones on huge
        // pages, as numpy's arrays are), not as plain `Vec`s.
        let (a, b) = (cpu.upload(&a)?, cpu.upload(&b)?);
        let mut c = cpu.zeros(m * n)?;
        let mut call = || {
            let (ar, br) = (
                MatRef::row_major(&a, m, k, p.a_transposed),
                MatRef::row_major(&b, k, n, p.b_transposed),
            );
            let none = Epilogue::default();
            gemm_mixed(simd, args.dtype, m, n, k, 1.0, ar, br, 0.0, &mut c, n, none)
        };
        let min_time = args.min_time;
        let mut timed = move || -> Result<Vec<f64>, String> {
            for _ in 0..2 {
                call().map_err(|e| e.to_string())?;
            }
            let (mut times, mut total) = (Vec::new(), 0.0);
            while times.len() < 5000 && (times.len() < 3 || total < min_time) {
                let start = Instant::now();
                call().map_err(|e| e.to_string())?;
                let dt = start.elapsed().as_secs_f64();
                times.push(dt);
                total += dt;
            }
            Ok(times)
        };
        // On several threads, the calls run as a training step runs its ops: on a pool
        // thread, the other workers spinning for work between calls rather than sleeping
        // (OpenBLAS's threads spin too).
        let mut times = if args.threads > 1 {
            ringtrain::kernels::cpu::with_awake_workers(timed)?
        } else {
            timed()?
        };
        times.sort_by(f64::total_cmp);
        let (best, median) = (times[0], times[times.len() / 2]);
        let flops = 2.0 * (m * n * k) as f64;
        let row = Row {
            product: named.then_some(p),
            n,
            gflops: flops / best / 1e9,
            gflops_median: flops / median / 1e9,
            best_ms: best * 1e3,
            median_ms: median * 1e3,
            reps: times.len(),
        };
        let layout = |t: bool| if t { 't' } else { 'n' };
        let name = if named {
            format!(
                "{m}x{n}x{k}/{}{}",
                layout(p.a_transposed),
                layout(p.b_transposed)
            )
        } else {
            format!("n={n}")
        };
        println!(
            "  ringtrain {name:>18}  {:7.1} GFLOP/s (median {:.1})",
            row.gflops, row.gflops_median
        );
        rows.push(row);
    }
    let report = Report {
        isa: simd.to_string(),
        dtype: args.dtype.to_string(),
        threads: args.threads,
        gemm: rows,
    };
    if let Some(path) = &args.json_out {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&report)?)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}
