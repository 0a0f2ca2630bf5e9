//! Data parallelism as a user relies on it, with N = 1..4 replicas on CPU workers and on
//! GPU devices (lavapipe where there is no GPU): replicas stay bitwise identical; N
//! replicas with global batch B train like one device with batch B; runs reproduce from
//! their seed; a failing replica is an error naming it, never a hang.

mod support;

use ringtrain_models::nn::{Module, ModuleState, Sequential};
use ringtrain_models::parallel::{DataParallel, DataParallelConfig, NonFinitePolicy};
use ringtrain_models::zoo::{mlp, Activation};
use ringtrain_runtime::comm::{hierarchical, ring, Communicator};
use ringtrain_runtime::optim::{Sgd, SgdConfig};
use ringtrain_runtime::{rng_from_seed, Device, Precision, Result, Tensor};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const FEATURES: usize = 12;
const CLASSES: usize = 5;

/// A fixed synthetic classification set of `rows` rows.
fn data(rows: usize) -> (Vec<f32>, Vec<u32>) {
    support::classification(rows, FEATURES, CLASSES, 4, 42)
}

/// Replica `device`'s model and optimizer; the seed makes the initial weights, though
/// DataParallel broadcasts replica 0's anyway.
fn build(device: &Device, seed: u64) -> Result<(Sequential, Sgd)> {
    let model = mlp(
        FEATURES,
        &[16],
        CLASSES,
        Activation::Tanh,
        device,
        &mut rng_from_seed(seed),
    )?;
    let opt = Sgd::new(
        model.parameters(),
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            ..SgdConfig::default()
        },
    )?;
    Ok((model, opt))
}

fn cpu_devices(n: usize) -> Vec<Device> {
    (0..n).map(|_| Device::cpu()).collect()
}

/// `n` GPU devices, each its own wgpu device (on one adapter where there is one).
fn gpu_devices(n: usize) -> Option<Vec<Device>> {
    // Opening devices is slow on lavapipe: keep four for every test to draw from.
    static POOL: OnceLock<Option<Vec<Device>>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let first = Device::test_gpu()?;
        let more = (1..4).map(|_| Device::gpu().expect("a second device on a working adapter"));
        Some(std::iter::once(first).chain(more).collect())
    });
    pool.as_ref().map(|p| p[..n].to_vec())
}

fn dp(devices: Vec<Device>, seed: u64) -> DataParallel<Sequential, Sgd> {
    let mut next_seed = seed;
    DataParallel::new(
        devices,
        |d| {
            next_seed += 1; // different initial weights per replica, before the broadcast
            build(d, next_seed)
        },
        DataParallelConfig {
            // Small buckets, so that several all-reduces overlap backward.
            first_bucket_bytes: 256,
            bucket_bytes: 1024,
            ..DataParallelConfig::default()
        },
    )
    .unwrap()
}

/// One step over rows `at..at + batch` of the data set.
fn step(
    dp: &mut DataParallel<Sequential, Sgd>,
    set: &(Vec<f32>, Vec<u32>),
    at: usize,
    batch: usize,
) -> Result<f32> {
    dp.step(batch, |model, device, rows| {
        support::rows_loss(model, device, set, FEATURES, at + rows.start..at + rows.end)
    })
}

fn params(model: &Sequential) -> Params {
    model
        .parameters()
        .iter()
        .map(|p| p.to_vec().unwrap())
        .collect()
}

fn bits(p: &[Vec<f32>]) -> Vec<u32> {
    p.iter().flatten().map(|v| v.to_bits()).collect()
}

/// A model's parameters, tensor by tensor.
type Params = Vec<Vec<f32>>;

/// Trains `steps` steps of batch `batch` and returns every replica's parameters after
/// every step (indexed by step, then replica), and the losses.
fn train(devices: Vec<Device>, steps: usize, batch: usize) -> (Vec<Vec<Params>>, Vec<f32>) {
    let set = data(steps * batch);
    let mut dp = dp(devices, 7);
    let mut history = Vec::new();
    let mut losses = Vec::new();
    for s in 0..steps {
        losses.push(step(&mut dp, &set, s * batch, batch).unwrap());
        history.push(
            (0..dp.size())
                .map(|r| params(dp.replica(r).unwrap()))
                .collect(),
        );
    }
    (history, losses)
}

