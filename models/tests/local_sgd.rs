//! Local SGD as a user relies on it: replicas drift apart between synchronizations and
//! hold the same bits after each; the result is the algorithm written out by hand
//! (local steps, the outer optimizer on the mean change, averaged optimizer state); one
//! step between synchronizations with plain SGD is gradient averaging; only
//! synchronizations send bytes; runs reproduce; bad settings and non-finite steps are
//! errors, not garbage.

mod support;

use ringtrain_models::nn::{Module, ModuleState, Sequential};
use ringtrain_models::parallel::{
    shard, DataParallel, DataParallelConfig, InnerState, LocalSgd, NonFinitePolicy, OuterOptimizer,
};
use ringtrain_models::zoo::{mlp, Activation};
use ringtrain_runtime::comm::{Algorithm, RingConfig, Thresholds};
use ringtrain_runtime::optim::{Optimizer, Sgd, SgdConfig, StateTensor};
use ringtrain_runtime::{rng_from_seed, Device, Error, Precision, Result, Tensor};

const FEATURES: usize = 10;
const CLASSES: usize = 4;
const BATCH: usize = 12;

/// A fixed synthetic classification set of `rows` rows.
fn data(rows: usize) -> (Vec<f32>, Vec<u32>) {
    support::classification(rows, FEATURES, CLASSES, 3, 3)
}

fn build(device: &Device, momentum: f32) -> Result<(Sequential, Sgd)> {
    let model = mlp(
        FEATURES,
        &[16],
        CLASSES,
        Activation::Tanh,
        device,
        &mut rng_from_seed(11),
    )?;
    let opt = Sgd::new(
        model.parameters(),
        SgdConfig {
            lr: 0.2,
            momentum,
            ..SgdConfig::default()
        },
    )?;
    Ok((model, opt))
}

/// The mean cross-entropy of rows `lo..hi` of `set`.
fn loss_of(
    model: &Sequential,
    device: &Device,
    set: &(Vec<f32>, Vec<u32>),
    lo: usize,
    hi: usize,
) -> Result<Tensor> {
    let xs = Tensor::from_slice(
        &set.0[lo * FEATURES..hi * FEATURES],
        (hi - lo, FEATURES),
        device,
    )?;
    model.forward(&xs)?.cross_entropy(&set.1[lo..hi])
}

fn group(
    devices: Vec<Device>,
    momentum: f32,
    local_sgd: Option<LocalSgd>,
    wire: Precision,
) -> DataParallel<Sequential, Sgd> {
    let config = DataParallelConfig {
        local_sgd,
        grad_compression: wire,
        ..DataParallelConfig::default()
    };
    DataParallel::new(devices, |d| build(d, momentum), config).unwrap()
}

fn step(
    dp: &mut DataParallel<Sequential, Sgd>,
    set: &(Vec<f32>, Vec<u32>),
    s: usize,
) -> Result<f32> {
    let at = s * BATCH;
    dp.step(BATCH, |model, device, rows| {
        loss_of(model, device, set, at + rows.start, at + rows.end)
    })
}

fn flat(model: &Sequential) -> Vec<f32> {
    model
        .parameters()
        .iter()
        .flat_map(|p| p.to_vec().unwrap())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn replica_bits(dp: &DataParallel<Sequential, Sgd>) -> Vec<Vec<u32>> {
    (0..dp.size())
        .map(|r| bits(&flat(dp.replica(r).unwrap())))
        .collect()
}

fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
            "{what}: element {i}: {x} vs {y}"
        );
    }
}

fn cpus(n: usize) -> Vec<Device> {
    (0..n).map(|_| Device::cpu()).collect()
}

