//! Inference: a trained model scored on new inputs, with nothing of training around it.
//!
//! A [`Predictor`] loads a checkpoint and builds the model it holds with no code of the
//! caller's when the checkpoint names a zoo model (the [`Trainer`] writes
//! `ringtrain.model` when its [`TrainConfig::model`] is set), or wraps a [`Module`] of the
//! caller's. It records no gradients, runs any batch size on the device it was given,
//! and reuses the device's buffers from call to call (both backends recycle freed memory
//! by size, so a steady stream of batches allocates nothing after the first).
//!
//! Weights can be stored compactly ([`Quantization`]): int8 (symmetric, one scale per
//! output channel) or f16 / bf16, for the weights that products read (linear layers,
//! convolutions, attention projections: a layer's `#[module(quantize)]` fields).
//! [`Predictor::export`] writes such a checkpoint; a Predictor loads either kind. On int8
//! weights a linear layer runs integer dot products on the CPU (activations quantized
//! per row on the fly: AVX512-VNNI, AVX2 or portable) and dequantizes the weights in its
//! tile loads on the GPU; a convolution widens its int8 weights to f32 for each call.
//!
//! ```
//! use ringtrain_models::checkpoint::Checkpoint;
//! use ringtrain_models::infer::Predictor;
//! use ringtrain_models::zoo::{ModelSpec, Activation, MODEL_KEY};
//! use ringtrain_runtime::{rng_from_seed, Device, Quantization};
//!
//! # fn main() -> ringtrain_runtime::Result<()> {
//! let spec = ModelSpec::Mlp { inputs: 4, hidden: vec![8], outputs: 3, activation: Activation::Relu };
//! let model = spec.build(&Device::cpu(), &mut rng_from_seed(0))?;
//! let mut checkpoint = Checkpoint::of_module(&model)?;
//! checkpoint.set_metadata(MODEL_KEY, spec.to_json());
//!
//! let predictor = Predictor::from_checkpoint(&checkpoint, &Device::cpu())?;
//! let rows = [0.5, -1.0, 0.25, 2.0, 0.0, 0.0, 1.0, 1.0];
//! let best = predictor.classify(&rows)?; // (class, probability) per row
//! assert_eq!(best.len(), 2);
//!
//! // The same model with int8 weights: a quarter of the bytes in a file.
//! let int8 = Predictor::from_checkpoint(&predictor.export(Quantization::Int8)?, &Device::cpu())?;
//! assert_eq!(int8.quantization(), Some(Quantization::Int8));
//! # Ok(())
//! # }
//! ```
//!
//! [`Trainer`]: crate::train::Trainer
//! [`TrainConfig::model`]: crate::train::TrainConfig::model

mod ensemble;

/// The CPU thread count of this process: once, before the first parallel work.
pub use crate::train::set_threads;
pub use ensemble::Ensemble;

use crate::checkpoint::{Checkpoint, CheckpointDir};
use crate::nn::{Module, ModuleState};
use crate::train::BAG_KEY;
use crate::zoo::{ModelSpec, MODEL_KEY};
use ringtrain_runtime::{no_grad, rng_from_seed, Device, Error, Quantization, Result, Tensor};
use std::collections::HashSet;
use std::path::Path;

/// Rows from which a CPU forward pass runs with the pool's workers kept awake.
const AWAKE_MIN_ROWS: usize = 8;

/// The metadata key of an exported checkpoint's weight format (`int8`, `f16`, `bf16`).
pub const QUANTIZATION_KEY: &str = "ringtrain.quantization";

/// A model ready to score inputs: see [the module](self).
pub struct Predictor {
    model: Box<dyn Module + Send + Sync>,
    device: Device,
    spec: Option<ModelSpec>,
    inputs: usize,
    outputs: Option<usize>,
    quantization: Option<Quantization>,
    /// Metadata to carry into an export (the model, a bag member's place).
    metadata: Vec<(String, String)>,
}

impl Predictor {
    /// The model in a checkpoint file, or in the newest checkpoint of a [`Trainer`]'s
    /// checkpoint folder, on `device`. The checkpoint must name its model (`ringtrain.model`,
    /// which the Trainer writes when it is told the model): for a model of your own,
    /// build it and use [`Predictor::with_model_from`].
    ///
    /// [`Trainer`]: crate::train::Trainer
    pub fn load(path: &Path, device: &Device) -> Result<Predictor> {
        let checkpoint = read_checkpoint(path)?;
        Self::from_checkpoint(&checkpoint, device)
            .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
    }

