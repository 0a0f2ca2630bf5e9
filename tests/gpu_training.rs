//! The GPU backend as model code meets it: the same training as on the CPU, a training
//! loop that stops allocating after its first step, and tensors that stay on their device.
//! Runs on Mesa's software Vulkan where there is no GPU; with no adapter at all each test
//! says in one line that it was skipped (RINGTRAIN_REQUIRE_GPU=1, as in CI, fails instead).

use ringtrain::data::{Batches, Mnist};
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation};
use std::path::Path;

fn gpu() -> Option<Device> {
    Device::test_gpu()
}

fn mnist() -> Mnist {
    Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-10k")).unwrap()
}

/// Loss of each of `steps` SGD steps of a small MLP, from one seed.
fn losses(device: &Device, data: &Mnist, steps: usize, adamw: bool) -> Vec<f32> {
    let mut rng = rng_from_seed(3);
    let model = mlp(784, &[48, 24], 10, Activation::Gelu, device, &mut rng).unwrap();
    let mut opt: Box<dyn Optimizer> = if adamw {
        Box::new(AdamW::new(model.parameters(), AdamWConfig::default()).unwrap())
    } else {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        };
        Box::new(Sgd::new(model.parameters(), cfg).unwrap())
    };
    Batches::new(&data.train, 64, Some(5))
        .unwrap()
        .take(steps)
        .map(|batch| {
            let x = Tensor::from_vec(batch.images, (batch.len, 784), device).unwrap();
            let loss = model
                .forward(&x)
                .unwrap()
                .cross_entropy(&batch.labels)
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            loss.to_scalar().unwrap()
        })
        .collect()
}

#[test]
fn training_on_the_gpu_follows_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let data = mnist();
    for adamw in [false, true] {
        let (on_cpu, on_gpu) = (
            losses(&Device::cpu(), &data, 12, adamw),
            losses(&gpu, &data, 12, adamw),
        );
        // Same model, data and seed; only float rounding differs (FMA contraction, exp and
        // tanh implementations, summation order), and it compounds slowly over steps.
        for (step, (c, g)) in on_cpu.iter().zip(&on_gpu).enumerate() {
            assert!(
                (c - g).abs() <= 2e-3 * c.abs().max(1.0),
                "adamw={adamw} step {step}: cpu loss {c}, gpu loss {g}"
            );
        }
        assert!(on_gpu[11] < on_gpu[0], "loss did not fall: {on_gpu:?}");
    }
}

#[test]
fn a_training_step_allocates_nothing_after_the_first() {
    let Some(device) = gpu() else { return };
    let Device::Gpu(backend) = &device else {
        unreachable!()
    };
    let data = mnist();
    let mut rng = rng_from_seed(1);
    let model = mlp(784, &[64], 10, Activation::Relu, &device, &mut rng).unwrap();
    let mut opt = AdamW::new(model.parameters(), AdamWConfig::default()).unwrap();
    let mut created = Vec::new();
    for batch in Batches::new(&data.train, 100, Some(1)).unwrap().take(4) {
        let x = Tensor::from_vec(batch.images, (batch.len, 784), &device).unwrap();
        let loss = model
            .forward(&x)
            .unwrap()
            .cross_entropy(&batch.labels)
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        loss.to_scalar().unwrap();
        created.push(backend.buffers_created());
    }
    assert!(created[0] > 0);
    assert_eq!(
        created[1], created[3],
        "buffers created after each step: {created:?}"
    );
}

#[test]
fn tensors_stay_on_their_device() {
    let Some(gpu) = gpu() else { return };
    let cpu = Device::cpu();
    let host = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], (2, 2), &cpu).unwrap();
    let on_gpu = host.to_device(&gpu).unwrap();
    assert_eq!(on_gpu.to_vec().unwrap(), host.to_vec().unwrap());
    let err = host.add(&on_gpu).unwrap_err().to_string();
    assert!(err.contains("different devices"), "{err}");
    // A second GPU device, even on the same adapter, is a different device.
    let other = Device::gpu().unwrap();
    let elsewhere = on_gpu.to_device(&other).unwrap();
    assert!(on_gpu.matmul(&elsewhere).is_err());
    let back = elsewhere.to_device(&cpu).unwrap();
    assert_eq!(back.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}