#[test]
fn replicas_drift_apart_between_syncs_and_agree_after_each() {
    let set = data(8 * BATCH);
    for n in [2, 3] {
        let mut dp = group(cpus(n), 0.9, Some(LocalSgd::every(3)), Precision::F32);
        for s in 0..7 {
            step(&mut dp, &set, s).unwrap();
            let replicas = replica_bits(&dp);
            let alike = replicas.iter().all(|r| *r == replicas[0]);
            let synced = (s + 1) % 3 == 0;
            assert_eq!(alike, synced, "x{n}, after step {}", s + 1);
            assert_eq!(dp.local_steps_since_sync(), (s + 1) % 3, "x{n}");
        }
        dp.sync().unwrap();
        let replicas = replica_bits(&dp);
        assert!(replicas.iter().all(|r| *r == replicas[0]), "x{n}: sync()");
        // A second sync has nothing to do, and sends nothing.
        let before = dp.last_step_bytes_sent();
        dp.sync().unwrap();
        assert_eq!(dp.last_step_bytes_sent(), before);
        assert_eq!(replica_bits(&dp), replicas);
    }
}

/// Local SGD written out with independent models: each steps on its own shard, and at
/// every synchronization the mean change since the anchor goes through the outer
/// optimizer, and the momentum buffers are averaged (or each replica keeps its own).
fn by_hand(
    n: usize,
    h: usize,
    steps: usize,
    local: LocalSgd,
    set: &(Vec<f32>, Vec<u32>),
) -> Vec<Vec<f32>> {
    let outer = local.outer;
    let device = Device::cpu();
    let mut replicas: Vec<(Sequential, Sgd)> =
        (0..n).map(|_| build(&device, 0.9).unwrap()).collect();
    let mut anchor = flat(&replicas[0].0);
    let mut velocity = vec![0.0f32; anchor.len()];
    let set_flat = |model: &Sequential, values: &[f32]| {
        let mut at = 0;
        for p in model.parameters() {
            let k = p.elem_count();
            p.set(&Tensor::from_slice(&values[at..at + k], p.shape().clone(), &device).unwrap())
                .unwrap();
            at += k;
        }
    };
    for s in 0..steps {
        for (i, (model, opt)) in replicas.iter_mut().enumerate() {
            let rows = shard(BATCH, n, i);
            let at = s * BATCH;
            let l = loss_of(model, &device, set, at + rows.start, at + rows.end).unwrap();
            opt.step(&l.backward().unwrap()).unwrap();
        }
        if (s + 1) % h != 0 {
            continue;
        }
        let mut mean_change = vec![0.0f32; anchor.len()];
        for (model, _) in &replicas {
            for ((m, a), p) in mean_change.iter_mut().zip(&anchor).zip(flat(model)) {
                *m += a - p;
            }
        }
        for (j, a) in anchor.iter_mut().enumerate() {
            let d = mean_change[j] / n as f32;
            velocity[j] = outer.momentum * velocity[j] + d;
            let update = if outer.nesterov {
                d + outer.momentum * velocity[j]
            } else {
                velocity[j]
            };
            *a -= outer.lr * update;
        }
        let states: Vec<Vec<StateTensor>> =
            replicas.iter().map(|(_, o)| o.state().unwrap()).collect();
        let mean: Vec<StateTensor> = states[0]
            .iter()
            .enumerate()
            .map(|(t, (name, shape, _))| {
                let values = (0..states[0][t].2.len())
                    .map(|k| states.iter().map(|st| st[t].2[k]).sum::<f32>() / n as f32)
                    .collect();
                (name.clone(), shape.clone(), values)
            })
            .collect();
        for (model, opt) in &mut replicas {
            set_flat(model, &anchor);
            if local.inner_state == InnerState::Averaged {
                opt.load_state(&mean).unwrap();
            }
        }
    }
    replicas.iter().map(|(m, _)| flat(m)).collect()
}

