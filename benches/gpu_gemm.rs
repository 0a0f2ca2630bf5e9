//! Single-precision GEMM throughput of the WGSL kernel on the best GPU adapter (honouring
//! WGPU_BACKEND / WGPU_ADAPTER_NAME). Throughput is in "elements" per second where one
//! element is one floating-point operation, so Gelem/s reads as GFLOP/s.
//!
//! Each iteration records 8 GEMMs and then waits for the GPU, so a measurement covers the
//! GPU's work rather than one host round trip per call. The sizes follow the adapter:
//! large on hardware, small on a software rasteriser (lavapipe does about 10 GFLOP/s).
//! For a comparison with burn's wgpu matmul, see examples/gpu_gemm.rs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringtrain::kernels::gpu::GpuBackend;
use ringtrain::kernels::{Backend, GemmSpec};
use std::time::{Duration, Instant};

const CALLS: u32 = 8;

fn gpu_gemm(c: &mut Criterion) {
    let gpu = match GpuBackend::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gpu_gemm: no GPU adapter ({e}); nothing to measure");
            return;
        }
    };
    let sizes: &[usize] = if gpu.adapter().is_hardware {
        &[256, 512, 1024, 2048, 4096]
    } else {
        &[64, 128, 256]
    };
    let mut group = c.benchmark_group("gpu_sgemm");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    eprintln!("gpu_gemm on {}", gpu.adapter());
    for &n in sizes {
        let data: Vec<f32> = (0..n * n)
            .map(|i| ((i * 7 + 1) % 13) as f32 * 0.01)
            .collect();
        let (a, b) = (gpu.upload(&data).unwrap(), gpu.upload(&data).unwrap());
        let mut out = gpu.alloc(n * n).unwrap();
        let spec = GemmSpec::new(n, n, n, false, false);
        group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..CALLS {
                        gpu.gemm(&spec, &a, &b, &mut out).unwrap();
                    }
                    gpu.synchronize().unwrap();
                }
                start.elapsed() / CALLS
            })
        });
    }
    group.finish();
}

criterion_group!(benches, gpu_gemm);
criterion_main!(benches);
