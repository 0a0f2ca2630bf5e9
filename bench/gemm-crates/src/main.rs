//! Single-thread SGEMM of the `gemm` and `matrixmultiply` crates on square row-major
//! matrices, timed as ringtrain's `examples/sgemm.rs` and `scripts/peers.py` time
//! theirs: the same operands and result check (ringtrain's `src/bench/protocol.rs`, included),
//! 2 warm-up calls, then single calls until 0.5 s and 3 calls have passed; best and
//! median.
//!
//!     cargo run --release -- --json-out gemm-crates.json

#[path = "../../../src/bench/protocol.rs"]
mod gemm_protocol;

use clap::Parser;
use gemm_protocol::{operands, time_samples, verify, Res};
use serde::Serialize;
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

fn main() -> Res<()> {
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
            let timed = time_samples(1, args.min_time, || {
                let t = Instant::now();
                call(&mut c);
                Ok(t.elapsed().as_secs_f64())
            })?;
            verify(n, &a, &b, &c).map_err(|e| format!("{library}: {e}"))?;
            let (best, median) = (timed.sorted[0], timed.sorted[timed.sorted.len() / 2]);
            let flops = 2.0 * (n as f64).powi(3);
            let row = Row {
                library,
                n,
                gflops: flops / best / 1e9,
                gflops_median: flops / median / 1e9,
                reps: timed.sorted.len(),
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
