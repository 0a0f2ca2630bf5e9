//! All-reduce of the in-process ring and of the naive gather-then-broadcast group, by
//! group size and message size, for regression tracking; throughput is in bytes of the
//! message per second (algorithm bandwidth). `cargo run --release --example allreduce`
//! prints the full table with bus bandwidth and memcpy beside it.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringtrain::bench::collective::all_reduce_iters;
use ringtrain::comm::{ring, star};
use std::time::Duration;

fn allreduce(c: &mut Criterion) {
    for n in [2usize, 4, 8] {
        let mut group = c.benchmark_group(format!("allreduce/{n}peers"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(2));
        for bytes in [4usize << 10, 256 << 10, 16 << 20] {
            let len = bytes / 4;
            group.throughput(Throughput::Bytes(bytes as u64));
            group.bench_function(BenchmarkId::new("ring", bytes), |b| {
                b.iter_custom(|iters| all_reduce_iters(ring(n).unwrap(), len, iters).unwrap())
            });
            group.bench_function(BenchmarkId::new("naive", bytes), |b| {
                b.iter_custom(|iters| {
                    let peers = star(n, Duration::from_secs(60)).unwrap();
                    all_reduce_iters(peers, len, iters).unwrap()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, allreduce);
criterion_main!(benches);
