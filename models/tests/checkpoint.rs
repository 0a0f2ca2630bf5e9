//! Checkpoints as a user relies on them: a model saved and loaded gets back exactly its
//! parameters, buffers and random streams, on the CPU and on the GPU (lavapipe in CI); a checkpoint that does not fit
//! the model, a truncated or corrupt file, or a write that dies half way is an error
//! that names the problem and leaves everything as it was. Random and mutated bytes
//! never make the checkpoint or IDX readers panic.

use rand::{Rng, SeedableRng};
use ringtrain_models::checkpoint::{write_atomically, Checkpoint, CheckpointDir, CheckpointError};
use ringtrain_models::data::parse_idx;
use ringtrain_models::nn::{
    BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Flatten, Linear, Module, ModuleState, Relu,
    Sequential,
};
use ringtrain_models::zoo::{mlp, Activation};
use ringtrain_runtime::{rng_from_seed, DType, Device, Precision, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};

fn model(device: &Device, seed: u64, hidden: usize) -> Sequential {
    mlp(
        6,
        &[hidden],
        3,
        Activation::Relu,
        device,
        &mut rng_from_seed(seed),
    )
    .unwrap()
}

fn bits(m: &impl Module) -> Vec<u32> {
    m.parameters()
        .iter()
        .flat_map(|p| p.to_vec().unwrap())
        .map(f32::to_bits)
        .collect()
}

fn gpu() -> Option<Device> {
    Device::test_gpu()
}

#[test]
fn a_saved_model_loads_back_bit_for_bit_with_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let saved = model(&Device::cpu(), 1, 8);
    let mut c = Checkpoint::of_module(&saved).unwrap();
    c.set_metadata("step", "42");
    c.save(&path).unwrap();

    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded, c);
    assert_eq!(loaded.metadata("step"), Some("42"));
    assert_eq!(
        loaded.names().collect::<Vec<_>>(),
        vec!["0.bias", "0.weight", "2.bias", "2.weight"]
    );
    let fresh = model(&Device::cpu(), 2, 8);
    assert_ne!(bits(&fresh), bits(&saved));
    loaded.restore(&fresh, "").unwrap();
    assert_eq!(bits(&fresh), bits(&saved));
}

#[test]
fn checkpoints_move_between_the_gpu_and_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gpu.safetensors");
    let on_gpu = model(&gpu, 3, 8);
    Checkpoint::of_module(&on_gpu).unwrap().save(&path).unwrap();
    let c = Checkpoint::load(&path).unwrap();
    let (cpu_copy, gpu_copy) = (model(&Device::cpu(), 4, 8), model(&gpu, 5, 8));
    c.restore(&cpu_copy, "").unwrap();
    c.restore(&gpu_copy, "").unwrap();
    assert_eq!(bits(&cpu_copy), bits(&on_gpu));
    assert_eq!(bits(&gpu_copy), bits(&on_gpu));
}

#[test]
fn a_checkpoint_that_does_not_fit_is_refused_and_changes_nothing() {
    let c = Checkpoint::of_module(&model(&Device::cpu(), 1, 8)).unwrap();
    let wider = model(&Device::cpu(), 2, 9);
    let before = bits(&wider);
    let err = c.restore(&wider, "").unwrap_err().to_string();
    assert!(
        err.contains("`0.weight` has shape [8, 6], the model's is [9, 6]"),
        "{err}"
    );
    assert_eq!(bits(&wider), before, "a failed restore changed parameters");

    let mut missing = Checkpoint::new();
    for name in c.names().filter(|n| *n != "2.bias") {
        let (shape, values) = c.get(name).unwrap();
        missing
            .insert_values(name, shape.to_vec(), values.to_vec())
            .unwrap();
    }
    let err = missing
        .restore(&model(&Device::cpu(), 2, 8), "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`2.bias` is missing"), "{err}");

    let mut extra = c.clone();
    extra.insert_values("3.weight", vec![1], vec![0.0]).unwrap();
    let err = extra
        .restore(&model(&Device::cpu(), 2, 8), "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`3.weight` is not a parameter"), "{err}");
    // With a prefix, only the tensors under it are the model's (optimizer state may sit
    // beside them).
    let mut prefixed = Checkpoint::new();
    for name in c.names() {
        let (shape, values) = c.get(name).unwrap();
        prefixed
            .insert_values(&format!("model.{name}"), shape.to_vec(), values.to_vec())
            .unwrap();
    }
    prefixed
        .insert_values("optimizer.step", vec![1], vec![3.0])
        .unwrap();
    prefixed
        .restore(&model(&Device::cpu(), 2, 8), "model.")
        .unwrap();

    assert!(matches!(
        Checkpoint::new().insert_values("x", vec![2, 3], vec![0.0; 5]),
        Err(CheckpointError::Mismatch(_))
    ));
}