    /// The zoo model `checkpoint` names, built and loaded on `device`.
    pub fn from_checkpoint(checkpoint: &Checkpoint, device: &Device) -> Result<Predictor> {
        let json = checkpoint.metadata(MODEL_KEY).ok_or_else(|| {
            Error::msg(format!(
                "the checkpoint does not say which model it holds (no `{MODEL_KEY}` \
                 metadata): a Trainer writes it when TrainConfig::model is set; for a model \
                 of your own, build it and use Predictor::with_model_from"
            ))
        })?;
        let spec = ModelSpec::from_json(json)?;
        // The parameters' initial values are overwritten by the checkpoint's.
        let model = spec.build(device, &mut rng_from_seed(0))?;
        let mut p = Self::with_model_from(model, spec.inputs(), checkpoint, device)?;
        p.outputs = Some(spec.outputs());
        p.spec = Some(spec);
        Ok(p)
    }

    /// Wraps a model of the caller's, as it is, taking rows of `inputs` features.
    pub fn with_model(
        model: impl Module + Send + Sync + 'static,
        inputs: usize,
        device: &Device,
    ) -> Result<Predictor> {
        if inputs == 0 {
            return Err(Error::InvalidArgument(
                "a predictor's rows hold at least one feature".into(),
            ));
        }
        model.set_training(false);
        Ok(Predictor {
            model: Box::new(model),
            device: device.clone(),
            spec: None,
            inputs,
            outputs: None,
            quantization: None,
            metadata: Vec::new(),
        })
    }

    /// Wraps a model of the caller's (built on `device`) with its parameters from
    /// `checkpoint`: a Trainer's (under `model.`) or a plain one. Weights the checkpoint
    /// stores as int8, f16 or bf16 stay so in memory where the model marks them
    /// quantizable, and load as f32 elsewhere.
    pub fn with_model_from(
        model: impl Module + Send + Sync + 'static,
        inputs: usize,
        checkpoint: &Checkpoint,
        device: &Device,
    ) -> Result<Predictor> {
        let mut p = Self::with_model(model, inputs, device)?;
        let prefix = model_prefix(checkpoint, &*p.model);
        checkpoint.restore(&*p.model, prefix)?;
        let mut formats = HashSet::new();
        for (name, var) in quantizable(&*p.model) {
            let key = format!("{prefix}{name}");
            match checkpoint.quantization(&key) {
                Some(Quantization::Int8) => {
                    let w = checkpoint
                        .int8(&key)
                        .expect("an int8 tensor has its values");
                    var.set_int8(w)?;
                    formats.insert(Quantization::Int8);
                }
                Some(format) => {
                    var.quantize(format)?;
                    formats.insert(format);
                }
                None => {}
            }
        }
        p.quantization = match formats.len() {
            0 => None,
            1 => formats.into_iter().next(),
            _ => {
                return Err(Error::msg(
                    "the checkpoint mixes several weight formats (int8, f16, bf16); export \
                     it again in one",
                ))
            }
        };
        p.metadata = [MODEL_KEY, BAG_KEY]
            .into_iter()
            .filter_map(|k| {
                checkpoint
                    .metadata(k)
                    .map(|v| (k.to_string(), v.to_string()))
            })
            .collect();
        Ok(p)
    }

    /// Stores the model's quantizable weights in `format`, in memory.
    pub fn quantize(&mut self, format: Quantization) -> Result<()> {
        if self.quantization.is_some_and(|q| q != format) {
            return Err(Error::msg(format!(
                "the weights are {} already; load the f32 checkpoint to store them as {format}",
                self.quantization.map_or("", |q| q.name())
            )));
        }
        for (_, var) in quantizable(&*self.model) {
            var.quantize(format)?;
        }
        self.quantization = Some(format);
        Ok(())
    }