#[test]
fn follows_local_sgd_written_out_by_hand() {
    let set = data(9 * BATCH);
    for (n, h, outer, inner) in [
        (2, 2, OuterOptimizer::diloco(), InnerState::Averaged),
        (3, 4, OuterOptimizer::default(), InnerState::Averaged),
        (
            4,
            3,
            OuterOptimizer {
                lr: 0.5,
                momentum: 0.5,
                nesterov: false,
            },
            InnerState::Averaged,
        ),
        (2, 3, OuterOptimizer::diloco(), InnerState::Local),
    ] {
        let steps = 2 * h + 1; // two synchronizations, and a local step after
        let local = LocalSgd::every(h).with_outer(outer).with_inner_state(inner);
        let mut dp = group(cpus(n), 0.9, Some(local), Precision::F32);
        for s in 0..steps {
            step(&mut dp, &set, s).unwrap();
        }
        let expected = by_hand(n, h, steps, local, &set);
        for (r, want) in expected.iter().enumerate() {
            let got = flat(dp.replica(r).unwrap());
            assert_close(&got, want, 2e-5, &format!("x{n}, H = {h}, replica {r}"));
        }
        // The outer momentum is the group's state too: every replica holds it alike.
        let outer_state = dp.outer_state();
        assert_eq!(outer_state.is_empty(), outer.momentum == 0.0);
    }
}

/// With momentum SGD, averaging the inner state sends its buffers too (twice the bytes
/// of the change alone); keeping it per replica sends only the change.
#[test]
fn averaged_inner_state_costs_its_bytes_and_local_state_none() {
    let set = data(4 * BATCH);
    let sync_bytes = |momentum: f32, inner: InnerState| {
        let local = LocalSgd::every(2).with_inner_state(inner);
        let mut dp = group(cpus(2), momentum, Some(local), Precision::F32);
        for s in 0..4 {
            step(&mut dp, &set, s).unwrap();
        }
        dp.last_step_bytes_sent().unwrap() as f64
    };
    // Each also agrees on the state's size first: a few bytes.
    let change_only = sync_bytes(0.0, InnerState::Averaged);
    let averaged = sync_bytes(0.9, InnerState::Averaged);
    let local = sync_bytes(0.9, InnerState::Local);
    assert!(
        (averaged - 2.0 * change_only).abs() <= 64.0,
        "averaged: {averaged} bytes, the change alone {change_only}"
    );
    assert!(
        local <= change_only && local >= change_only - 64.0,
        "local: {local} bytes, the change alone {change_only}"
    );
}

/// Plain SGD, one local step between synchronizations and plain averaging: the mean of
/// the replicas' steps is the step on the mean gradient.
#[test]
fn one_step_between_syncs_is_gradient_averaging() {
    let set = data(6 * BATCH);
    let mut local = group(cpus(3), 0.0, Some(LocalSgd::every(1)), Precision::F32);
    let mut averaged = group(cpus(3), 0.0, None, Precision::F32);
    for s in 0..6 {
        let a = step(&mut local, &set, s).unwrap();
        let b = step(&mut averaged, &set, s).unwrap();
        assert!((a - b).abs() < 1e-5, "step {s}: loss {a} vs {b}");
    }
    assert_close(&flat(local.model()), &flat(averaged.model()), 2e-5, "H = 1");
}

