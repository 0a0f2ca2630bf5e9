//! One training step of the models docs/BENCHMARKS.md compares with PyTorch
//! (scripts/peers.py builds the same ones): the MLP 784-512-256-10 with ReLU, and
//! `zoo::Cnn` on 1x28x28 images; batch 128, SGD with momentum, cross-entropy.
//! Throughput is reported in samples (elements) per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation, Cnn};

const BATCH: usize = 128;

fn bench_model<M: Module + Sync>(c: &mut Criterion, name: &str, build: fn(&Device, &mut Rng) -> M) {
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
        let model = build(&device, &mut rng);
        let config = SgdConfig {
            lr: 0.01,
            momentum: 0.9,
            ..SgdConfig::default()
        };
        let mut opt = Sgd::new(model.parameters(), config).unwrap();
        let x = Tensor::randn(0.0, 1.0, (BATCH, 784), &mut rng, &device).unwrap();
        let labels: Vec<u32> = (0..BATCH as u32).map(|i| i % 10).collect();

        let mut group = c.benchmark_group(format!(
            "{name}_train_step/{}",
            ringtrain::Simd::detect().isa()
        ));
        group.throughput(Throughput::Elements(BATCH as u64));
        if name == "cnn" {
            group.sample_size(20);
        }
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

fn step(c: &mut Criterion) {
    bench_model(c, "mlp", |d, rng| {
        mlp(784, &[512, 256], 10, Activation::Relu, d, rng).unwrap()
    });
    bench_model(c, "cnn", |d, rng| {
        Cnn::new((1, 28, 28), 10, d, rng).unwrap()
    });
}

criterion_group!(benches, step);
criterion_main!(benches);
