//! Library-level training on the embedded MNIST subset: the path a user's own model code
//! takes, checked for learning and for reproducibility.

use ringtrain::data::{Batches, Mnist};
use ringtrain::eval::evaluate;
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation};
use std::path::Path;

fn mnist() -> Mnist {
    Mnist::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-10k")).unwrap()
}

/// Trains for `epochs` and returns (test accuracy, final parameters).
fn train(data: &Mnist, use_adamw: bool, epochs: u64, seed: u64) -> (f32, Vec<Vec<f32>>) {
    let device = Device::cpu();
    let mut rng = rng_from_seed(seed);
    let model = mlp(784, &[128], 10, Activation::Relu, &device, &mut rng).unwrap();
    let mut opt: Box<dyn Optimizer> = if use_adamw {
        Box::new(AdamW::new(model.parameters(), AdamWConfig::default()).unwrap())
    } else {
        let cfg = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            ..SgdConfig::default()
        };
        Box::new(Sgd::new(model.parameters(), cfg).unwrap())
    };
    for epoch in 0..epochs {
        for batch in Batches::new(&data.train, 128, Some(seed ^ epoch)).unwrap() {
            let x = Tensor::from_vec(batch.images, (batch.len, 784), &device).unwrap();
            let loss = model
                .forward(&x)
                .unwrap()
                .cross_entropy(&batch.labels)
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
    }
    let acc = evaluate(&model, &data.test, 500, &device).unwrap().accuracy;
    let params = model
        .parameters()
        .iter()
        .map(|p| p.to_vec().unwrap())
        .collect();
    (acc, params)
}

#[test]
fn sgd_and_adamw_learn_mnist() {
    let data = mnist();
    let (sgd_acc, _) = train(&data, false, 2, 7);
    let (adamw_acc, _) = train(&data, true, 2, 7);
    // Chance is 10%; two epochs of a 784-128-10 MLP reach ~93%.
    assert!(sgd_acc > 0.90, "sgd accuracy {sgd_acc}");
    assert!(adamw_acc > 0.90, "adamw accuracy {adamw_acc}");
}

#[test]
fn same_seed_same_bits_different_seed_different_bits() {
    let data = mnist();
    let (_, a) = train(&data, false, 1, 3);
    let (_, b) = train(&data, false, 1, 3);
    let (_, c) = train(&data, false, 1, 4);
    assert_eq!(a, b);
    assert_ne!(a, c);
}