#[test]
fn only_synchronizations_send_bytes() {
    let set = data(8 * BATCH);
    let n = 4;
    let mut sent = Vec::new();
    for wire in [Precision::F32, Precision::Bf16] {
        // No momentum: only the parameters' change crosses the links, by the ring at
        // every size, so that it costs the ring's `2 (n - 1) / n` of it.
        let config = DataParallelConfig {
            local_sgd: Some(LocalSgd::every(4)),
            grad_compression: wire,
            ring: RingConfig {
                thresholds: Thresholds::only(Algorithm::Ring),
                ..RingConfig::default()
            },
            ..DataParallelConfig::default()
        };
        let mut dp = DataParallel::new(cpus(n), |d| build(d, 0.0), config).unwrap();
        let params = flat(dp.model()).len() as u64;
        let mut per_step = Vec::new();
        for s in 0..8 {
            step(&mut dp, &set, s).unwrap();
            per_step.push(dp.last_step_bytes_sent().unwrap());
        }
        assert_eq!(per_step[0], 0, "{wire}: a local step sends nothing");
        assert_eq!(per_step[..3], per_step[4..7], "{wire}");
        let ring = 2 * (n as u64 - 1) * params / n as u64;
        let word = if wire == Precision::F32 { 4 } else { 2 };
        // The change, plus two words agreeing on the (empty) optimizer state's size.
        assert!(
            per_step[3].abs_diff(ring * word) <= 2 * n as u64 * word + 64,
            "{wire}: {} bytes at a synchronization, {} expected for {params} parameters",
            per_step[3],
            ring * word
        );
        sent.push(per_step[3]);
    }
    let ratio = sent[1] as f64 / sent[0] as f64;
    assert!(
        (0.45..0.55).contains(&ratio),
        "bf16 sent {ratio} of f32's bytes"
    );
}

#[test]
fn a_compressed_change_keeps_replicas_identical_and_close() {
    let set = data(8 * BATCH);
    let mut plain = group(cpus(2), 0.9, Some(LocalSgd::every(2)), Precision::F32);
    let mut half = group(cpus(2), 0.9, Some(LocalSgd::every(2)), Precision::Bf16);
    for s in 0..8 {
        step(&mut plain, &set, s).unwrap();
        step(&mut half, &set, s).unwrap();
    }
    let replicas = replica_bits(&half);
    assert_eq!(replicas[0], replicas[1]);
    // The change is small beside the parameters: bf16 rounds it, not them.
    assert_close(
        &flat(half.model()),
        &flat(plain.model()),
        1e-2,
        "bf16 change",
    );
}

#[test]
fn runs_reproduce_bit_for_bit() {
    let set = data(7 * BATCH);
    let run = || {
        let local = LocalSgd::every(3).with_outer(OuterOptimizer::diloco());
        let mut dp = group(cpus(3), 0.9, Some(local), Precision::F32);
        let losses: Vec<u32> = (0..7)
            .map(|s| step(&mut dp, &set, s).unwrap().to_bits())
            .collect();
        (losses, replica_bits(&dp))
    };
    assert_eq!(run(), run());
}

#[test]
fn gpu_replicas_follow_the_cpu_ones() {
    let Some(first) = Device::test_gpu() else {
        return;
    };
    let gpus = vec![
        first,
        Device::gpu().expect("a second device on a working adapter"),
    ];
    let set = data(6 * BATCH);
    let local = LocalSgd::every(2).with_outer(OuterOptimizer::diloco());
    let mut gpu = group(gpus, 0.9, Some(local), Precision::F32);
    let mut cpu = group(cpus(2), 0.9, Some(local), Precision::F32);
    for s in 0..6 {
        step(&mut gpu, &set, s).unwrap();
        step(&mut cpu, &set, s).unwrap();
    }
    let replicas = replica_bits(&gpu);
    assert_eq!(replicas[0], replicas[1], "GPU replicas after a sync");
    assert_close(
        &flat(gpu.model()),
        &flat(cpu.model()),
        1e-4,
        "GPU against CPU",
    );
}

#[test]
fn bad_settings_are_errors() {
    let bad = [
        LocalSgd::every(0),
        LocalSgd::every(2).with_outer(OuterOptimizer {
            lr: 0.0,
            ..OuterOptimizer::default()
        }),
        LocalSgd::every(2).with_outer(OuterOptimizer {
            momentum: 1.0,
            ..OuterOptimizer::default()
        }),
        LocalSgd::every(2).with_outer(OuterOptimizer {
            nesterov: true,
            ..OuterOptimizer::default()
        }),
    ];
    for local in bad {
        let config = DataParallelConfig {
            local_sgd: Some(local),
            ..DataParallelConfig::default()
        };
        let made = DataParallel::new(cpus(2), |d| build(d, 0.0), config);
        let err = made.err().expect("refused");
        assert!(matches!(err, Error::InvalidArgument(_)), "{local:?}: {err}");
    }
}

