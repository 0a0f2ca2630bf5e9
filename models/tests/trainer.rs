//! The Trainer as a user's own program drives it: a model that is not a classifier trains
//! and reports; a run stopped mid-way and resumed ends bit for bit as the uninterrupted
//! one (parameters and every report) on one CPU, two CPU replicas and the GPU (lavapipe
//! without one); clipping gives the same parameters on one device and on two; gradient
//! accumulation is the same step; schedules set each step's learning rate; non-finite
//! steps stop or are skipped; resumes with other settings, and new runs over old
//! checkpoints, are refused; local SGD resumes bit for bit too, and evaluates and saves
//! the group's model.

use ringtrain_models::checkpoint::Checkpoint;
use ringtrain_models::data::{DataSource, InMemory, InMemoryBatch};
use ringtrain_models::nn::{Dropout, Linear, Module, ModuleState};
use ringtrain_models::parallel::{Balance, LocalSgd, NonFinitePolicy, OuterOptimizer};
use ringtrain_models::train::{
    Backend, CheckpointConfig, DeviceName, Devices, Every, Faults, Record, Schedule, Scores,
    TrainConfig, Trained, Trainer, BALANCE_KEY,
};
use ringtrain_runtime::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, Sgd, SgdConfig};
use ringtrain_runtime::{no_grad, rng_from_seed, Device, Error, Result, Tensor};

const FEATURES: usize = 6;
const CLASSES: u32 = 3;

/// A model of the user's own: dropout (a random stream), two layers.
#[derive(Module)]
struct Net {
    fc1: Linear,
    drop: Dropout,
    fc2: Linear,
}

impl Module for Net {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.drop.forward(&self.fc1.forward(x)?.relu()?)?;
        self.fc2.forward(&h)
    }
}

/// With dropout `p`. Replicas (and micro-batches) draw their own masks, so only a model
/// without dropout trains alike on one device and on several.
fn net(device: &Device, outputs: usize, p: f32) -> Result<Net> {
    let rng = &mut rng_from_seed(3);
    Ok(Net {
        fc1: Linear::new(FEATURES, 16, device, rng)?,
        drop: Dropout::new(p, 11)?,
        fc2: Linear::new(16, outputs, device, rng)?,
    })
}

fn inputs(n: usize, seed: u64) -> Vec<f32> {
    Tensor::rand_uniform(
        -1.0,
        1.0,
        (n, FEATURES),
        &mut rng_from_seed(seed),
        &Device::cpu(),
    )
    .unwrap()
    .to_vec()
    .unwrap()
}

fn classes(n: usize, seed: u64) -> InMemory {
    let x = inputs(n, seed);
    let labels = x
        .chunks(FEATURES)
        .map(|r| (((r[0] + r[1] + 2.0) * 0.75) as u32).min(CLASSES - 1))
        .collect();
    InMemory::classification(x, &[FEATURES], labels, CLASSES as usize).unwrap()
}

type Built = (Net, Box<dyn Optimizer + Send>);

fn adamw(device: &Device) -> Result<Built> {
    adamw_with_dropout(device, 0.0)
}

fn adamw_with_dropout(device: &Device, p: f32) -> Result<Built> {
    let model = net(device, CLASSES as usize, p)?;
    // No decay for biases: two groups.
    let groups = ParamGroup::split(
        model.named_parameters(),
        |_, v| v.rank() >= 2,
        |g| g.with_weight_decay(0.0),
    );
    let opt = AdamW::with_groups(
        groups,
        AdamWConfig {
            lr: 0.02,
            weight_decay: 0.05,
            ..AdamWConfig::default()
        },
    )?;
    Ok((model, Box::new(opt)))
}

fn cross_entropy(model: &Net, device: &Device, batch: &InMemoryBatch) -> Result<Tensor> {
    model
        .forward(&batch.inputs(device)?)?
        .cross_entropy(batch.labels()?)
}

/// Loss and accuracy of `model` on `data`, as a trainer's evaluation.
fn scores(model: &Net, device: &Device, data: &InMemory) -> Result<Scores> {
    let all: Vec<usize> = (0..data.len()).collect();
    let batch = data.batch(&all)?;
    let logits = model.forward(&batch.inputs(device)?)?;
    let loss = logits.cross_entropy(batch.labels()?)?.to_scalar()?;
    let right = logits
        .argmax()?
        .iter()
        .zip(batch.labels()?)
        .filter(|(a, b)| a == b)
        .count();
    Ok(vec![
        ("val_loss".into(), f64::from(loss)),
        ("val_accuracy".into(), right as f64 / data.len() as f64),
    ])
}

