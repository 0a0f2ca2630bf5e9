//! Mixed precision through the Trainer: f16's dynamic loss scaling skips exactly the
//! steps whose scaled gradients overflow, adapts its scale, reports it, and resumes it;
//! alike on one device and on two data-parallel replicas.

use ringtrain_models::data::{InMemory, InMemoryBatch};
use ringtrain_models::nn::{Linear, Module, ModuleState};
use ringtrain_models::train::{Backend, CheckpointConfig, Devices, Every, TrainConfig, Trainer};
use ringtrain_runtime::optim::{LossScaler, Sgd, SgdConfig};
use ringtrain_runtime::{rng_from_seed, Device, Precision, Result, Tensor};

/// One input of 1 per sample: the loss is the batch's mean output, so the weight's
/// gradient is 1 and the output's, scaled, is `scale / batch`, which f16 (largest
/// 65504) holds only below 2^16.
fn ones(n: usize) -> InMemory {
    InMemory::regression(vec![1.0; n], &[1], vec![0.0; n], &[1]).unwrap()
}

fn mean_output(model: &Linear, device: &Device, batch: &InMemoryBatch) -> Result<Tensor> {
    let y = model.forward(&batch.inputs(device)?)?;
    let rows = y.dims()[0] as f32;
    y.sum_all()?.scale(1.0 / rows)
}

fn build(device: &Device) -> Result<(Linear, Sgd)> {
    let model = Linear::new(1, 1, device, &mut rng_from_seed(7))?;
    let sgd = SgdConfig {
        lr: 0.125,
        ..SgdConfig::default()
    };
    let opt = Sgd::new(model.parameters(), sgd)?;
    Ok((model, opt))
}

fn weights(model: &Linear) -> Vec<f32> {
    model
        .parameters()
        .iter()
        .flat_map(|p| p.to_vec().unwrap())
        .collect()
}

/// Nine steps of batch 2 starting at a scale of 2^17, doubling after 2 good steps:
/// 2^17 overflows (the output's gradient is 2^16), so steps 1, 4 and 7 are skipped and
/// the scale ends at 2^17 again.
fn config(devices: Devices) -> TrainConfig {
    TrainConfig {
        devices,
        epochs: Some(1),
        batch_size: 2,
        precision: Precision::F16,
        loss_scaler: LossScaler::new(131072.0, 2).unwrap(),
        quiet: true,
        ..TrainConfig::default()
    }
}

#[test]
fn f16_loss_scaling_skips_exactly_the_overflowing_steps() {
    let data = ones(18);
    let (w0, b0) = {
        let (m, _) = build(&Device::cpu()).unwrap();
        let w = weights(&m);
        (w[0], w[1])
    };
    for (name, devices) in [
        ("cpu x1", Devices::of(Backend::Cpu, Some(1))),
        ("cpu x2", Devices::of(Backend::Cpu, Some(2))),
    ] {
        let trained = Trainer::new(config(devices))
            .unwrap()
            .fit(build, &data, mean_output)
            .unwrap();
        let last = trained.history.last().unwrap();
        assert_eq!(trained.steps, 9, "{name}");
        assert_eq!(last.skipped_steps, 3, "{name}");
        assert_eq!(last.loss_scale, Some(131072.0), "{name}");
        // Six good steps of gradient 1 (weight and bias), learning rate 1/8.
        let w = weights(&trained.model);
        for (got, want) in w.iter().zip([w0 - 0.75, b0 - 0.75]) {
            assert!(
                (got - want).abs() < 1e-6,
                "{name}: {w:?}, want {w0} - 0.75, {b0} - 0.75"
            );
        }
    }
}

#[test]
fn bf16_and_f32_runs_need_no_scale() {
    for precision in [Precision::F32, Precision::Bf16] {
        let config = TrainConfig {
            precision,
            ..config(Devices::of(Backend::Cpu, Some(1)))
        };
        let trained = Trainer::new(config)
            .unwrap()
            .fit(build, &ones(18), mean_output)
            .unwrap();
        let last = trained.history.last().unwrap();
        assert_eq!(
            (last.skipped_steps, last.loss_scale),
            (0, None),
            "{precision}"
        );
    }
}

#[test]
fn a_resumed_f16_run_keeps_its_loss_scale() {
    let data = ones(18);
    let dir = tempfile::tempdir().unwrap();
    let with_checkpoints = |epochs| TrainConfig {
        epochs: Some(epochs),
        checkpoint: Some(CheckpointConfig {
            dir: dir.path().to_path_buf(),
            every: Every::Steps(4),
            keep: 2,
        }),
        ..config(Devices::of(Backend::Cpu, Some(1)))
    };
    let whole = Trainer::new(TrainConfig {
        epochs: Some(2),
        ..config(Devices::of(Backend::Cpu, Some(1)))
    })
    .unwrap()
    .fit(build, &data, mean_output)
    .unwrap();
    // Stopped after step 5, then resumed from step 4's checkpoint (scale 2^16, no good
    // step yet) to the end.
    let stopped = TrainConfig {
        faults: ringtrain_models::train::Faults {
            stop_after_step: Some(5),
            ..Default::default()
        },
        ..with_checkpoints(2)
    };
    assert!(Trainer::new(stopped)
        .unwrap()
        .fit(build, &data, mean_output)
        .is_err());
    let resumed = Trainer::new(TrainConfig {
        resume: true,
        ..with_checkpoints(2)
    })
    .unwrap()
    .fit(build, &data, mean_output)
    .unwrap();
    assert_eq!(weights(&resumed.model), weights(&whole.model));
    let (a, b) = (
        resumed.history.last().unwrap(),
        whole.history.last().unwrap(),
    );
    assert_eq!((a.step, a.loss_scale), (b.step, b.loss_scale));
    assert_eq!(a.train_loss.to_bits(), b.train_loss.to_bits());
}

#[test]
fn an_f16_run_whose_gradients_always_overflow_stops_and_says_why() {
    // The output's gradient is 1e8 times the scale: beyond f16 until the scale is below
    // 2^-10, which twenty halvings from 2^16 do not reach.
    let huge = |model: &Linear, device: &Device, batch: &InMemoryBatch| {
        mean_output(model, device, batch)?.scale(1e8)
    };
    let config = TrainConfig {
        loss_scaler: LossScaler::default(),
        epochs: Some(3),
        ..config(Devices::of(Backend::Cpu, Some(1)))
    };
    let err = Trainer::new(config)
        .unwrap()
        .fit(build, &ones(18), huge)
        .err()
        .expect("the run must stop")
        .to_string();
    assert!(err.contains("overflowed 20 steps in a row"), "{err}");
    assert!(err.contains("--precision bf16"), "{err}");
}