fn assert_replicas_identical(history: &[Vec<Params>], what: &str) {
    for (s, replicas) in history.iter().enumerate() {
        for (r, p) in replicas.iter().enumerate() {
            assert!(
                bits(p) == bits(&replicas[0]),
                "{what}: after step {s}, replica {r} differs from replica 0"
            );
        }
    }
}

fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>], tol: f32, what: &str) {
    for (i, (x, y)) in a.iter().flatten().zip(b.iter().flatten()).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
            "{what}: parameter element {i}: {x} vs {y}"
        );
    }
}

#[test]
fn cpu_replicas_stay_identical_and_match_one_device() {
    // Batches of 10 split unevenly over 3 and 4 replicas.
    let (one, one_losses) = train(cpu_devices(1), 6, 10);
    for n in 1..=4 {
        let (many, losses) = train(cpu_devices(n), 6, 10);
        assert_replicas_identical(&many, &format!("cpu n={n}"));
        assert_close(&many[5][0], &one[5][0], 1e-5, &format!("cpu n={n} vs 1"));
        for (a, b) in losses.iter().zip(&one_losses) {
            assert!((a - b).abs() < 1e-5, "cpu n={n}: loss {a} vs {b}");
        }
    }
    assert!(one_losses[5] < one_losses[0], "{one_losses:?}");
}

#[test]
fn gpu_replicas_stay_identical_and_match_one_device() {
    let Some(_) = gpu_devices(1) else { return };
    let (one, _) = train(gpu_devices(1).unwrap(), 3, 10);
    let (cpu, _) = train(cpu_devices(1), 3, 10);
    assert_close(&one[2][0], &cpu[2][0], 1e-4, "gpu vs cpu, n=1");
    for n in 2..=4 {
        let (many, _) = train(gpu_devices(n).unwrap(), 3, 10);
        assert_replicas_identical(&many, &format!("gpu n={n}"));
        assert_close(&many[2][0], &one[2][0], 1e-4, &format!("gpu n={n} vs 1"));
    }
}

#[test]
fn runs_reproduce_bit_for_bit() {
    let (a, la) = train(cpu_devices(3), 4, 9);
    let (b, lb) = train(cpu_devices(3), 4, 9);
    assert_eq!(bits(&a[3][0]), bits(&b[3][0]));
    assert_eq!(la, lb);
}

#[test]
fn a_batch_smaller_than_the_group_still_trains() {
    // 2 rows over 4 replicas: two replicas get no rows and contribute zero gradients.
    let (one, _) = train(cpu_devices(1), 3, 2);
    let (four, _) = train(cpu_devices(4), 3, 2);
    assert_replicas_identical(&four, "batch 2 over 4");
    assert_close(&four[2][0], &one[2][0], 1e-5, "batch 2 over 4 vs 1");
}

#[test]
fn a_failing_replica_is_named_and_stops_the_group() {
    let set = data(20);
    let mut dp = dp(cpu_devices(4), 1);
    step(&mut dp, &set, 0, 8).unwrap();
    let started = Instant::now();
    let err = dp
        .step(8, |model, device, rows| {
            if rows.start == 4 {
                // Replica 2 of 4 (rows 4..6) gets a label out of range.
                let xs = Tensor::zeros((rows.len(), FEATURES), device)?;
                return model.forward(&xs)?.cross_entropy(&[99, 99]);
            }
            let xs = Tensor::zeros((rows.len(), FEATURES), device)?;
            model.forward(&xs)?.cross_entropy(&vec![0; rows.len()])
        })
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("peer 2 failed") && err.contains("99"), "{err}");
    // The group does not limp on.
    let again = step(&mut dp, &set, 0, 8).unwrap_err().to_string();
    assert!(again.contains("earlier failure"), "{again}");
}

#[test]
fn a_panicking_replica_is_named() {
    let mut dp = dp(cpu_devices(3), 1);
    let started = Instant::now();
    let err = dp
        .step(6, |model, device, rows| {
            if rows.start == 2 {
                panic!("bug in user code");
            }
            let xs = Tensor::zeros((rows.len(), FEATURES), device)?;
            model.forward(&xs)?.cross_entropy(&vec![0; rows.len()])
        })
        .unwrap_err()
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.contains("peer 1 failed") && err.contains("panicked: bug in user code"),
        "{err}"
    );
}