/// A NaN in one replica's rows: that replica skips its update while the others step; under
/// `Stop` the step is an error and the group goes on, under `Skip` it is counted.
#[test]
fn a_non_finite_local_step_stops_or_is_skipped() {
    let mut set = data(6 * BATCH);
    // Step 2's first row (replica 0's) is NaN.
    set.0[2 * BATCH * FEATURES] = f32::NAN;
    for policy in [NonFinitePolicy::Stop, NonFinitePolicy::Skip] {
        let config = DataParallelConfig {
            local_sgd: Some(LocalSgd::every(2)),
            on_nonfinite: policy,
            ..DataParallelConfig::default()
        };
        let mut dp = DataParallel::new(cpus(2), |d| build(d, 0.0), config).unwrap();
        for s in 0..2 {
            step(&mut dp, &set, s).unwrap();
        }
        let before = flat(dp.replica(0).unwrap());
        let other_before = flat(dp.replica(1).unwrap());
        let result = step(&mut dp, &set, 2);
        match policy {
            NonFinitePolicy::Stop => {
                let err = result.expect_err("a NaN loss stops");
                assert!(matches!(err, Error::NonFinite(_)), "{err}");
                assert!(err.to_string().contains("replica 0"), "{err}");
            }
            NonFinitePolicy::Skip => {
                result.unwrap();
                assert_eq!(dp.skipped_steps(), 1);
            }
        }
        assert_eq!(
            bits(&flat(dp.replica(0).unwrap())),
            bits(&before),
            "{policy:?}"
        );
        assert_ne!(
            bits(&flat(dp.replica(1).unwrap())),
            bits(&other_before),
            "{policy:?}"
        );
        // The group goes on, and its next synchronization makes the replicas alike.
        step(&mut dp, &set, 3).unwrap();
        let replicas = replica_bits(&dp);
        assert_eq!(replicas[0], replicas[1], "{policy:?}");
        assert!(flat(dp.model()).iter().all(|x| x.is_finite()));
    }
}

/// Two "processes" (threads with a group each, one replica apiece, on one ring with a
/// long timeout): the first fails in a local step, when nothing is being sent. It aborts
/// the ring at once, so the other stops at its next synchronization naming the failure,
/// long before the timeout.
#[test]
fn a_replica_failing_between_syncs_stops_its_peers_at_once() {
    use ringtrain_runtime::comm::{ring_with, Communicator, RingConfig};
    use std::time::{Duration, Instant};
    let set = data(8 * BATCH);
    let config = RingConfig {
        timeout: Duration::from_secs(60),
        ..RingConfig::default()
    };
    let comms = ring_with(2, config).unwrap();
    let started = Instant::now();
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(p, comm)| {
                let set = &set;
                s.spawn(move || {
                    let config = DataParallelConfig {
                        local_sgd: Some(LocalSgd::every(4)),
                        ..DataParallelConfig::default()
                    };
                    let comms = vec![Box::new(comm) as Box<dyn Communicator>];
                    let mut dp =
                        DataParallel::with_communicators(cpus(1), comms, |d| build(d, 0.9), config)
                            .unwrap();
                    for s in 0..8 {
                        let at = s * BATCH;
                        let result = dp.step(BATCH, |model, device, rows| {
                            if p == 0 && s == 1 {
                                return Err(Error::InvalidArgument("the loader broke".into()));
                            }
                            loss_of(model, device, set, at + rows.start, at + rows.end)
                        });
                        if let Err(e) = result {
                            return e.to_string();
                        }
                    }
                    "no error".to_string()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(errors[0].contains("the loader broke"), "{}", errors[0]);
    assert!(errors[1].contains("the loader broke"), "{}", errors[1]);
}
