//! Single-precision matmul throughput of burn's wgpu backend, by size: the peer number beside
//! ringtrain's WGSL GEMM (`examples/gpu_gemm.rs`) in docs/BENCHMARKS.md.
//!
//! Protocol (src/bench/protocol.rs, shared with examples/gpu_gemm.rs, so the
//! two compare number for number):
//! 2 warm-up samples, then samples until at least 3 and `--min-time` seconds have passed
//! (at most 5000); a sample is `--calls-per-sample` back-to-back matmuls followed by a device
//! sync, and per-call time is sample time / calls-per-sample. Best and median per-call times
//! are reported as GFLOP/s = 2 n^3 / time.
//!
//! burn autotunes its matmul: the first call for a shape class benchmarks the candidate
//! kernels (blocking, on native targets) before running the fastest. That happens inside the
//! first warm-up sample, whose time is printed so the cost is visible. A warning is printed if
//! the second warm-up sample is still more than twice the timed median, which would mean
//! tuning or compilation was not over when timing started.
//!
//!     cargo build --release
//!     WGPU_BACKEND=vulkan ./target/release/burn-matmul --sizes 128,256,512 --json-out /tmp/burn.json

#[path = "../../../src/bench/protocol.rs"]
mod gemm_protocol;

use burn::tensor::wgpu::WgpuBackend;
use burn::tensor::{Device, Tensor, TensorData};
use clap::Parser;
use gemm_protocol::{operands, time_samples, verify, Report, Row};
use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Time burn's wgpu-backend f32 matmul on square matrices")]
struct Args {
    /// Matrix sizes n (C = A B with n x n operands).
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048,4096")]
    sizes: Vec<usize>,
    /// Seconds of timed samples per size (at least 3 samples).
    #[arg(long, default_value_t = 0.5)]
    min_time: f64,
    /// Matmuls per timed sample, between two syncs.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    calls_per_sample: u32,
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

/// The graphics API named by `WGPU_BACKEND`, as wgpu itself reads it. cubecl (burn's GPU
/// runtime) does not look at that variable, so it is honoured here by pinning the API; unset,
/// cubecl's own choice stands (Vulkan wherever a Vulkan adapter exists).
fn graphics_api_from_env() -> Result<WgpuBackend, Box<dyn Error>> {
    let Ok(value) = std::env::var("WGPU_BACKEND") else {
        return Ok(WgpuBackend::Auto);
    };
    Ok(match value.trim().to_ascii_lowercase().as_str() {
        "" => WgpuBackend::Auto,
        "vulkan" | "vk" => WgpuBackend::Vulkan,
        "metal" | "mtl" => WgpuBackend::Metal,
        "dx12" | "d3d12" => WgpuBackend::Dx12,
        "gl" | "gles" | "opengl" => WgpuBackend::Gl,
        "webgpu" | "browser" => WgpuBackend::WebGpu,
        other => {
            return Err(format!(
                "WGPU_BACKEND={other:?}: name one API (vulkan, metal, dx12, gl) or leave it unset"
            )
            .into())
        }
    })
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    let api = graphics_api_from_env()?;
    let device = Device::wgpu_options()
        .graphics_api(api)
        .init()
        .map_err(|e| format!("burn could not initialise a wgpu device ({api:?}): {e}"))?;
    let adapter = match device.identity() {
        Some(id) => format!("{} [{}]", id.name, id.fingerprint),
        None => "unknown (burn reports no device identity)".to_string(),
    };
    let library = format!(
        "burn {} (wgpu backend)",
        option_env!("BURN_VERSION").unwrap_or("unknown")
    );
    println!(
        "{library}, wgpu {}, graphics API {api:?}",
        option_env!("WGPU_VERSION").unwrap_or("unknown")
    );
    println!("timing on {adapter}");

    let mut rows = Vec::new();
    for &n in &args.sizes {
        if n == 0 {
            return Err("sizes must be positive".into());
        }
        let (a, b) = operands(n);
        let at = Tensor::<2>::from_data(TensorData::new(a.clone(), [n, n]), &device);
        let bt = Tensor::<2>::from_data(TensorData::new(b.clone(), [n, n]), &device);
        device.sync()?;

        let calls = args.calls_per_sample;
        // The last product of the last sample, kept alive past its sync (so the work
        // cannot be dropped) and then checked.
        let mut last = None;
        let timed = time_samples(calls, args.min_time, || {
            let start = Instant::now();
            let mut c = at.clone().matmul(bt.clone());
            for _ in 1..calls {
                c = at.clone().matmul(bt.clone());
            }
            device.sync()?;
            last = Some(c);
            Ok(start.elapsed().as_secs_f64() / f64::from(calls))
        })?;
        let c = last
            .expect("at least 3 timed samples")
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| format!("n={n}: reading C back: {e:?}"))?;
        verify(n, &a, &b, &c)?;
        let row = Row::new(n, &timed, None);
        let (warm, median) = (timed.warm_up, timed.sorted[timed.sorted.len() / 2]);
        let warm_ms: Vec<String> = warm.iter().map(|t| format!("{:.3}", t * 1e3)).collect();
        println!(
            "  burn-wgpu n={n:5}  {:8.1} GFLOP/s (median {:.1})",
            row.gflops, row.gflops_median
        );
        println!(
            "      warm-up samples: {} ms/call (the 1st includes autotune and shader compilation)",
            warm_ms.join(", ")
        );
        if warm[1] > 2.0 * median {
            eprintln!(
                "warning: n={n}: 2nd warm-up sample {:.3} ms/call vs timed median {:.3}: \
                 warm-up may not have covered autotune/compilation",
                warm[1] * 1e3,
                median * 1e3
            );
        }
        rows.push(row);
    }

    let report = Report {
        library,
        adapter,
        calls_per_sample: args.calls_per_sample,
        gemm: rows,
    };
    if let Some(path) = &args.json_out {
        report.write(path)?;
    }
    Ok(())
}
