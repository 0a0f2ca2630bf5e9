//! The CPU backend's fused attention, forward and backward, on one thread, at the head
//! shapes of the GPT steps docs/BENCHMARKS.md compares with PyTorch: the small model's
//! 64 (sequence, head) pairs of 64 causal tokens with 16-wide heads, and the large one's
//! 24 pairs of 256 tokens with 64-wide heads. Throughput is in query rows per second.
//!
//! `cargo bench --bench attention`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringtrain::kernels::cpu::CpuBackend;
use ringtrain::kernels::{AttentionSpec, Backend};
use std::hint::black_box;

fn filled(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + seed) % 13) as f32 * 0.1 - 0.6)
        .collect()
}

fn bench(c: &mut Criterion) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let cpu = CpuBackend::new();
    let mut group = c.benchmark_group("attention");
    for (pairs, t, d) in [(64, 64, 16), (24, 256, 64)] {
        let spec = AttentionSpec {
            batch: pairs,
            tq: t,
            tk: t,
            d,
            scale: 1.0 / (d as f32).sqrt(),
            causal: true,
            dropout: 0.0,
            seed: 0,
        };
        let (q, k, v) = (
            filled(spec.q_len(), 1),
            filled(spec.kv_len(), 2),
            filled(spec.kv_len(), 3),
        );
        let dout = filled(spec.q_len(), 4);
        let (mut out, mut lse) = (vec![0.0; spec.q_len()], vec![0.0; spec.lse_len()]);
        let mut grads = [q.len(), k.len(), v.len()].map(|n| vec![0.0; n]);
        group.throughput(Throughput::Elements((pairs * t) as u64));
        let id = format!("{pairs}x{t}x{d}");
        group.bench_function(BenchmarkId::new("forward", &id), |b| {
            pool.install(|| {
                b.iter(|| {
                    cpu.attention(&spec, &q, &k, &v, &mut out, &mut lse)
                        .expect("valid shapes");
                    black_box(&out);
                })
            })
        });
        group.bench_function(BenchmarkId::new("backward", &id), |b| {
            pool.install(|| {
                b.iter(|| {
                    let [dq, dk, dv] = &mut grads;
                    cpu.attention_backward(&spec, &q, &k, &v, &out, &lse, &dout, dq, dk, dv)
                        .expect("valid shapes");
                    black_box(&grads);
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