    /// The model's parameters and buffers as a checkpoint (names without a prefix, as a
    /// PyTorch `state_dict`), its quantizable weights stored in `format`, with the
    /// metadata that names the model: what `infer --quantize` writes. Weights already
    /// quantized keep their values (a second int8 export of int8 weights is the same).
    pub fn export(&self, format: Quantization) -> Result<Checkpoint> {
        let mut checkpoint = Checkpoint::new();
        let quantized: Vec<(String, ringtrain_runtime::Var)> = quantizable(&*self.model);
        let names: HashSet<&str> = quantized.iter().map(|(n, _)| n.as_str()).collect();
        for (name, var) in self.model.named_parameters() {
            match var.int8()? {
                Some(w) if names.contains(name.as_str()) && format == Quantization::Int8 => {
                    checkpoint.insert_int8(&name, var.dims().to_vec(), w)?
                }
                _ => checkpoint.insert_values(&name, var.dims().to_vec(), var.to_vec()?)?,
            }
        }
        for (name, buffer) in self.model.named_buffers() {
            checkpoint.insert(&name, &buffer.get())?;
        }
        let fresh: Vec<&str> = quantized
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| checkpoint.quantization(n).is_none())
            .collect();
        checkpoint.quantize(fresh, format)?;
        for (key, value) in &self.metadata {
            checkpoint.set_metadata(key, value.clone());
        }
        checkpoint.set_metadata(QUANTIZATION_KEY, format.name());
        Ok(checkpoint)
    }

    /// The model's outputs for `rows` (`n * inputs` features, row-major): `[n, outputs]`
    /// values on the host.
    pub fn outputs_of(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        let y = self.forward(rows)?;
        let width = y.dims().last().copied().unwrap_or(0);
        Ok((y.to_vec()?, width))
    }

    /// The class probabilities (softmax of the outputs) of each row.
    pub fn probabilities(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        let y = self.forward(rows)?;
        let width = y.dims().last().copied().unwrap_or(0);
        Ok((no_grad(|| y.softmax(1))?.to_vec()?, width))
    }

    /// Each row's most likely class and its probability.
    pub fn classify(&self, rows: &[f32]) -> Result<Vec<(u32, f32)>> {
        let (probs, width) = self.probabilities(rows)?;
        Ok(best_classes(&probs, width))
    }

    /// The model's output tensor for `rows`, on the device.
    pub fn forward(&self, rows: &[f32]) -> Result<Tensor> {
        if rows.is_empty() || !rows.len().is_multiple_of(self.inputs) {
            return Err(Error::InvalidArgument(format!(
                "a predictor of {} features takes whole rows of them, got {} values",
                self.inputs,
                rows.len()
            )));
        }
        let n = rows.len() / self.inputs;
        let call = || {
            no_grad(|| {
                let x = Tensor::from_slice(rows, (n, self.inputs), &self.device)?;
                let y = self.model.forward(&x)?;
                match y.dims() {
                    [m, _] if *m == n => Ok(y),
                    _ => y.reshape((n, y.elem_count() / n.max(1))),
                }
            })
        };
        match self.device {
            // A batch's ops are too small for the pool then: spinning costs more.
            Device::Cpu(_) if n < AWAKE_MIN_ROWS => call(),
            // As a training step runs: on a pool thread, the other workers spinning for
            // the ops' parallel loops instead of being woken for each (tens of
            // microseconds an op, more than a small batch's whole product).
            Device::Cpu(_) => ringtrain_runtime::with_awake_workers(call),
            _ => call(),
        }
    }

    /// Features per input row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Outputs per row, where the model's spec says (zoo models).
    pub fn outputs(&self) -> Option<usize> {
        self.outputs
    }

    pub fn spec(&self) -> Option<&ModelSpec> {
        self.spec.as_ref()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The format the quantizable weights are stored in, when not f32.
    pub fn quantization(&self) -> Option<Quantization> {
        self.quantization
    }

    pub fn model(&self) -> &(dyn Module + Send + Sync) {
        &*self.model
    }

    /// One line: the model, its weights' format and the device.
    pub fn describe(&self) -> String {
        let model = self.spec.as_ref().map_or_else(
            || format!("a model of {} inputs", self.inputs),
            ModelSpec::describe,
        );
        let weights = self.quantization.map_or("f32", |q| q.name());
        format!("{model}, {weights} weights, on {}", self.device.name())
    }
}

/// Each row's largest value's index and the value (first on ties).
pub fn best_classes(probs: &[f32], width: usize) -> Vec<(u32, f32)> {
    probs.chunks(width.max(1)).map(best_class).collect()
}

/// The largest value's index in `row` and the value (first on ties).
pub fn best_class(row: &[f32]) -> (u32, f32) {
    row.iter()
        .enumerate()
        .fold((0u32, f32::NEG_INFINITY), |best, (i, &p)| {
            if p > best.1 {
                (i as u32, p)
            } else {
                best
            }
        })
}

/// A checkpoint file, or the newest checkpoint in a folder a Trainer wrote.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    if path.is_dir() {
        let (_, checkpoint) = CheckpointDir::new(path, 1).latest()?.ok_or_else(|| {
            Error::msg(format!(
                "{} holds no checkpoint (epoch-EEEE-step-SSSSSSSS.safetensors)",
                path.display()
            ))
        })?;
        return Ok(checkpoint);
    }
    Ok(Checkpoint::load(path)?)
}

/// `model.` where the checkpoint is a Trainer's (its model's tensors under that prefix),
/// else nothing.
fn model_prefix(checkpoint: &Checkpoint, model: &dyn Module) -> &'static str {
    let first = model.named_parameters().into_iter().next();
    match first {
        Some((name, _))
            if checkpoint.get(&name).is_none()
                && checkpoint.get(&format!("model.{name}")).is_some() =>
        {
            "model."
        }
        _ => "",
    }
}

/// The model's quantizable weights, less any that some other name also reaches (a tied
/// embedding, which a lookup reads too).
fn quantizable(model: &dyn Module) -> Vec<(String, ringtrain_runtime::Var)> {
    let marked = model.named_quantizable();
    let marked_names: HashSet<&str> = marked.iter().map(|(n, _)| n.as_str()).collect();
    let elsewhere: HashSet<_> = model
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| !marked_names.contains(n.as_str()))
        .map(|(_, v)| v.id())
        .collect();
    let mut seen = HashSet::new();
    marked
        .into_iter()
        .filter(|(_, v)| !elsewhere.contains(&v.id()) && seen.insert(v.id()) && v.rank() >= 2)
        .collect()
}