#[test]
fn truncated_corrupt_and_foreign_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = Checkpoint::of_module(&model(&Device::cpu(), 1, 4))
        .unwrap()
        .to_bytes()
        .unwrap();
    for cut in 0..good.len() {
        let err = Checkpoint::from_bytes(&good[..cut], "cut").unwrap_err();
        assert!(
            matches!(err, CheckpointError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
    }
    // A tensor of another dtype.
    let data = [0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![2], &data).unwrap();
    let f64_file = safetensors::serialize([("w", view)], None).unwrap();
    let err = Checkpoint::from_bytes(&f64_file, "f64.safetensors")
        .unwrap_err()
        .to_string();
    assert!(err.contains("`w` is F64"), "{err}");
    assert!(err.contains("F32, F16 or BF16"), "{err}");
    // A missing file names itself.
    let missing = dir.path().join("nope.safetensors");
    let err = Checkpoint::load(&missing).unwrap_err().to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
    // A header that claims more than the file holds.
    let mut lying = good.clone();
    lying[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(Checkpoint::from_bytes(&lying, "lying").is_err());
}

/// A model exported as F16 or BF16 is half the file, loads back as the rounded values
/// and restores into an f32 model; a value f16 cannot hold is an error, not an infinity.
#[test]
fn half_checkpoints_export_and_load_into_f32_models() {
    let dir = tempfile::tempdir().unwrap();
    let trained = model(&Device::cpu(), 1, 64);
    let c = Checkpoint::of_module(&trained).unwrap();
    let full = dir.path().join("f32.safetensors");
    c.save(&full).unwrap();
    for precision in [Precision::Bf16, Precision::F16] {
        let path = dir.path().join(format!("{precision}.safetensors"));
        c.save_as(&path, precision).unwrap();
        let (half_len, full_len) = (
            std::fs::metadata(&path).unwrap().len(),
            std::fs::metadata(&full).unwrap().len(),
        );
        assert!(
            half_len * 10 < full_len * 6,
            "{precision}: {half_len} of {full_len} bytes"
        );
        let loaded = Checkpoint::load(&path).unwrap();
        for name in c.names() {
            let (shape, values) = c.get(name).unwrap();
            let (half_shape, half_values) = loaded.get(name).unwrap();
            assert_eq!(shape, half_shape);
            let rounded: Vec<f32> = values.iter().map(|&x| precision.round(x)).collect();
            assert_eq!(half_values, &rounded[..], "{precision} {name}");
        }
        let fresh = model(&Device::cpu(), 2, 64);
        loaded.restore(&fresh, "").unwrap();
        let x = Tensor::ones((1, 6), &Device::cpu()).unwrap();
        let (a, b) = (
            trained.forward(&x).unwrap().to_vec().unwrap(),
            fresh.forward(&x).unwrap().to_vec().unwrap(),
        );
        for (p, q) in a.iter().zip(&b) {
            assert!(
                (p - q).abs() < 0.05 * (1.0 + p.abs()),
                "{precision}: {a:?} vs {b:?}"
            );
        }
    }
    let mut big = Checkpoint::new();
    big.insert_values("w", vec![2], vec![1.0, 70000.0]).unwrap();
    let err = big
        .save_as(&dir.path().join("big.safetensors"), Precision::F16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`w`") && err.contains("70000"), "{err}");
    assert!(!dir.path().join("big.safetensors").exists());
    big.save_as(&dir.path().join("big.safetensors"), Precision::Bf16)
        .unwrap();
}

/// f16 and bf16 tensors are stored in their own formats beside f32 ones (what a mixed
/// export holds: 16-bit weights, f32 norms), keep them through a file, and come back as
/// tensors of their dtype on any device; loading a half file keeps each tensor's format.
#[test]
fn half_tensors_keep_their_format_through_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::cpu();
    let w = Tensor::randn(0.0, 1.0, (5, 7), &mut rng_from_seed(3), &dev).unwrap();
    let mut c = Checkpoint::new();
    c.insert("w.bf16", &w.to_dtype(DType::Bf16).unwrap())
        .unwrap();
    c.insert("w.f16", &w.to_dtype(DType::F16).unwrap()).unwrap();
    c.insert("w.f32", &w).unwrap();
    assert_eq!(c.format("w.bf16"), Some(Precision::Bf16));
    assert_eq!(c.format("w.f32"), Some(Precision::F32));
    assert_eq!(c.format("missing"), None);
    let path = dir.path().join("mixed.safetensors");
    c.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, dtype, len) in [
        ("w.bf16", "BF16", 70),
        ("w.f16", "F16", 70),
        ("w.f32", "F32", 140),
    ] {
        let view = parsed.tensor(name).unwrap();
        let got = (format!("{:?}", view.dtype()), view.data().len());
        assert_eq!(got, (dtype.to_string(), len), "{name}");
    }
    let loaded = Checkpoint::load(&path).unwrap();
    assert_eq!(loaded, c);
    let mut devices = vec![dev.clone()];
    devices.extend(Device::test_gpu());
    for d in &devices {
        for (name, dtype) in [
            ("w.bf16", DType::Bf16),
            ("w.f16", DType::F16),
            ("w.f32", DType::F32),
        ] {
            let t = loaded.tensor(name, d).unwrap();
            assert_eq!(t.dtype(), dtype, "{name}");
            let want = w.to_dtype(dtype).unwrap().to_vec().unwrap();
            assert_eq!(t.to_vec().unwrap(), want, "{name} on {d:?}");
        }
    }
    // Replacing a tensor with f32 values stores it as f32 again.
    let mut replaced = loaded.clone();
    replaced
        .insert_values("w.bf16", vec![1], vec![0.1])
        .unwrap();
    assert_eq!(replaced.format("w.bf16"), Some(Precision::F32));
    assert!(loaded.tensor("nothing", &dev).is_err());
}

#[test]
fn a_write_that_dies_half_way_leaves_the_old_checkpoint_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latest.safetensors");
    let old = Checkpoint::of_module(&model(&Device::cpu(), 1, 8)).unwrap();
    old.save(&path).unwrap();
    let new = Checkpoint::of_module(&model(&Device::cpu(), 2, 8))
        .unwrap()
        .to_bytes()
        .unwrap();
    let died = write_atomically(&path, |w| {
        w.write_all(&new[..new.len() / 2])?;
        Err(std::io::Error::other("killed"))
    });
    assert!(died.is_err());
    assert_eq!(Checkpoint::load(&path).unwrap(), old);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["latest.safetensors"],
        "temporary files left behind"
    );
}

