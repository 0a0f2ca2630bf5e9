//! Single-precision GEMM throughput of the CPU backend. Criterion reports throughput in
//! "elements" per second where one element is one floating-point operation (2 per
//! multiply-add), so the Gelem/s column reads as GFLOP/s.
//!
//! `cargo bench --bench gemm` runs everything; `RINGTRAIN_BENCH_QUICK=1` keeps to the
//! single-thread square sizes that docs/BENCHMARKS.md compares with OpenBLAS.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringtrain::kernels::cpu::gemm::{sgemm, MatRef};
use ringtrain::kernels::cpu::Simd;
use std::hint::black_box;

fn operands(m: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let fill = |len: usize, seed: usize| {
        (0..len)
            .map(|i| ((i * 7 + seed) % 13) as f32 * 0.01 - 0.06)
            .collect()
    };
    (fill(m * k, 1), fill(k * n, 2), vec![0.0; m * n])
}

fn run(
    simd: Simd,
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    bufs: &mut (Vec<f32>, Vec<f32>, Vec<f32>),
) {
    let (a, b, c) = bufs;
    let a = MatRef::row_major(a, m, k, ta);
    let b = MatRef::row_major(b, k, n, tb);
    sgemm(simd, m, n, k, 1.0, a, b, 0.0, black_box(c), n).unwrap();
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

fn square(c: &mut Criterion) {
    let simd = Simd::detect();
    let sizes: &[usize] = &[256, 512, 1024, 1536, 2048];
    let thread_counts: Vec<usize> = if std::env::var_os("RINGTRAIN_BENCH_QUICK").is_some() {
        vec![1]
    } else {
        vec![
            1,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ]
    };
    for threads in thread_counts {
        let pool = pool(threads);
        let mut group = c.benchmark_group(format!("sgemm/{}/{threads}t", simd.isa()));
        for &n in sizes {
            group.throughput(Throughput::Elements(2 * (n * n * n) as u64));
            group.sample_size(if n >= 1024 { 10 } else { 30 });
            let mut bufs = operands(n, n, n);
            group.bench_function(BenchmarkId::from_parameter(n), |bench| {
                pool.install(|| bench.iter(|| run(simd, n, n, n, false, false, &mut bufs)))
            });
        }
        group.finish();
    }
}

/// The GEMMs of the first layer of the MLP training step (784-512-256-10, batch 128), as
/// `Linear` runs them with its `[out, in]` weight: forward X W^T, backward dX = G W and
/// dW = G^T X.
fn mlp_shapes(c: &mut Criterion) {
    if std::env::var_os("RINGTRAIN_BENCH_QUICK").is_some() {
        return;
    }
    let pool = pool(1);
    for simd in Simd::available() {
        let mut group = c.benchmark_group(format!("sgemm_mlp/{}/1t", simd.isa()));
        for &(name, m, n, k, ta, tb) in &[
            ("fwd_128x512x784_bT", 128, 512, 784, false, true),
            ("dx_128x784x512", 128, 784, 512, false, false),
            ("dw_512x784x128_aT", 512, 784, 128, true, false),
        ] {
            group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            let mut bufs = operands(m, n, k);
            group.bench_function(name, |bench| {
                pool.install(|| bench.iter(|| run(simd, m, n, k, ta, tb, &mut bufs)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, square, mlp_shapes);
criterion_main!(benches);