fn bits(model: &Net) -> Vec<u32> {
    model
        .parameters()
        .iter()
        .flat_map(|p| p.to_vec().unwrap())
        .map(f32::to_bits)
        .collect()
}

fn values(model: &Net) -> Vec<f32> {
    model
        .parameters()
        .iter()
        .flat_map(|p| p.to_vec().unwrap())
        .collect()
}

/// What of a report must repeat exactly: where, the train loss and the scores.
fn exact(history: &[Record]) -> Vec<(u64, u64, Vec<u64>)> {
    history
        .iter()
        .map(|r| {
            let scores = r.scores.iter().map(|s| s.1.to_bits()).collect();
            (r.step, r.train_loss.to_bits(), scores)
        })
        .collect()
}

fn quiet(devices: Devices) -> TrainConfig {
    TrainConfig {
        devices,
        quiet: true,
        ..TrainConfig::default()
    }
}

/// (name, devices) a run should behave alike on: one CPU, two CPU replicas, one and two
/// GPU devices (lavapipe without a GPU).
fn setups() -> Vec<(&'static str, Devices)> {
    let mut s = vec![
        ("cpu x1", Devices::of(Backend::Cpu, Some(1))),
        ("cpu x2", Devices::of(Backend::Cpu, Some(2))),
    ];
    if ringtrain_runtime::Device::test_gpu().is_some() {
        s.push(("gpu x1", Devices::of(Backend::Gpu, Some(1))));
        s.push(("gpu x2", Devices::of(Backend::Gpu, Some(2))));
    }
    s
}

#[test]
fn a_model_that_is_not_a_classifier_trains_and_reports() {
    // y = sin(x0) + x1 * x2: a regression of 2 outputs (the second the first's double).
    let x = inputs(256, 1);
    let y: Vec<f32> = x
        .chunks(FEATURES)
        .flat_map(|r| {
            let v = r[0].sin() + r[1] * r[2];
            [v, 2.0 * v]
        })
        .collect();
    let data = InMemory::regression(x, &[FEATURES], y, &[2]).unwrap();
    let (train, val) = data.split_at(200).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.jsonl");
    let config = TrainConfig {
        epochs: Some(30),
        batch_size: 20,
        metrics_out: Some(metrics.clone()),
        eval_every: Every::Epochs(10),
        schedule: Schedule::Cosine {
            warmup: 5,
            total: None,
            min_factor: 0.1,
        },
        ..quiet(Devices::of(Backend::Cpu, Some(1)))
    };
    let mse = |model: &Net, device: &Device, batch: &InMemoryBatch| {
        model
            .forward(&batch.inputs(device)?)?
            .mse(&batch.targets(device)?)
    };
    let trained = Trainer::new(config)
        .unwrap()
        .fit_with_eval(
            |d| {
                let model = net(d, 2, 0.1)?;
                let opt = Sgd::new(
                    model.parameters(),
                    SgdConfig {
                        lr: 0.1,
                        momentum: 0.9,
                        ..SgdConfig::default()
                    },
                )?;
                Ok((model, opt))
            },
            &train,
            mse,
            |model, device| {
                let all: Vec<usize> = (0..val.len()).collect();
                let batch = val.batch(&all)?;
                Ok(vec![(
                    "val_mse".into(),
                    f64::from(mse(model, device, &batch)?.to_scalar()?),
                )])
            },
        )
        .unwrap();
    let h = &trained.history;
    assert_eq!(h.len(), 3, "a report every 10 epochs");
    assert_eq!((h[2].epoch, h[2].step), (30, 300));
    assert!(h[2].train_loss < 0.5 * h[0].train_loss, "{h:?}");
    assert!(h[2].score("val_mse").unwrap() < 0.05, "{h:?}");
    // The cosine schedule reached its floor at the end.
    assert!((h[2].lr - 0.01).abs() < 1e-5, "lr {}", h[2].lr);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["step"], 300);
    assert_eq!(
        Record::from_json(&lines[2]).unwrap().score("val_mse"),
        h[2].score("val_mse")
    );
    assert_eq!(trained.epochs, 30);
    // The trained model is the caller's: in training mode again, and usable.
    let pred = no_grad(|| {
        trained
            .model
            .forward(&Tensor::zeros((1, FEATURES), &Device::cpu()).unwrap())
    });
    assert_eq!(pred.unwrap().dims(), &[1, 2]);
}