/// Random bytes, and valid files cut, flipped and given lying headers: the readers
/// return errors (or, rarely, a valid result), and never panic.
#[test]
fn random_and_mutated_bytes_never_panic_the_readers() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let checkpoint = Checkpoint::of_module(&model(&Device::cpu(), 1, 4))
        .unwrap()
        .to_bytes()
        .unwrap();
    let idx = {
        let mut b = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
        b.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        b
    };
    assert!(parse_idx(&idx, "valid").is_ok());
    let mut inputs: Vec<Vec<u8>> = Vec::new();
    for _ in 0..2000 {
        let len = rng.random_range(0..64);
        inputs.push((0..len).map(|_| rng.random()).collect());
    }
    for base in [&checkpoint, &idx] {
        for _ in 0..2000 {
            let mut b = base.clone();
            match rng.random_range(0..3) {
                0 => b.truncate(rng.random_range(0..b.len())),
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let i = rng.random_range(0..b.len());
                        b[i] ^= 1 << rng.random_range(0..8);
                    }
                }
                _ => {
                    // A size field claiming more than any machine has.
                    let at = rng.random_range(0..b.len().saturating_sub(8).max(1));
                    let end = (at + 8).min(b.len());
                    b[at..end].copy_from_slice(&u64::MAX.to_le_bytes()[..end - at]);
                }
            }
            inputs.push(b);
        }
    }
    for bytes in &inputs {
        let read = catch_unwind(AssertUnwindSafe(|| {
            let _ = Checkpoint::from_bytes(bytes, "fuzz");
            let _ = parse_idx(bytes, "fuzz");
        }));
        assert!(read.is_ok(), "a reader panicked on {bytes:?}");
    }
}

