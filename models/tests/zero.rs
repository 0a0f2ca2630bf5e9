//! ZeRO-1 as a user relies on it: sharded optimizer state trains like plain data
//! parallelism (within rounding: gradients are summed in another order), each replica
//! holds only its parameters' state, the gathered state is what one optimizer would
//! hold, and it resumes on a group of another size, sharded or not.

mod support;

use ringtrain_models::nn::{ModuleState, Sequential};
use ringtrain_models::parallel::{DataParallel, DataParallelConfig, LocalSgd};
use ringtrain_models::zoo::{mlp, Activation};
use ringtrain_runtime::optim::{AdamW, AdamWConfig, Optimizer, Sgd, SgdConfig, StateTensor};
use ringtrain_runtime::{rng_from_seed, Device, Error, Precision, Result, Tensor};

const FEATURES: usize = 12;
const CLASSES: usize = 5;

fn data(rows: usize) -> (Vec<f32>, Vec<u32>) {
    support::classification(rows, FEATURES, CLASSES, 4, 7)
}

fn model(device: &Device) -> Result<Sequential> {
    mlp(
        FEATURES,
        &[16, 16, 16],
        CLASSES,
        Activation::Tanh,
        device,
        &mut rng_from_seed(3),
    )
}

fn sgd(device: &Device) -> Result<(Sequential, Box<dyn Optimizer + Send>)> {
    let m = model(device)?;
    let config = SgdConfig {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-3,
        ..SgdConfig::default()
    };
    let opt = Sgd::new(m.parameters(), config)?;
    Ok((m, Box::new(opt)))
}

fn adamw(device: &Device) -> Result<(Sequential, Box<dyn Optimizer + Send>)> {
    let m = model(device)?;
    let config = AdamWConfig {
        lr: 1e-2,
        ..AdamWConfig::default()
    };
    let opt = AdamW::new(m.parameters(), config)?;
    Ok((m, Box::new(opt)))
}

type Build = fn(&Device) -> Result<(Sequential, Box<dyn Optimizer + Send>)>;
type Group = DataParallel<Sequential, Box<dyn Optimizer + Send>>;

fn config(zero: u8) -> DataParallelConfig {
    DataParallelConfig {
        // Small buckets: several per step, each cut among the replicas.
        first_bucket_bytes: 256,
        bucket_bytes: 1024,
        clip_grad_norm: Some(0.5),
        zero,
        ..DataParallelConfig::default()
    }
}

fn group(n: usize, zero: u8, build: Build) -> Group {
    let devices = (0..n).map(|_| Device::cpu()).collect();
    DataParallel::new(devices, build, config(zero)).unwrap()
}

fn step(dp: &mut Group, set: &(Vec<f32>, Vec<u32>), at: usize, batch: usize) -> f32 {
    dp.step(batch, |model, device, rows| {
        support::rows_loss(model, device, set, FEATURES, at + rows.start..at + rows.end)
    })
    .unwrap()
}