/// The resume test's run: two epochs of 5 batches, with every part of the state a resume
/// must restore (AdamW moments and groups, a dropout stream, a schedule, clipping,
/// accumulation) and reports that cross the epoch boundary.
fn resume_config(devices: Devices, dir: &std::path::Path) -> TrainConfig {
    TrainConfig {
        epochs: Some(2),
        batch_size: 10,
        seed: 5,
        schedule: Schedule::Cosine {
            warmup: 2,
            total: None,
            min_factor: 0.2,
        },
        clip_grad_norm: Some(0.5),
        grad_accum: 2,
        eval_every: Every::Steps(4),
        checkpoint: Some(CheckpointConfig {
            dir: dir.to_path_buf(),
            every: Every::Steps(3),
            keep: 2,
        }),
        ..quiet(devices)
    }
}

/// Trains the AdamW model of `adamw` on `data` as `config` says.
fn train_with(
    config: TrainConfig,
    data: &InMemory,
) -> Result<Trained<Net, Box<dyn Optimizer + Send>>> {
    Trainer::new(config)?.fit(adamw, data, cross_entropy)
}

fn fit(
    config: TrainConfig,
    train: &InMemory,
    val: &InMemory,
) -> Result<Trained<Net, Box<dyn Optimizer + Send>>> {
    let build = |d: &Device| adamw_with_dropout(d, 0.2);
    Trainer::new(config)?.fit_with_eval(build, train, cross_entropy, |m, d| scores(m, d, val))
}

#[test]
fn a_stopped_run_resumes_bit_for_bit_on_every_setup() {
    let (train, val) = (classes(45, 2), classes(30, 3));
    for (name, devices) in setups() {
        let tmp = tempfile::tempdir().unwrap();
        let (whole_dir, split_dir) = (tmp.path().join("whole"), tmp.path().join("split"));
        let whole = fit(resume_config(devices.clone(), &whole_dir), &train, &val).unwrap();
        assert_eq!(whole.steps, 10, "{name}");
        assert_eq!(
            whole.history.iter().map(|r| r.step).collect::<Vec<_>>(),
            [4, 8, 10],
            "{name}"
        );

        let mut stopped = resume_config(devices.clone(), &split_dir);
        stopped.faults = Faults {
            stop_after_step: Some(7),
            ..Faults::default()
        };
        let err = fit(stopped, &train, &val).err().expect("stopped");
        assert!(err.to_string().contains("stopped after step 7"), "{err}");
        let mut resumed = resume_config(devices.clone(), &split_dir);
        resumed.resume = true;
        let split = fit(resumed, &train, &val).unwrap();
        assert_eq!(bits(&split.model), bits(&whole.model), "{name}: parameters");
        assert_eq!(
            exact(&split.history),
            exact(&whole.history),
            "{name}: reports"
        );
        // The dropout stream went on from where the checkpoint left it.
        assert_eq!(
            split.model.drop.named_rng_streams()[0].1.position(),
            whole.model.drop.named_rng_streams()[0].1.position()
        );
    }
}