/// A model with one hidden layer of `hidden` units, and plain SGD: replicas that differ
/// in `hidden` differ in their parameters' shapes.
fn build_hidden(device: &Device, hidden: usize) -> Result<(Sequential, Sgd)> {
    let model = mlp(
        FEATURES,
        &[hidden],
        CLASSES,
        Activation::Relu,
        device,
        &mut rng_from_seed(0),
    )?;
    let opt = Sgd::new(model.parameters(), SgdConfig::default())?;
    Ok((model, opt))
}

#[test]
fn replicas_must_have_the_same_parameters() {
    let mut call = 0;
    let err = DataParallel::new(
        cpu_devices(2),
        |d| {
            call += 1;
            build_hidden(d, if call == 1 { 16 } else { 8 })
        },
        DataParallelConfig::default(),
    )
    .err()
    .expect("mismatched replicas must be refused")
    .to_string();
    assert!(err.contains("replica 1 has other parameters"), "{err}");
    assert!(DataParallel::<Sequential, Sgd>::new(
        Vec::new(),
        |d| build(d, 0),
        DataParallelConfig::default()
    )
    .is_err());
}

/// A model with a parameter its loss never uses.
#[derive(Module)]
struct WithSpare {
    #[module(flatten)]
    net: Sequential,
    spare: ringtrain_runtime::Var,
}

impl Module for WithSpare {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.net.forward(x)
    }
}

#[test]
fn parameters_without_gradients_are_left_alone_as_on_one_device() {
    let set = data(24);
    for n in [1, 3] {
        let mut dp = DataParallel::new(
            cpu_devices(n),
            |d| {
                let (net, _) = build(d, 3)?;
                let spare = ringtrain_runtime::Var::from_vec(vec![1.0, -2.0], 2, d)?;
                let model = WithSpare { net, spare };
                // Weight decay and momentum would move a parameter given a zero gradient.
                let opt = Sgd::new(
                    model.parameters(),
                    SgdConfig {
                        lr: 0.1,
                        momentum: 0.9,
                        weight_decay: 0.1,
                        ..SgdConfig::default()
                    },
                )?;
                Ok((model, opt))
            },
            DataParallelConfig::default(),
        )
        .unwrap();
        for s in 0..3 {
            dp.step(8, |model, device, rows| {
                let (lo, hi) = (s * 8 + rows.start, s * 8 + rows.end);
                let xs = Tensor::from_slice(
                    &set.0[lo * FEATURES..hi * FEATURES],
                    (hi - lo, FEATURES),
                    device,
                )?;
                model.forward(&xs)?.cross_entropy(&set.1[lo..hi])
            })
            .unwrap();
        }
        for r in 0..n {
            let spare = dp.replica(r).unwrap().spare.to_vec().unwrap();
            assert_eq!(
                spare,
                vec![1.0, -2.0],
                "n={n}: replica {r} moved an unused parameter"
            );
        }
    }
}

