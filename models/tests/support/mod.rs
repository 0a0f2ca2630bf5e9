//! What several test files of this crate build alike.

#![allow(dead_code)] // each test file uses part of it

use ringtrain_runtime::{rng_from_seed, Device, Tensor};

/// A fixed synthetic classification set: `rows` inputs of `features` values in `-1..1`
/// (from `seed`), each labelled by the sum of its first `informative` values, cut into
/// `classes` equal ranges.
pub fn classification(
    rows: usize,
    features: usize,
    classes: usize,
    informative: usize,
    seed: u64,
) -> (Vec<f32>, Vec<u32>) {
    let x = Tensor::rand_uniform(
        -1.0,
        1.0,
        (rows, features),
        &mut rng_from_seed(seed),
        &Device::cpu(),
    )
    .unwrap()
    .to_vec()
    .unwrap();
    let span = informative as f32;
    let labels = x
        .chunks(features)
        .map(|row| {
            let s: f32 = row.iter().take(informative).sum();
            ((s + span) * classes as f32 / (2.0 * span)).clamp(0.0, classes as f32 - 1.0) as u32
        })
        .collect();
    (x, labels)
}

/// The mean cross-entropy of `model` on rows `rows` of a classification set of
/// `features`-value rows, as [`classification`] makes them: a data-parallel test's shard
/// loss.
pub fn rows_loss(
    model: &impl ringtrain_models::nn::Module,
    device: &Device,
    (x, labels): &(Vec<f32>, Vec<u32>),
    features: usize,
    rows: std::ops::Range<usize>,
) -> ringtrain_runtime::Result<Tensor> {
    let xs = Tensor::from_slice(
        &x[rows.start * features..rows.end * features],
        (rows.len(), features),
        device,
    )?;
    model.forward(&xs)?.cross_entropy(&labels[rows])
}

/// Every parameter of `model`, in order, as one vector.
pub fn flat_parameters(model: &impl ringtrain_models::nn::ModuleState) -> Vec<f32> {
    model
        .parameters()
        .iter()
        .flat_map(|p| p.to_vec().unwrap())
        .collect()
}