/// ZeRO-1 on two replicas: the optimizer state gathered into each checkpoint resumes
/// the sharded run bit for bit, and a run without sharding resumes from it too (the
/// checkpoint holds the whole state; sums differ only in order).
#[test]
fn a_zero1_run_resumes_bit_for_bit_and_unsharded() {
    let (train, val) = (classes(45, 2), classes(30, 3));
    for (name, devices) in setups().into_iter().filter(|(n, _)| n.ends_with("x2")) {
        let tmp = tempfile::tempdir().unwrap();
        let (whole_dir, split_dir) = (tmp.path().join("whole"), tmp.path().join("split"));
        let config = |dir: &std::path::Path, zero: u8| TrainConfig {
            zero,
            ..resume_config(devices.clone(), dir)
        };
        let whole = fit(config(&whole_dir, 1), &train, &val).unwrap();
        let plain = fit(config(&tmp.path().join("plain"), 0), &train, &val).unwrap();
        let close = |a: &Net, b: &Net| {
            values(a)
                .iter()
                .zip(values(b))
                .all(|(x, y)| (x - y).abs() <= 1e-4 * x.abs().max(1.0))
        };
        assert!(
            close(&whole.model, &plain.model),
            "{name}: ZeRO-1 against plain"
        );
        let mut stopped = config(&split_dir, 1);
        stopped.faults = Faults {
            stop_after_step: Some(7),
            ..Faults::default()
        };
        fit(stopped, &train, &val).err().expect("stopped");
        let mut resumed = config(&split_dir, 1);
        resumed.resume = true;
        let split = fit(resumed, &train, &val).unwrap();
        assert_eq!(bits(&split.model), bits(&whole.model), "{name}: parameters");
        assert_eq!(exact(&split.history), exact(&whole.history), "{name}");
        let mut unsharded = config(&split_dir, 0);
        unsharded.resume = true;
        let other = fit(unsharded, &train, &val).unwrap();
        assert!(
            close(&other.model, &whole.model),
            "{name}: resumed unsharded"
        );
    }
}

/// Auto-balancing on a CPU and a GPU replica (lavapipe without a GPU; two CPUs where
/// there is none): the measured weights go into every checkpoint, and a resumed run
/// takes them up instead of timing again.
#[test]
fn an_auto_balanced_run_keeps_its_weights_across_a_resume() {
    let (train, val) = (classes(45, 2), classes(30, 3));
    let second = match ringtrain_runtime::Device::test_gpu() {
        Some(_) => DeviceName::Gpu(None),
        None => DeviceName::Cpu,
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = || TrainConfig {
        balance: Balance::Auto { steps: 2 },
        ..resume_config(Devices::List(vec![DeviceName::Cpu, second]), tmp.path())
    };
    let newest = || {
        let mut files: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        files.sort();
        let c = Checkpoint::load(files.last().unwrap()).unwrap();
        let weights: Vec<f64> = serde_json::from_str(c.metadata(BALANCE_KEY).unwrap()).unwrap();
        weights
    };
    let mut stopped = config();
    stopped.faults = Faults {
        stop_after_step: Some(7),
        ..Faults::default()
    };
    fit(stopped, &train, &val).err().expect("stopped");
    let measured = newest();
    assert_eq!(measured.len(), 2);
    assert!(
        measured.iter().all(|w| w.is_finite() && *w > 0.0),
        "{measured:?}"
    );
    let mut resumed = config();
    resumed.resume = true;
    let done = fit(resumed, &train, &val).unwrap();
    assert_eq!(done.steps, 10);
    assert_eq!(newest(), measured, "the resumed run timed again");
}

/// Local SGD with DiLoCo's outer momentum, synchronizing every 2 steps and before every
/// report and checkpoint: a run stopped between synchronizations resumes from its last
/// checkpoint (a synchronization) and ends as the uninterrupted run, bit for bit; the
/// model it returns is the group's.
#[test]
fn a_local_sgd_run_resumes_bit_for_bit() {
    let (train, val) = (classes(45, 2), classes(30, 3));
    let local = LocalSgd::every(2).with_outer(OuterOptimizer::diloco());
    for (name, devices) in setups().into_iter().filter(|(n, _)| n.ends_with("x2")) {
        let tmp = tempfile::tempdir().unwrap();
        let (whole_dir, split_dir) = (tmp.path().join("whole"), tmp.path().join("split"));
        let config = |dir: &std::path::Path| TrainConfig {
            local_sgd: Some(local),
            ..resume_config(devices.clone(), dir)
        };
        let whole = fit(config(&whole_dir), &train, &val).unwrap();
        assert_eq!(whole.steps, 10, "{name}");
        let mut stopped = config(&split_dir);
        stopped.faults = Faults {
            stop_after_step: Some(7),
            ..Faults::default()
        };
        let err = fit(stopped, &train, &val).err().expect("stopped");
        assert!(err.to_string().contains("stopped after step 7"), "{err}");
        let mut resumed = config(&split_dir);
        resumed.resume = true;
        let split = fit(resumed, &train, &val).unwrap();
        assert_eq!(bits(&split.model), bits(&whole.model), "{name}: parameters");
        assert_eq!(
            exact(&split.history),
            exact(&whole.history),
            "{name}: reports"
        );
        // A resume under other local SGD settings is another run.
        let mut other = config(&split_dir);
        other.resume = true;
        other.local_sgd = Some(LocalSgd::every(3));
        let err = fit(other, &train, &val).err().expect("refused");
        assert!(err.to_string().contains("local_sgd"), "{name}: {err}");
        // Local SGD against gradient averaging: another trajectory, still training.
        let averaged = fit(
            resume_config(devices.clone(), &tmp.path().join("avg")),
            &train,
            &val,
        )
        .unwrap();
        assert_ne!(bits(&averaged.model), bits(&whole.model), "{name}");
    }
    // One replica has nothing to average.
    let one = TrainConfig {
        local_sgd: Some(local),
        ..quiet(Devices::of(Backend::Cpu, Some(1)))
    };
    let err = train_with(one, &train).err().expect("refused");
    assert!(err.to_string().contains("--sync-every"), "{err}");
}

#[test]
fn clipping_gives_the_same_parameters_on_one_device_and_on_two() {
    let train = classes(60, 4);
    let run = |n: usize, clip: Option<f32>| {
        let config = TrainConfig {
            epochs: Some(3),
            batch_size: 12,
            clip_grad_norm: clip,
            ..quiet(Devices::of(Backend::Cpu, Some(n)))
        };
        let trained = train_with(config, &train).unwrap();
        values(&trained.model)
    };
    let (one, two) = (run(1, Some(0.05)), run(2, Some(0.05)));
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() < 2e-5 * (1.0 + a.abs()), "{a} vs {b}");
    }
    let unclipped = run(1, None);
    assert!(
        one.iter()
            .zip(&unclipped)
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "a clip this tight must change the run"
    );
}