/// Trains `steps` steps in "processes" (threads here, each with its own DataParallel and
/// `per_process[p]` replicas): what an MPI job does, with in-process communicators in
/// place of MPI. Returns each process's replicas' final parameters.
fn train_as_processes(
    comms: Vec<Vec<Box<dyn Communicator>>>,
    steps: usize,
    batch: usize,
) -> Vec<Vec<Params>> {
    let set = data(steps * batch);
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(p, comms)| {
                let set = &set;
                s.spawn(move || {
                    let mut dp = DataParallel::with_communicators(
                        cpu_devices(comms.len()),
                        comms,
                        // Rank 0's weights are `train`'s (seed 8); the others' are overwritten.
                        |d| build(d, if p == 0 { 8 } else { 100 + p as u64 }),
                        DataParallelConfig {
                            first_bucket_bytes: 256,
                            bucket_bytes: 1024,
                            ..DataParallelConfig::default()
                        },
                    )
                    .unwrap();
                    for st in 0..steps {
                        step(&mut dp, set, st * batch, batch).unwrap();
                    }
                    (0..dp.size())
                        .map(|r| params(dp.replica(r).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn boxed(comms: Vec<impl Communicator + 'static>) -> Vec<Box<dyn Communicator>> {
    comms
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Communicator>)
        .collect()
}

#[test]
fn one_replica_per_process_trains_like_one_process() {
    let (steps, batch) = (4, 30);
    // Two "processes" of one replica each.
    let mut ring = ring(2).unwrap();
    let r1 = ring.pop().unwrap();
    let r0 = ring.pop().unwrap();
    let out = train_as_processes(vec![boxed(vec![r0]), boxed(vec![r1])], steps, batch);
    assert_eq!(
        bits(&out[0][0]),
        bits(&out[1][0]),
        "the processes' replicas differ"
    );
    let (history, _) = train(cpu_devices(2), steps, batch);
    // Same ring schedule, same shards by rank: the same bits as one process.
    assert_eq!(bits(&out[0][0]), bits(&history[steps - 1][0]));
}

#[test]
fn two_level_groups_train_like_one_ring() {
    let (steps, batch) = (4, 30);
    // Two "nodes" of two replicas each, their leaders joined by a ring.
    let leaders = ring(2).unwrap();
    let comms: Vec<Vec<Box<dyn Communicator>>> = std::thread::scope(|s| {
        let hs: Vec<_> = leaders
            .into_iter()
            .map(|l| {
                s.spawn(move || boxed(hierarchical(boxed(ring(2).unwrap()), Box::new(l)).unwrap()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let out = train_as_processes(comms, steps, batch);
    for p in out.iter().flatten() {
        assert_eq!(bits(p), bits(&out[0][0]), "replicas differ");
    }
    let (history, _) = train(cpu_devices(4), steps, batch);
    assert_close(
        &out[0][0],
        &history[steps - 1][0],
        1e-5,
        "hierarchical vs one ring of 4",
    );
}

#[test]
fn ranks_that_build_different_models_all_get_an_error() {
    let started = Instant::now();
    let ring = ring(3).unwrap();
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = ring
            .into_iter()
            .map(|c| {
                s.spawn(move || {
                    let hidden = if c.rank() == 2 { 8 } else { 16 };
                    let err = DataParallel::with_communicators(
                        cpu_devices(1),
                        boxed(vec![c]),
                        |d| build_hidden(d, hidden),
                        DataParallelConfig::default(),
                    );
                    err.err().expect("a mismatch must be refused").to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for e in &errors {
        assert!(e.contains("ranks [2] built other parameters"), "{e}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn communicators_must_form_one_group() {
    let mut a = ring(2).unwrap();
    let b = ring(2).unwrap();
    // Two rank-0 communicators for two devices.
    let comms = vec![a.remove(0), b.into_iter().next().unwrap()];
    let err = DataParallel::with_communicators(
        cpu_devices(2),
        boxed(comms),
        |d| build(d, 0),
        DataParallelConfig::default(),
    )
    .err()
    .expect("duplicate ranks must be refused")
    .to_string();
    assert!(err.contains("distinct ranks"), "{err}");
}

/// A group whose replica of rank 1 sees a NaN in its input at step `poisoned`: the
/// averaged gradients are NaN on every replica.
fn poisoned_run(
    policy: NonFinitePolicy,
    poisoned: usize,
) -> (DataParallel<Sequential, Sgd>, Vec<Result<f32>>, Vec<Params>) {
    let data = data(64);
    let mut dp = DataParallel::new(
        cpu_devices(2),
        |d| build(d, 1),
        DataParallelConfig {
            on_nonfinite: policy,
            ..DataParallelConfig::default()
        },
    )
    .unwrap();
    let (mut results, mut history) = (Vec::new(), vec![params(dp.model())]);
    for s in 0..4 {
        let result = dp.step(16, |model, device, rows| {
            let lo = s * 16 + rows.start;
            let mut xs = data.0[lo * FEATURES..(lo + rows.len()) * FEATURES].to_vec();
            if s == poisoned && rows.start > 0 {
                xs[3] = f32::NAN;
            }
            let xs = Tensor::from_vec(xs, (rows.len(), FEATURES), device)?;
            model
                .forward(&xs)?
                .cross_entropy(&data.1[lo..lo + rows.len()])
        });
        results.push(result);
        history.push(params(dp.model()));
    }
    (dp, results, history)
}

#[test]
fn a_non_finite_step_stops_or_is_skipped_and_never_reaches_the_parameters() {
    let (dp, results, history) = poisoned_run(NonFinitePolicy::Stop, 1);
    let err = results[1].as_ref().unwrap_err();
    assert!(
        matches!(err, ringtrain_runtime::Error::NonFinite(_)),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("loss is NaN")
            && msg.contains("(the first in `")
            && msg.contains("not applied"),
        "{msg}"
    );
    assert_eq!(
        bits(&history[2]),
        bits(&history[1]),
        "the NaN step changed parameters"
    );
    // The group goes on: the later steps train, and every value stays finite.
    assert!(results[2].is_ok() && results[3].is_ok());
    assert_ne!(bits(&history[3]), bits(&history[2]));
    assert!(history[4].iter().flatten().all(|x| x.is_finite()));
    assert_eq!(dp.skipped_steps(), 0);
    for r in 1..dp.size() {
        assert_eq!(params(dp.replica(r).unwrap()), params(dp.model()));
    }

    let (dp, results, history) = poisoned_run(NonFinitePolicy::Skip, 2);
    assert!(results.iter().all(Result::is_ok));
    assert!(results[2].as_ref().unwrap().is_nan());
    assert_eq!(dp.skipped_steps(), 1);
    assert_eq!(
        bits(&history[3]),
        bits(&history[2]),
        "the skipped step changed parameters"
    );
    assert!(history[4].iter().flatten().all(|x| x.is_finite()));
    // Up to the skipped step, the run is the one without a NaN.
    let (_, _, clean) = poisoned_run(NonFinitePolicy::Skip, usize::MAX);
    assert_eq!(bits(&history[2]), bits(&clean[2]));
}

/// Trains `steps` steps with `config`, returning replica 0's parameters, every replica's
/// bits, and the losses.
fn train_with(
    devices: Vec<Device>,
    config: DataParallelConfig,
    steps: usize,
    batch: usize,
) -> (Params, Vec<Vec<u32>>, Vec<f32>) {
    let set = data(steps * batch);
    let mut dp = DataParallel::new(devices, |d| build(d, 7), config).unwrap();
    let losses = (0..steps)
        .map(|s| step(&mut dp, &set, s * batch, batch).unwrap())
        .collect();
    let all = (0..dp.size())
        .map(|r| bits(&params(dp.replica(r).unwrap())))
        .collect();
    (params(dp.model()), all, losses)
}

#[test]
fn gradient_accumulation_trains_like_one_piece() {
    let plain = DataParallelConfig::default();
    let (one, _, one_losses) = train_with(cpu_devices(1), plain.clone(), 5, 12);
    for (n, pieces) in [(1, 4), (2, 3), (3, 5)] {
        let config = DataParallelConfig {
            grad_accum: pieces,
            ..plain.clone()
        };
        let (p, replicas, losses) = train_with(cpu_devices(n), config, 5, 12);
        assert!(replicas.iter().all(|r| *r == replicas[0]), "x{n}");
        assert_close(&p, &one, 1e-5, &format!("{n} replicas, {pieces} pieces"));
        for (a, b) in losses.iter().zip(&one_losses) {
            assert!((a - b).abs() < 1e-5, "{n}x{pieces}: loss {a} vs {b}");
        }
    }
    let zero = DataParallelConfig {
        grad_accum: 0,
        ..plain
    };
    assert!(DataParallel::new(cpu_devices(1), |d| build(d, 7), zero).is_err());
}

/// Gradients sent as bf16 or f16: every replica holds the same bits after every step, the
/// run follows the uncompressed one to the formats' precision, each step sends about half
/// the bytes, and two CPU replicas and two GPU ones (lavapipe without a GPU) agree.
#[test]
fn compressed_gradients_keep_replicas_identical() {
    let plain = DataParallelConfig {
        first_bucket_bytes: 256,
        bucket_bytes: 1024,
        ..DataParallelConfig::default()
    };
    let bytes_per_step = |config: DataParallelConfig, devices: Vec<Device>| {
        let set = data(10);
        let mut dp = DataParallel::new(devices, |d| build(d, 7), config).unwrap();
        step(&mut dp, &set, 0, 10).unwrap();
        dp.last_step_bytes_sent().unwrap()
    };
    let (exact, _, exact_losses) = train_with(cpu_devices(3), plain.clone(), 5, 12);
    let f32_bytes = bytes_per_step(plain.clone(), cpu_devices(3));
    for wire in [Precision::Bf16, Precision::F16] {
        let config = config_for(wire, &plain);
        let (p, replicas, losses) = train_with(cpu_devices(3), config.clone(), 5, 12);
        assert!(replicas.iter().all(|r| *r == replicas[0]), "{wire}");
        let tol = 8.0 * wire.unit_roundoff();
        assert_close(&p, &exact, tol, &format!("{wire} against f32"));
        for (a, b) in losses.iter().zip(&exact_losses) {
            assert!((a - b).abs() < tol, "{wire}: loss {a} vs {b}");
        }
        let sent = bytes_per_step(config.clone(), cpu_devices(3));
        // Gradients halve; the loss and flags (a few words) stay f32.
        assert!(
            sent * 2 < f32_bytes + 200,
            "{wire}: {sent} bytes against {f32_bytes}"
        );
        if let Some(gpus) = gpu_devices(2) {
            let (gpu, gpu_replicas, _) = train_with(gpus, config, 5, 12);
            assert!(
                gpu_replicas.iter().all(|r| *r == gpu_replicas[0]),
                "gpu {wire}"
            );
            let (cpu, _, _) = train_with(cpu_devices(2), config_for(wire, &plain), 5, 12);
            // Two replicas, on either kind of device: the same ring, the same roundings.
            assert_close(&gpu, &cpu, tol, &format!("gpu against cpu, {wire}"));
        }
    }
}

/// `plain` with gradients sent as `wire`.
fn config_for(wire: Precision, plain: &DataParallelConfig) -> DataParallelConfig {
    DataParallelConfig {
        grad_compression: wire,
        ..plain.clone()
    }
}

/// The averaged gradient is clipped alike on every replica, as one device clips its own.
#[test]
fn clipping_by_global_norm_matches_one_device() {
    let (batch, steps, max_norm) = (10, 4, 0.05);
    let set = data(steps * batch);
    // One device, clipped by hand with the library's clip_grad_norm.
    let (model, mut opt) = build(&Device::cpu(), 7).unwrap();
    let mut norms = Vec::new();
    for s in 0..steps {
        let (lo, hi) = (s * batch, (s + 1) * batch);
        let x = Tensor::from_slice(
            &set.0[lo * FEATURES..hi * FEATURES],
            (batch, FEATURES),
            &Device::cpu(),
        )
        .unwrap();
        let loss = model
            .forward(&x)
            .unwrap()
            .cross_entropy(&set.1[lo..hi])
            .unwrap();
        let mut grads = loss.backward().unwrap();
        let norm =
            ringtrain_runtime::optim::clip_grad_norm(&model.parameters(), &mut grads, max_norm)
                .unwrap()
                .unwrap();
        norms.push(norm.to_scalar().unwrap());
        ringtrain_runtime::optim::Optimizer::step(&mut opt, &grads).unwrap();
    }
    assert!(
        norms.iter().all(|&n| n > max_norm),
        "{norms:?}: clipping must bite"
    );
    let config = DataParallelConfig {
        clip_grad_norm: Some(max_norm),
        ..DataParallelConfig::default()
    };
    for n in [1, 2, 3] {
        let mut dp = DataParallel::new(cpu_devices(n), |d| build(d, 7), config.clone()).unwrap();
        for (s, want) in norms.iter().enumerate() {
            step(&mut dp, &set, s * batch, batch).unwrap();
            let norm = dp.last_grad_norm().unwrap();
            assert!(
                (norm - want).abs() < 1e-4 * want,
                "step {s}: {norm} vs {want}"
            );
        }
        assert_close(
            &params(dp.model()),
            &params(&model),
            1e-5,
            &format!("x{n} clipped"),
        );
        let replicas: Vec<_> = (0..n)
            .map(|r| bits(&params(dp.replica(r).unwrap())))
            .collect();
        assert!(replicas.iter().all(|r| *r == replicas[0]));
    }
    // Unclipped, the same steps end elsewhere: the clip did something.
    let (unclipped, _, _) = train_with(cpu_devices(2), DataParallelConfig::default(), steps, batch);
    let moved = unclipped
        .iter()
        .flatten()
        .zip(params(&model).iter().flatten())
        .any(|(a, b)| (a - b).abs() > 1e-3);
    assert!(moved);
}

#[test]
fn a_loss_no_parameter_reaches_is_an_error_naming_the_problem() {
    let mut dp = DataParallel::new(
        cpu_devices(2),
        |d| build(d, 7),
        DataParallelConfig::default(),
    )
    .unwrap();
    let err = dp
        .step(4, |_, device, rows| {
            Tensor::full(rows.len() as f32, (), device)
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("no trainable variable"), "{err}");
}