/// A run saved mid-way (parameters and optimizer state, to a file) and resumed in fresh
/// objects ends with exactly the parameters of the run that went on.
#[test]
fn model_and_optimizer_resume_from_a_file_bit_for_bit() {
    use ringtrain_runtime::optim::{AdamW, AdamWConfig, Optimizer};
    use ringtrain_runtime::Tensor;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.safetensors");
    let device = Device::cpu();
    let x = Tensor::randn(0.0, 1.0, (16, 6), &mut rng_from_seed(9), &device).unwrap();
    let labels: Vec<u32> = (0..16).map(|i| i % 3).collect();
    let train = |m: &Sequential, opt: &mut dyn Optimizer, steps: usize| {
        for _ in 0..steps {
            let loss = m.forward(&x).unwrap().cross_entropy(&labels).unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
    };
    let adamw = |m: &Sequential| AdamW::new(m.parameters(), AdamWConfig::default()).unwrap();

    let run = model(&device, 1, 8);
    let mut opt = adamw(&run);
    train(&run, &mut opt, 3);
    let mut c = Checkpoint::new();
    c.insert_module("model.", &run).unwrap();
    c.insert_optimizer("optimizer.", &opt).unwrap();
    c.set_metadata("step", "3");
    c.save(&path).unwrap();
    train(&run, &mut opt, 3);

    let loaded = Checkpoint::load(&path).unwrap();
    let resumed = model(&device, 2, 8);
    let mut fresh = adamw(&resumed);
    loaded.restore(&resumed, "model.").unwrap();
    loaded.restore_optimizer("optimizer.", &mut fresh).unwrap();
    train(&resumed, &mut fresh, 3);
    assert_eq!(bits(&resumed), bits(&run));
    // A checkpoint without optimizer state gives an optimizer none to load.
    let model_only = Checkpoint::of_module(&run).unwrap();
    let err = model_only
        .restore_optimizer("optimizer.", &mut adamw(&resumed))
        .unwrap_err()
        .to_string();
    assert!(err.contains("step count"), "{err}");
}

/// Conv -> BatchNorm -> ReLU -> Flatten -> Dropout -> Linear: a model with buffers and a
/// random stream besides its parameters.
fn noisy_model(device: &Device, seed: u64) -> Sequential {
    let mut rng = rng_from_seed(seed);
    Sequential::new()
        .with(Conv2d::new(1, 2, 3, Conv2dConfig::default(), device, &mut rng).unwrap())
        .with(BatchNorm2d::new(2, device).unwrap())
        .with(Relu)
        .with(Flatten)
        .with(Dropout::new(0.3, seed).unwrap())
        .with(Linear::new(2 * 2 * 2, 3, device, &mut rng).unwrap())
}

fn buffer_bits(m: &impl Module) -> Vec<u32> {
    m.named_buffers()
        .iter()
        .flat_map(|(_, b)| b.get().to_vec().unwrap())
        .map(f32::to_bits)
        .collect()
}

fn outputs(m: &impl Module, x: &Tensor, calls: usize) -> Vec<Vec<u32>> {
    (0..calls)
        .map(|_| {
            let y = m.forward(x).unwrap().to_vec().unwrap();
            y.into_iter().map(f32::to_bits).collect()
        })
        .collect()
}

#[test]
fn buffers_and_random_streams_resume_with_the_model() {
    let dev = Device::cpu();
    let values: Vec<f32> = (0..4 * 16)
        .map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0)
        .collect();
    let x = Tensor::from_vec(values, vec![4, 1, 4, 4], &dev).unwrap();
    let trained = noisy_model(&dev, 1);
    outputs(&trained, &x, 3); // moves the running estimates and the dropout stream
    let c = Checkpoint::of_module(&trained).unwrap();
    assert_eq!(
        c.names().collect::<Vec<_>>(),
        vec![
            "0.bias",
            "0.weight",
            "1.bias",
            "1.num_batches_tracked",
            "1.running_mean",
            "1.running_var",
            "1.weight",
            "5.bias",
            "5.weight"
        ],
        "PyTorch's names for the same nn.Sequential"
    );
    assert_eq!(
        c.get("1.num_batches_tracked"),
        Some((&[][..], &[3.0f32][..]))
    );
    assert_eq!(c.metadata("ringtrain.rng.4.masks"), Some("3"));

    let resumed = noisy_model(&dev, 1);
    assert_ne!(buffer_bits(&resumed), buffer_bits(&trained));
    c.restore(&resumed, "").unwrap();
    assert_eq!(buffer_bits(&resumed), buffer_bits(&trained));
    // The same dropout masks and batch statistics from here on, in training and after.
    assert_eq!(outputs(&resumed, &x, 2), outputs(&trained, &x, 2));
    resumed.set_training(false);
    trained.set_training(false);
    assert_eq!(outputs(&resumed, &x, 1), outputs(&trained, &x, 1));

    // A file without the buffers (parameters only) does not fit.
    let mut params_only = Checkpoint::new();
    for (name, var) in trained.named_parameters() {
        params_only.insert(&name, var.as_tensor()).unwrap();
    }
    let err = params_only.restore(&resumed, "").unwrap_err().to_string();
    assert!(err.contains("`1.running_mean` is missing"), "{err}");

    // On the GPU: the same buffers and the same outputs as the CPU's restored copy.
    if let Some(gpu) = gpu() {
        let (on_cpu, on_gpu) = (noisy_model(&dev, 4), noisy_model(&gpu, 5));
        c.restore(&on_cpu, "").unwrap();
        c.restore(&on_gpu, "").unwrap();
        assert_eq!(buffer_bits(&on_gpu), buffer_bits(&on_cpu));
        on_cpu.set_training(false);
        on_gpu.set_training(false);
        let y = on_gpu
            .forward(&x.to_device(&gpu).unwrap())
            .unwrap()
            .to_vec()
            .unwrap();
        let want = on_cpu.forward(&x).unwrap().to_vec().unwrap();
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{y:?} vs {want:?}");
        }
    }
}