#[test]
fn gradient_accumulation_is_the_same_step() {
    let train = classes(40, 6);
    let run = |n: usize, accum: usize| {
        let config = TrainConfig {
            epochs: Some(2),
            batch_size: 10,
            grad_accum: accum,
            ..quiet(Devices::of(Backend::Cpu, Some(n)))
        };
        let t = train_with(config, &train).unwrap();
        (values(&t.model), t.history.last().unwrap().train_loss)
    };
    let (plain, loss) = run(1, 1);
    for (n, accum) in [(1, 3), (2, 2), (1, 10)] {
        let (p, l) = run(n, accum);
        assert!(
            (l - loss).abs() < 1e-5,
            "x{n} accum {accum}: loss {l} vs {loss}"
        );
        for (a, b) in p.iter().zip(&plain) {
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + a.abs()),
                "x{n} accum {accum}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn a_step_decay_schedule_sets_each_steps_learning_rate() {
    let train = classes(20, 7);
    let config = TrainConfig {
        epochs: Some(6),
        batch_size: 10,
        eval_every: Every::Steps(1),
        schedule: Schedule::Step {
            warmup: 2,
            every: 4,
            gamma: 0.5,
        },
        ..quiet(Devices::of(Backend::Cpu, Some(1)))
    };
    let t = train_with(config, &train).unwrap();
    let lrs: Vec<f32> = t.history.iter().map(|r| r.lr / 0.02).collect();
    let want = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25];
    for (got, want) in lrs.iter().zip(want) {
        assert!((got - want).abs() < 1e-6, "{lrs:?}");
    }
    assert_eq!(t.optimizer.learning_rate(), 0.02 * 0.25);
}

