//! Single-thread SGEMM of the `gemm` and `matrixmultiply` crates on square row-major
//! matrices, timed as ringtrain's `examples/sgemm.rs` and `scripts/peers.py` time
//! theirs: the same operands, 2 warm-up calls, then single calls until 0.5 s and 3 calls
//! have passed; best and median.
//!
//!     cargo run --release -- --json-out gemm-crates.json

use clap::Parser;
use serde::Serialize;
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,1536,2048")]
    sizes: Vec<usize>,
    #[arg(long, default_value_t = 0.5)]
    min_time: f64,
    #[arg(long)]
    json_out: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    library: &'static str,
    n: usize,
    gflops: f64,
    gflops_median: f64,
    reps: usize,
}

/// The operands of ringtrain's examples/sgemm.rs.
fn operands(n: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..n * n)
        .map(|i| ((i * 7 + 1) % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b = (0..n * n)
        .map(|i| ((i * 5 + 2) % 11) as f32 * 0.01 - 0.05)
        .collect();
    (a, b)
}

fn time(min_time: f64, mut call: impl FnMut()) -> (f64, f64, usize) {
    call();
    call();
    let (mut times, mut total) = (Vec::new(), 0.0);
    while times.len() < 5000 && (times.len() < 3 || total < min_time) {
        let t = Instant::now();
        call();
        let dt = t.elapsed().as_secs_f64();
        times.push(dt);
        total += dt;
    }
    times.sort_by(f64::total_cmp);
    (times[0], times[times.len() / 2], times.len())
}

fn check(n: usize, a: &[f32], b: &[f32], c: &[f32], library: &str) -> Result<(), String> {
    for (i, j) in [(0, 0), (n - 1, n - 1), (n / 2, n / 3)] {
        let want: f64 = (0..n)
            .map(|p| a[i * n + p] as f64 * b[p * n + j] as f64)
            .sum();
        let got = c[i * n + j] as f64;
        if got.is_nan() || (got - want).abs() > 1e-3 * want.abs().max(1e-2) {
            return Err(format!("{library} n={n}: C[{i},{j}] = {got}, want {want}"));
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for &n in &args.sizes {
        let (a, b) = operands(n);
        let mut c = vec![0f32; n * n];
        let s = n as isize;
        let gemm_call = |c: &mut [f32]| unsafe {
            // dst = alpha dst + beta lhs rhs; read_dst false ignores alpha.
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                s,
                false,
                a.as_ptr(),
                1,
                s,
                b.as_ptr(),
                1,
                s,
                0.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        let mm_call = |c: &mut [f32]| unsafe {
            matrixmultiply::sgemm(
                n,
                n,
                n,
                1.0,
                a.as_ptr(),
                s,
                1,
                b.as_ptr(),
                s,
                1,
                0.0,
                c.as_mut_ptr(),
                s,
                1,
            )
        };
        for (library, call) in [
            ("gemm 0.19", &gemm_call as &dyn Fn(&mut [f32])),
            ("matrixmultiply 0.3", &mm_call),
        ] {
            let (best, median, reps) = time(args.min_time, || call(&mut c));
            check(n, &a, &b, &c, library)?;
            let flops = 2.0 * (n as f64).powi(3);
            let row = Row {
                library,
                n,
                gflops: flops / best / 1e9,
                gflops_median: flops / median / 1e9,
                reps,
            };
            println!(
                "  {library:<20} n={n:5}  {:7.1} GFLOP/s (median {:.1})",
                row.gflops, row.gflops_median
            );
            rows.push(row);
        }
    }
    if let Some(path) = &args.json_out {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&rows)?)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}
