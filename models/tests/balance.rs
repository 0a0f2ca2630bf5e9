//! Replicas of different speeds in one group: shards sized by weights or by measured
//! throughput still train on the whole batch's mean gradient (as one device does, within
//! rounding); auto-balancing gives a slow replica fewer rows and then keeps its
//! weights; a CPU and a GPU replica (lavapipe without a GPU) train together.

mod support;

use ringtrain_models::nn::{ModuleState, Sequential};
use ringtrain_models::parallel::{Balance, DataParallel, DataParallelConfig};
use ringtrain_models::zoo::{mlp, Activation};
use ringtrain_runtime::optim::{Sgd, SgdConfig};
use ringtrain_runtime::{rng_from_seed, Device, Result};
use std::ops::Range;
use std::time::Duration;

const FEATURES: usize = 10;
const CLASSES: usize = 3;

fn build(device: &Device) -> Result<(Sequential, Sgd)> {
    let model = mlp(
        FEATURES,
        &[12],
        CLASSES,
        Activation::Relu,
        device,
        &mut rng_from_seed(11),
    )?;
    let config = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    let opt = Sgd::new(model.parameters(), config)?;
    Ok((model, opt))
}

fn group(devices: Vec<Device>, balance: Balance) -> DataParallel<Sequential, Sgd> {
    let config = DataParallelConfig {
        balance,
        ..DataParallelConfig::default()
    };
    DataParallel::new(devices, build, config).unwrap()
}

/// Steps `steps` (batches of one fixed set); `slow` makes every replica whose rows do
/// not start the batch sleep per row (a slower device, as far as timing can tell).
fn train(dp: &mut DataParallel<Sequential, Sgd>, steps: Range<usize>, batch: usize, slow: bool) {
    let set = support::classification(steps.end * batch, FEATURES, CLASSES, 3, 5);
    for s in steps {
        let at = s * batch;
        dp.step(
            batch,
            |model: &Sequential, device: &Device, rows: Range<usize>| {
                if slow && rows.start > 0 {
                    std::thread::sleep(Duration::from_micros(400) * rows.len() as u32);
                }
                support::rows_loss(
                    model,
                    device,
                    &set,
                    FEATURES,
                    at + rows.start..at + rows.end,
                )
            },
        )
        .unwrap();
    }
}

fn params(dp: &DataParallel<Sequential, Sgd>) -> Vec<f32> {
    support::flat_parameters(dp.model())
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-4 * x.abs().max(1.0),
            "{what}: {i}: {x} vs {y}"
        );
    }
}

#[test]
fn weighted_shards_train_on_the_whole_batch_mean() {
    let (steps, batch) = (5, 40);
    let mut one = group(vec![Device::cpu()], Balance::Equal);
    train(&mut one, 0..steps, batch, false);
    let mut weighted = group(
        vec![Device::cpu(), Device::cpu(), Device::cpu()],
        Balance::Weights(vec![1.0, 3.0, 0.5]),
    );
    assert_eq!(weighted.rows_of(batch, 0), 0..9);
    assert_eq!(weighted.rows_of(batch, 1), 9..36);
    train(&mut weighted, 0..steps, batch, false);
    assert_close(
        &params(&weighted),
        &params(&one),
        "weights 1:3:0.5 against one device",
    );
}

#[test]
fn auto_balance_gives_a_slow_replica_fewer_rows_and_then_keeps_its_weights() {
    let batch = 40;
    let mut dp = group(
        vec![Device::cpu(), Device::cpu()],
        Balance::Auto { steps: 2 },
    );
    // A warm-up step, two timed steps on equal shards and two on proportional ones.
    train(&mut dp, 0..4, batch, true);
    assert_eq!(dp.balance_weights(), None);
    train(&mut dp, 4..5, batch, true);
    let weights = dp
        .balance_weights()
        .expect("calibrated after 5 steps")
        .to_vec();
    let slow_rows = dp.rows_of(batch, 1).len();
    assert!(
        slow_rows < batch / 4,
        "the slow replica still gets {slow_rows} rows: {weights:?}"
    );
    train(&mut dp, 5..8, batch, false);
    assert_eq!(
        dp.balance_weights(),
        Some(&weights[..]),
        "weights are fixed once measured"
    );
    // The same trajectory as one device, whatever the shards were.
    let mut one = group(vec![Device::cpu()], Balance::Equal);
    train(&mut one, 0..8, batch, false);
    assert_close(
        &params(&dp),
        &params(&one),
        "auto-balanced against one device",
    );
}

#[test]
fn a_cpu_and_a_gpu_replica_train_together() {
    let Some(gpu) = Device::test_gpu() else {
        return;
    };
    let (steps, batch) = (4, 30);
    let mut one = group(vec![Device::cpu()], Balance::Equal);
    train(&mut one, 0..steps, batch, false);
    let mut mixed = group(vec![Device::cpu(), gpu], Balance::Weights(vec![2.0, 1.0]));
    train(&mut mixed, 0..steps, batch, false);
    let gpu_params = support::flat_parameters(mixed.replica(1).unwrap());
    assert_eq!(
        gpu_params.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        params(&mixed)
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<_>>(),
        "the GPU replica holds the CPU replica's parameters"
    );
    assert_close(&params(&mixed), &params(&one), "CPU + GPU against one CPU");
}

#[test]
fn bad_weights_are_refused() {
    let cpus = || vec![Device::cpu(), Device::cpu()];
    let config = |balance| DataParallelConfig {
        balance,
        ..DataParallelConfig::default()
    };
    for balance in [
        Balance::Weights(vec![1.0]),
        Balance::Weights(vec![1.0, -1.0]),
        Balance::Weights(vec![0.0, 0.0]),
        Balance::Auto { steps: 0 },
    ] {
        assert!(DataParallel::new(cpus(), build, config(balance)).is_err());
    }
    let mut dp = group(cpus(), Balance::Equal);
    assert!(dp.set_balance_weights(vec![f64::NAN, 1.0]).is_err());
    dp.set_balance_weights(vec![1.0, 4.0]).unwrap();
    assert_eq!(dp.rows_of(10, 1), 2..10);
}