#[test]
fn non_finite_steps_stop_the_run_or_are_skipped() {
    let train = classes(40, 8);
    for devices in [1, 2] {
        let config = |policy| TrainConfig {
            epochs: Some(2),
            batch_size: 10,
            on_nonfinite: policy,
            faults: Faults {
                nan_at_step: Some(3),
                ..Faults::default()
            },
            ..quiet(Devices::of(Backend::Cpu, Some(devices)))
        };
        let err = train_with(config(NonFinitePolicy::Stop), &train)
            .err()
            .expect("a NaN step stops the run");
        assert!(matches!(err, Error::Diverged(_)), "{err}");
        assert!(
            err.to_string()
                .contains("diverged at step 3 (epoch 1, batch 3)"),
            "{err}"
        );
        let t = train_with(config(NonFinitePolicy::Skip), &train).unwrap();
        assert_eq!(t.history[0].skipped_steps, 1, "x{devices}");
        assert_eq!(t.history[1].skipped_steps, 0, "x{devices}");
        assert!(t.history.iter().all(|r| r.train_loss.is_finite()));
        assert!(values(&t.model).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn resumes_that_are_not_the_same_run_are_refused() {
    let train = classes(30, 9);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let base = || TrainConfig {
        epochs: Some(2),
        batch_size: 10,
        checkpoint: Some(CheckpointConfig {
            dir: dir.clone(),
            every: Every::Epochs(1),
            keep: 3,
        }),
        ..quiet(Devices::of(Backend::Cpu, Some(1)))
    };
    // No checkpoint yet.
    let err = train_with(
        TrainConfig {
            resume: true,
            ..base()
        },
        &train,
    )
    .err()
    .expect("nothing to resume");
    assert!(err.to_string().contains("no checkpoint"), "{err}");
    train_with(base(), &train).unwrap();
    // A new run into the folder would prune the old one's files.
    let err = Trainer::new(base()).err().expect("refused");
    assert!(err.to_string().contains("--resume"), "{err}");
    // Another batch size is another run.
    let other = TrainConfig {
        resume: true,
        batch_size: 5,
        ..base()
    };
    let err = train_with(other, &train).err().expect("refused");
    assert!(err.to_string().contains("other settings"), "{err}");
    // So is a program setting of the caller's.
    let mut other = TrainConfig {
        resume: true,
        ..base()
    };
    other.settings.insert("hidden".into(), 32.into());
    let err = train_with(other, &train).err().expect("refused");
    assert!(err.to_string().contains("other settings"), "{err}");
    // The same run resumes to "complete"; raised epochs train on from the checkpoint.
    let done = train_with(
        TrainConfig {
            resume: true,
            ..base()
        },
        &train,
    )
    .unwrap();
    assert_eq!((done.epochs, done.steps, done.history.len()), (2, 6, 2));
    let more = train_with(
        TrainConfig {
            resume: true,
            epochs: Some(3),
            ..base()
        },
        &train,
    )
    .unwrap();
    assert_eq!((more.epochs, more.steps, more.history.len()), (3, 9, 3));
}

#[test]
fn a_loss_no_parameter_reaches_and_bad_settings_are_errors() {
    let train = classes(20, 10);
    for n in [1, 2] {
        let err = Trainer::new(quiet(Devices::of(Backend::Cpu, Some(n))))
            .unwrap()
            .fit(adamw, &train, |_, device, batch: &InMemoryBatch| {
                Tensor::full(batch.len() as f32, (), device)
            })
            .err()
            .expect("nothing trains");
        assert!(
            err.to_string().contains("no trainable variable"),
            "x{n}: {err}"
        );
    }
    let bad = [
        TrainConfig {
            epochs: None,
            steps: None,
            ..TrainConfig::default()
        },
        TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            grad_accum: 0,
            ..TrainConfig::default()
        },
        TrainConfig {
            clip_grad_norm: Some(-1.0),
            ..TrainConfig::default()
        },
        TrainConfig {
            resume: true,
            ..TrainConfig::default()
        },
        TrainConfig {
            local_sgd: Some(LocalSgd::every(0)),
            ..TrainConfig::default()
        },
        TrainConfig {
            schedule: Schedule::Step {
                warmup: 0,
                every: 0,
                gamma: 0.5,
            },
            ..TrainConfig::default()
        },
    ];
    for config in bad {
        assert!(Trainer::new(config.clone()).is_err(), "{config:?}");
    }
    let empty = InMemory::classification(Vec::new(), &[FEATURES], Vec::new(), 3).unwrap();
    let err = train_with(quiet(Devices::of(Backend::Cpu, Some(1))), &empty)
        .err()
        .expect("no samples");
    assert!(err.to_string().contains("no samples"), "{err}");
}

#[test]
fn steps_end_a_run_mid_epoch() {
    let train = classes(50, 11);
    let config = TrainConfig {
        epochs: None,
        steps: Some(7),
        batch_size: 10,
        ..quiet(Devices::of(Backend::Cpu, Some(2)))
    };
    let t = train_with(config, &train).unwrap();
    assert_eq!((t.steps, t.epochs), (7, 1));
    let last = t.history.last().unwrap();
    assert_eq!((last.epoch, last.step, last.epoch_end), (2, 7, false));
}
