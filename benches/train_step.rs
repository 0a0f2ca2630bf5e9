//! One training step of the MLP the issue tracker and docs/BENCHMARKS.md compare with
//! PyTorch: 784-512-256-10 with ReLU, batch 128, SGD with momentum, cross-entropy.
//! Throughput is reported in samples (elements) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation};

const BATCH: usize = 128;

fn step(c: &mut Criterion) {
    let device = Device::cpu();
    let max_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut thread_counts = vec![1];
    if max_threads > 1 {
        thread_counts.push(max_threads);
    }
    for threads in thread_counts {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut rng = rng_from_seed(0);
        let model = mlp(784, &[512, 256], 10, Activation::Relu, &device, &mut rng).unwrap();
        let config = SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            ..SgdConfig::default()
        };
        let mut opt = Sgd::new(model.parameters(), config).unwrap();
        let x = Tensor::randn(0.0, 1.0, (BATCH, 784), &mut rng, &device).unwrap();
        let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 10).collect();

        let mut group = c.benchmark_group(format!(
            "mlp_train_step/{}",
            ringtrain::Simd::detect().isa()
        ));
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_function(format!("{threads}t"), |b| {
            pool.install(|| {
                b.iter(|| {
                    let loss = model.forward(&x).unwrap().cross_entropy(&labels).unwrap();
                    let grads = loss.backward().unwrap();
                    opt.step(&grads).unwrap();
                    loss.to_scalar().unwrap()
                })
            })
        });
        group.finish();
    }
}

criterion_group!(benches, step);
criterion_main!(benches);