fn params(model: &Sequential) -> Vec<f32> {
    support::flat_parameters(model)
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * x.abs().max(1.0),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

/// Elements of state each replica's optimizer holds for variables (not its step count
/// or learning rate).
fn held(dp: &Group) -> Vec<usize> {
    (0..dp.size())
        .map(|i| {
            let opt = dp.replica_optimizer(i).unwrap();
            opt.state()
                .unwrap()
                .iter()
                .filter(|(name, _, _)| opt.state_var(name).is_some())
                .map(|(_, _, v)| v.len())
                .sum()
        })
        .collect()
}

fn names(state: &[StateTensor]) -> Vec<(String, Vec<usize>)> {
    let mut n: Vec<_> = state
        .iter()
        .map(|(n, s, _)| (n.clone(), s.clone()))
        .collect();
    n.sort();
    n
}

#[test]
fn zero1_trains_like_plain_data_parallelism_with_a_share_of_the_state() {
    let (steps, batch) = (6, 24);
    let set = data(steps * batch);
    for (name, build) in [("sgd", sgd as Build), ("adamw", adamw as Build)] {
        for n in [2, 3, 4] {
            let mut plain = group(n, 0, build);
            let mut sharded = group(n, 1, build);
            for s in 0..steps {
                let a = step(&mut plain, &set, s * batch, batch);
                let b = step(&mut sharded, &set, s * batch, batch);
                assert!(
                    (a - b).abs() < 1e-5,
                    "{name} n {n} step {s}: loss {a} vs {b}"
                );
            }
            let what = format!("{name}, {n} replicas");
            let first = params(sharded.model());
            for i in 1..n {
                let p = params(sharded.replica(i).unwrap());
                assert!(
                    p.iter()
                        .zip(&first)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: replica {i} differs from replica 0"
                );
            }
            assert_close(&first, &params(plain.model()), 1e-4, &what);
            // Each replica holds its parameters' state only; together, all of it.
            let (shares, whole) = (held(&sharded), held(&plain)[0]);
            assert_eq!(shares.iter().sum::<usize>(), whole, "{what}: {shares:?}");
            assert!(shares.iter().all(|&s| s < whole), "{what}: {shares:?}");
            // The gathered state is what the plain optimizer holds.
            let gathered = sharded.optimizer_state().unwrap();
            let reference = plain.optimizer_state().unwrap();
            assert_eq!(names(&gathered), names(&reference), "{what}");
            for (name, _, values) in &reference {
                let (_, _, got) = gathered.iter().find(|(n, _, _)| n == name).unwrap();
                assert_close(got, values, 1e-3, &format!("{what}: {name}"));
            }
        }
    }
}

/// On GPU replicas (lavapipe in CI), where each replica reads its own parameters back
/// from the device together: the replicas end alike, and close to CPU replicas.
#[test]
fn zero1_on_gpu_replicas_trains_like_cpu_replicas() {
    let Some(first) = Device::test_gpu() else {
        return;
    };
    let second = Device::gpu().expect("a second device on a working adapter");
    let (steps, batch) = (4, 24);
    let set = data(steps * batch);
    let mut on_gpu = DataParallel::new(vec![first, second], adamw, config(1)).unwrap();
    let mut on_cpu = group(2, 1, adamw);
    for s in 0..steps {
        let a = step(&mut on_gpu, &set, s * batch, batch);
        let b = step(&mut on_cpu, &set, s * batch, batch);
        assert!((a - b).abs() < 1e-4, "step {s}: loss {a} vs {b}");
    }
    let (a, b) = (params(on_gpu.model()), params(on_gpu.replica(1).unwrap()));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "the GPU replicas differ"
    );
    assert_close(
        &a,
        &params(on_cpu.model()),
        1e-4,
        "GPU against CPU replicas",
    );
}

#[test]
fn a_gathered_state_resumes_on_a_group_of_another_size() {
    let (steps, batch) = (4, 24);
    let set = data(2 * steps * batch);
    let mut first = group(3, 1, adamw);
    for s in 0..steps {
        step(&mut first, &set, s * batch, batch);
    }
    let state = first.optimizer_state().unwrap();
    let at_split = params(first.model());
    for s in steps..2 * steps {
        step(&mut first, &set, s * batch, batch);
    }
    let uninterrupted = params(first.model());
    for (n, zero) in [(2, 1), (4, 1), (2, 0), (1, 1)] {
        let mut resumed = group(n, zero, adamw);
        for (m, _) in resumed.replicas_mut() {
            let mut at = 0;
            for p in m.parameters() {
                let len = p.elem_count();
                let t = Tensor::from_slice(&at_split[at..at + len], p.shape().clone(), p.device());
                p.set(&t.unwrap()).unwrap();
                at += len;
            }
        }
        resumed.load_optimizer_state(&state).unwrap();
        for s in steps..2 * steps {
            step(&mut resumed, &set, s * batch, batch);
        }
        let what = format!("resumed on {n} replicas, ZeRO {zero}");
        assert_close(&params(resumed.model()), &uninterrupted, 1e-4, &what);
    }
}

#[test]
fn a_non_finite_gradient_stops_every_sharded_replica_before_any_update() {
    let batch = 24;
    let (mut x, labels) = data(batch);
    x[5 * FEATURES] = f32::NAN; // one row of the last replica's shard
    let mut dp = group(3, 1, sgd);
    let before = params(dp.model());
    let set = (x, labels);
    let err = dp
        .step(batch, |model, device, rows| {
            support::rows_loss(model, device, &set, FEATURES, rows)
        })
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err}");
    for i in 0..3 {
        assert_eq!(
            params(dp.replica(i).unwrap()),
            before,
            "replica {i} changed"
        );
    }
}

#[test]
fn zero_settings_that_cannot_work_are_refused() {
    let devices = || vec![Device::cpu(), Device::cpu()];
    let refused = |config: DataParallelConfig, says: &str| {
        let err = DataParallel::new(devices(), sgd, config).err().unwrap();
        assert!(err.to_string().contains(says), "{err}");
    };
    refused(config(2), "not built");
    refused(
        DataParallelConfig {
            local_sgd: Some(LocalSgd::every(2)),
            ..config(1)
        },
        "local SGD",
    );
    refused(
        DataParallelConfig {
            grad_compression: Precision::Bf16,
            ..config(1)
        },
        "compression",
    );
}
