//! Normalisation layers, composed from tensor ops, so their gradients come from the
//! autograd of those ops (and run on every backend).

use super::{Buffer, Module, ModuleState};
use ringtrain_runtime::{no_grad, Device, Error, Result, Tensor, Var};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Batch normalisation over the channels of `[batch, channels, height, width]` inputs, as
/// PyTorch's `BatchNorm2d`: in training, each channel is normalised by its batch mean and
/// (biased) variance over batch, height and width, and running estimates are updated
/// with `momentum` (the variance unbiased); in evaluation the running estimates are used.
/// Parameters `weight` (gamma, ones) and `bias` (beta, zeros), `[channels]` each; buffers
/// `running_mean`, `running_var` (`[channels]`) and `num_batches_tracked` (a scalar), as
/// PyTorch names them. Under data parallelism each replica keeps the running estimates of
/// its own shards (no synchronised batch norm).
pub struct BatchNorm2d {
    weight: Var,
    bias: Var,
    running_mean: Buffer,
    running_var: Buffer,
    num_batches_tracked: Buffer,
    // Held while the running estimates are read and replaced together.
    update: Mutex<()>,
    momentum: f32,
    eps: f32,
    training: AtomicBool,
}

impl BatchNorm2d {
    pub fn new(channels: usize, device: &Device) -> Result<Self> {
        if channels == 0 {
            return Err(Error::InvalidArgument("BatchNorm2d needs channels".into()));
        }
        Ok(Self {
            weight: Var::from_vec(vec![1.0; channels], channels, device)?,
            bias: Var::zeros(channels, device)?,
            running_mean: Buffer::new(Tensor::zeros(channels, device)?),
            running_var: Buffer::new(Tensor::ones(channels, device)?),
            num_batches_tracked: Buffer::new(Tensor::zeros(Vec::<usize>::new(), device)?),
            update: Mutex::new(()),
            momentum: 0.1,
            eps: 1e-5,
            training: AtomicBool::new(true),
        })
    }

    /// The running mean and variance, `[1, channels, 1, 1]` each.
    pub fn running_stats(&self) -> Result<(Tensor, Tensor)> {
        let _update = self.update.lock().unwrap_or_else(|e| e.into_inner());
        let channels = self.weight.dims()[0];
        Ok((
            self.running_mean.get().reshape(vec![1, channels, 1, 1])?,
            self.running_var.get().reshape(vec![1, channels, 1, 1])?,
        ))
    }
}

impl Module for BatchNorm2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let channels = self.weight.dims()[0];
        if x.rank() != 4 || x.dims()[1] != channels {
            return Err(Error::InvalidShape {
                op: "BatchNorm2d",
                reason: format!(
                    "input of shape {} is not [batch, {channels}, height, width]",
                    x.shape()
                ),
            });
        }
        let count = x.elem_count() / channels;
        let (mean, var) = if self.training.load(Ordering::Relaxed) {
            if count < 2 {
                return Err(Error::InvalidShape {
                    op: "BatchNorm2d",
                    reason: format!(
                        "training needs more than one value per channel, got {}",
                        x.shape()
                    ),
                });
            }
            let mean = x.sum_keepdims(&[0, 2, 3])?.scale(1.0 / count as f32)?;
            let var = x
                .sub(&mean)?
                .sqr()?
                .sum_keepdims(&[0, 2, 3])?
                .scale(1.0 / count as f32)?;
            no_grad(|| -> Result<()> {
                let _update = self.update.lock().unwrap_or_else(|e| e.into_inner());
                let m = self.momentum;
                let unbiased = count as f32 / (count - 1) as f32;
                let blend = |running: &Buffer, batch: &Tensor, scale: f32| {
                    let batch = batch.detach().reshape(channels)?.scale(scale)?;
                    running.set(&running.get().scale(1.0 - m)?.add(&batch)?)
                };
                blend(&self.running_mean, &mean, m)?;
                blend(&self.running_var, &var, m * unbiased)?;
                let tracked = &self.num_batches_tracked;
                tracked.set(&tracked.get().add_scalar(1.0)?)
            })?;
            (mean, var)
        } else {
            self.running_stats()?
        };
        let per_channel = |v: &Var| v.reshape(vec![1, channels, 1, 1]);
        x.sub(&mean)?
            .div(&var.add_scalar(self.eps)?.sqrt()?)?
            .mul(&per_channel(&self.weight)?)?
            .add(&per_channel(&self.bias)?)
    }
}

impl ModuleState for BatchNorm2d {
    fn named_parameters(&self) -> Vec<(String, Var)> {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
        ]
    }

    fn named_buffers(&self) -> Vec<(String, Buffer)> {
        vec![
            ("running_mean".into(), self.running_mean.clone()),
            ("running_var".into(), self.running_var.clone()),
            (
                "num_batches_tracked".into(),
                self.num_batches_tracked.clone(),
            ),
        ]
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}

/// Layer normalisation over the last dimension, as PyTorch's `LayerNorm(features)`: each
/// row normalised by its own mean and (biased) variance, then scaled by `weight` and
/// shifted by `bias`, in one fused op ([`Tensor::layer_norm`]). The same in training and
/// evaluation.
#[derive(Module)]
pub struct LayerNorm {
    weight: Var,
    bias: Var,
    #[module(skip)]
    eps: f32,
}

impl LayerNorm {
    pub fn new(features: usize, device: &Device) -> Result<Self> {
        if features == 0 {
            return Err(Error::InvalidArgument("LayerNorm needs features".into()));
        }
        Ok(Self {
            weight: Var::from_vec(vec![1.0; features], features, device)?,
            bias: Var::zeros(features, device)?,
            eps: 1e-5,
        })
    }

    /// A layer norm from existing `[features]` scale and shift, and its `eps`.
    pub fn from_parts(weight: Var, bias: Var, eps: f32) -> Result<Self> {
        let features = weight.elem_count();
        if weight.rank() != 1 || features == 0 || bias.dims() != weight.dims() {
            return Err(Error::InvalidShape {
                op: "LayerNorm",
                reason: format!(
                    "weight and bias must both be [features], got {} and {}",
                    weight.shape(),
                    bias.shape()
                ),
            });
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "LayerNorm eps must be finite and > 0, got {eps}"
            )));
        }
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let features = self.weight.dims()[0];
        if x.dims().last() != Some(&features) {
            return Err(Error::InvalidShape {
                op: "LayerNorm",
                reason: format!("input of shape {} does not end in {features}", x.shape()),
            });
        }
        x.layer_norm(&self.weight, &self.bias, self.eps)
    }
}