#[test]
fn a_checkpoint_names_its_first_non_finite_tensor() {
    let mut c = Checkpoint::of_module(&model(&Device::cpu(), 1, 4)).unwrap();
    assert_eq!(c.first_nonfinite(), None);
    c.insert_values("optimizer.v.1", vec![2], vec![1.0, f32::INFINITY])
        .unwrap();
    c.insert_values("optimizer.v.3", vec![1], vec![f32::NAN])
        .unwrap();
    assert_eq!(c.first_nonfinite(), Some("optimizer.v.1"));
}

#[test]
fn a_checkpoint_folder_orders_by_step_prunes_and_leaves_other_files_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path().join("run"), 3);
    assert_eq!(dir.list().unwrap(), vec![]);
    assert!(dir.latest().unwrap().is_none());
    let saved = model(&Device::cpu(), 1, 4);
    let c = Checkpoint::of_module(&saved).unwrap();
    // Steps past the 8 digits of the name still order by number, not by text.
    for (epoch, step) in [(1, 9), (1, 10), (2, 99_999_999), (3, 123_456_789)] {
        dir.save(epoch, step, &c).unwrap();
    }
    let others = [
        "notes.txt",
        "epoch-0001.safetensors",
        "epoch-x-step-1.safetensors",
    ];
    for name in others {
        std::fs::write(dir.path().join(name), b"not mine").unwrap();
    }
    dir.save(3, 200_000_000, &c).unwrap();
    let kept: Vec<(u32, u64)> = dir
        .list()
        .unwrap()
        .iter()
        .map(|s| (s.epoch, s.step))
        .collect();
    assert_eq!(kept, [(2, 99_999_999), (3, 123_456_789), (3, 200_000_000)]);
    for name in others {
        assert!(dir.path().join(name).exists(), "{name} was touched");
    }
    let (newest, loaded) = dir.latest().unwrap().unwrap();
    assert_eq!(newest.path, dir.path_for(3, 200_000_000));
    assert_eq!(loaded, c);

    // A newest file that is not a checkpoint is an error naming it, not a fallback.
    std::fs::write(dir.path_for(4, 300_000_000), b"garbage").unwrap();
    let err = dir.latest().unwrap_err().to_string();
    assert!(
        err.contains("epoch-0004-step-300000000.safetensors"),
        "{err}"
    );
}

/// A checkpoint without tensors (metadata alone, or nothing) writes bytes that read
/// back: safetensors 0.8 writes `{},"__metadata__":..}` for it (the fuzzer found it).
#[test]
fn a_checkpoint_without_tensors_reads_back() {
    let mut c = Checkpoint::new();
    assert_eq!(
        Checkpoint::from_bytes(&c.to_bytes().unwrap(), "empty").unwrap(),
        c
    );
    c.set_metadata("note", "no tensors \" quoted");
    let back = Checkpoint::from_bytes(&c.to_bytes().unwrap(), "metadata only").unwrap();
    assert_eq!(back, c);
    assert_eq!(back.metadata("note"), Some("no tensors \" quoted"));
}
