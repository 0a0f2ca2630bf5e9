//! The replicas a run trains: one device stepping directly, or several as one through
//! [`DataParallel`], which moves gradients through the host every step.

use super::config::TrainConfig;
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::data::DataSource;
use crate::nn::Module;
use crate::parallel::{backward_in_pieces, DataParallel, DataParallelConfig, NonFinitePolicy};
use ringtrain_runtime::comm::{Communicator, RingConfig};
use ringtrain_runtime::optim::{clip_grad_norm, Optimizer};
use ringtrain_runtime::{trace, with_precision, Device, Error, Precision, Result, Tensor, Var};

/// Where a checkpoint keeps local SGD's outer optimizer state.
const OUTER: &str = "outer.";
/// The checkpoint metadata that holds the shards' weights (JSON, one per replica).
pub const BALANCE_KEY: &str = "ringtrain.balance";

pub(super) enum Replicas<M, O> {
    Single {
        model: M,
        optimizer: O,
        device: Device,
        /// The optimizer's variables, in the model's order (clipping sums over them).
        params: Vec<Var>,
    },
    Parallel(Box<DataParallel<M, O>>),
}

/// A step's mean loss: still on the device (read later, in groups), or on the host; or
/// nothing, for a step skipped for non-finite values, or for gradients that overflowed
/// under loss scaling.
pub(super) enum StepLoss {
    OnDevice(Tensor),
    Host(f32),
    Skipped,
    Overflowed,
}

/// What one step does besides computing the loss.
pub(super) struct StepPlan {
    pub grad_accum: usize,
    pub clip_grad_norm: Option<f32>,
    pub on_nonfinite: NonFinitePolicy,
    /// Multiply the loss of the batch's first rows by NaN (a fault put in on purpose).
    pub inject_nan: bool,
    /// The input precision of the forward pass's products (and so of the backward's).
    pub precision: Precision,
    /// The loss is multiplied by this before backward and the gradients divided by it
    /// after (f16's dynamic loss scaling), a step whose gradients overflow skipped.
    pub loss_scale: Option<f32>,
}

impl<M: Module + Send, O: Optimizer + Send> Replicas<M, O> {
    /// One replica per device: directly on one device of a local run, else data parallel
    /// over `comms` (or the in-process ring).
    pub fn build(
        devices: Vec<Device>,
        comms: Option<Vec<Box<dyn Communicator>>>,
        mut build: impl FnMut(&Device) -> Result<(M, O)>,
        config: &TrainConfig,
    ) -> Result<Self> {
        if devices.len() == 1 && comms.is_none() {
            if config.local_sgd.is_some() {
                return Err(Error::InvalidArgument(
                    "local SGD (--sync-every) averages replicas, and this run has one: train \
                     on several devices (--devices N), or leave --sync-every out"
                        .into(),
                ));
            }
            let device = devices.into_iter().next().expect("one device");
            let (model, optimizer) = build(&device)?;
            let params = model.parameters();
            return Ok(Replicas::Single {
                model,
                optimizer,
                device,
                params,
            });
        }
        let dp_config = DataParallelConfig {
            ring: RingConfig {
                timeout: config.comm.timeout,
                ..RingConfig::default()
            },
            on_nonfinite: config.on_nonfinite,
            grad_accum: config.grad_accum,
            clip_grad_norm: config.clip_grad_norm,
            grad_compression: config.comm.grad_compression,
            local_sgd: config.local_sgd,
            zero: config.zero,
            balance: config.balance.clone(),
            ..DataParallelConfig::default()
        };
        let dp = match comms {
            None => DataParallel::new(devices, &mut build, dp_config)?,
            Some(comms) => DataParallel::with_communicators(devices, comms, &mut build, dp_config)?,
        };
        Ok(Replicas::Parallel(Box::new(dp)))
    }

    pub fn model(&self) -> &M {
        match self {
            Replicas::Single { model, .. } => model,
            Replicas::Parallel(dp) => dp.model(),
        }
    }

    pub fn optimizer(&self) -> &O {
        match self {
            Replicas::Single { optimizer, .. } => optimizer,
            Replicas::Parallel(dp) => dp.optimizer(),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Replicas::Single { device, .. } => device,
            Replicas::Parallel(dp) => dp.devices()[0],
        }
    }

    /// Payload bytes one replica sent in the last step, where its communicator counts
    /// them (none on one device).
    pub fn last_step_bytes_sent(&self) -> Option<u64> {
        match self {
            Replicas::Single { .. } => None,
            Replicas::Parallel(dp) => dp.last_step_bytes_sent(),
        }
    }

    /// Replicas in the whole run, across processes.
    pub fn group_size(&self) -> usize {
        match self {
            Replicas::Single { .. } => 1,
            Replicas::Parallel(dp) => dp.group_size(),
        }
    }

    pub fn into_model(self) -> (M, O) {
        match self {
            Replicas::Single {
                model, optimizer, ..
            } => (model, optimizer),
            Replicas::Parallel(dp) => dp.into_model(),
        }
    }

    pub fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        match self {
            Replicas::Single { optimizer, .. } => optimizer.set_learning_rate(lr),
            Replicas::Parallel(dp) => dp.set_learning_rate(lr),
        }
    }

    /// Under local SGD, makes the replicas alike (see [`DataParallel::sync`]): before
    /// anything reads replica 0 as the run's model. A collective.
    pub fn sync(&mut self) -> Result<()> {
        match self {
            Replicas::Single { .. } => Ok(()),
            Replicas::Parallel(dp) => dp.sync(),
        }
    }

    /// The model and optimizer (and local SGD's outer optimizer), as a checkpoint
    /// (replica 0's: all replicas are alike, after [`Replicas::sync`]; under ZeRO-1 the
    /// optimizer state gathered from all of them, which makes this a collective that
    /// every process calls).
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        let mut c = Checkpoint::new();
        c.insert_module("model.", self.model())?;
        match self {
            Replicas::Parallel(dp) => {
                c.insert_state("optimizer.", dp.optimizer_state()?)?;
                c.insert_state(OUTER, dp.outer_state())?;
                if let Some(w) = dp.balance_weights() {
                    c.set_metadata(BALANCE_KEY, serde_json::to_string(w).map_err(Error::msg)?);
                }
            }
            Replicas::Single { optimizer, .. } => c.insert_optimizer("optimizer.", optimizer)?,
        }
        Ok(c)
    }

    /// The shards' weights, where not equal (auto-balancing done, or given).
    pub fn balance_weights(&self) -> Option<&[f64]> {
        match self {
            Replicas::Single { .. } => None,
            Replicas::Parallel(dp) => dp.balance_weights(),
        }
    }

    /// Whether [`Replicas::checkpoint`] is a collective (ZeRO-1's gather).
    pub fn checkpoint_is_collective(&self) -> bool {
        matches!(self, Replicas::Parallel(dp) if dp.is_sharded())
    }

    /// Sets the model and optimizer (every replica's) from `c`.
    pub fn restore(&mut self, c: &Checkpoint) -> Result<()> {
        let restore_one = |model: &M, optimizer: &mut O| -> Result<()> {
            c.restore(model, "model.")?;
            c.restore_optimizer("optimizer.", optimizer)?;
            Ok(())
        };
        match self {
            Replicas::Single {
                model, optimizer, ..
            } => restore_one(model, optimizer),
            Replicas::Parallel(dp) => {
                dp.replicas_mut()
                    .try_for_each(|(model, _)| c.restore(model, "model."))?;
                dp.load_optimizer_state(&c.state("optimizer."))
                    .map_err(|e| CheckpointError::Mismatch(e.to_string()))?;
                if let Some(json) = c.metadata(BALANCE_KEY) {
                    let weights: Vec<f64> = serde_json::from_str(json).map_err(|e| {
                        CheckpointError::Mismatch(format!("{BALANCE_KEY} is not weights: {e}"))
                    })?;
                    dp.set_balance_weights(weights)?;
                }
                dp.load_outer_state(&c.state(OUTER))
            }
        }
    }

    /// Whether every parameter is finite (one pass over them and one wait; replica 0's,
    /// all being alike). With SGD and AdamW a gradient that is infinite or NaN makes the
    /// parameters it reaches so.
    pub fn parameters_finite(&self) -> Result<bool> {
        let params = self.model().parameters();
        let count = Tensor::count_nonfinite_all(params.iter().map(|p| p.as_tensor()))?;
        Ok(match count {
            Some(t) => t.to_scalar()? == 0.0,
            None => true,
        })
    }

    /// One step over the samples `indices` of `data`. On one device, under `Skip` the
    /// loss and gradients are checked before the update (the step waits for the
    /// answer); under `Stop` the loss is checked when it is read, and a gradient that is
    /// not finite shows in the parameters it reaches. Several devices check the averaged
    /// loss and gradients on the host, where they are anyway.
    pub fn step<D, L>(
        &mut self,
        data: &D,
        indices: &[usize],
        loss: &L,
        plan: &StepPlan,
    ) -> Result<StepLoss>
    where
        D: DataSource,
        L: Fn(&M, &Device, &D::Batch) -> Result<Tensor> + Sync,
    {
        let _span = trace::span("step", "train step").arg("samples", || indices.len());
        let rows_loss = |model: &M, device: &Device, rows: std::ops::Range<usize>| {
            let batch = {
                let _span = trace::span("step", "batch").arg("rows", || rows.len());
                data.batch(&indices[rows.clone()])?
            };
            let _span = trace::span("step", "forward").arg("rows", || rows.len());
            // The ops record the precision, so backward (run after) uses it too.
            let l = with_precision(plan.precision, || loss(model, device, &batch))?;
            if l.elem_count() != 1 {
                return Err(Error::NotScalar(l.shape().clone()));
            }
            if plan.inject_nan && rows.start == 0 {
                return l.scale(f32::NAN);
            }
            Ok(l)
        };
        let len = indices.len();
        match self {
            Replicas::Single {
                model,
                optimizer,
                device,
                params,
            } => on_pool(matches!(device, Device::Gpu(_)), move || {
                let (mut grads, total) = backward_in_pieces(
                    model,
                    device,
                    0..len,
                    plan.grad_accum,
                    plan.loss_scale,
                    &rows_loss,
                )?;
                if plan.loss_scale.is_some() {
                    // An overflow is the scaler's to handle, unless the loss itself is
                    // not finite (then the non-finite policy decides, below). Both counts
                    // come back in one read: a GPU step waits once.
                    let loss_bad = total.count_nonfinite()?.reshape(1)?;
                    if let Some(grads_bad) = grads.count_nonfinite()? {
                        let counts = Tensor::cat(&[&loss_bad, &grads_bad.reshape(1)?], 0)?;
                        if let [0.0, g] = counts.to_vec()?[..] {
                            if g > 0.0 {
                                return Ok(StepLoss::Overflowed);
                            }
                        }
                    }
                }
                if let Some(max_norm) = plan.clip_grad_norm {
                    clip_grad_norm(params, &mut grads, max_norm)?;
                }
                if plan.on_nonfinite == NonFinitePolicy::Skip {
                    // Counted on the device, read back once.
                    let mut bad = total.count_nonfinite()?;
                    if let Some(n) = grads.count_nonfinite()? {
                        bad = bad.add(&n)?;
                    }
                    if bad.to_scalar()? > 0.0 {
                        return Ok(StepLoss::Skipped);
                    }
                }
                optimizer.step(&grads)?;
                Ok(StepLoss::OnDevice(total))
            }),
            Replicas::Parallel(dp) => {
                let skipped = dp.skipped_steps();
                dp.set_loss_scale(plan.loss_scale.unwrap_or(1.0))?;
                let l = dp.step(len, rows_loss)?;
                Ok(if dp.last_step_overflowed() {
                    StepLoss::Overflowed
                } else if dp.skipped_steps() > skipped {
                    StepLoss::Skipped
                } else {
                    StepLoss::Host(l)
                })
            }
        }
    }
}

/// Runs `f` on a thread of rayon's pool. The CPU kernels' parallel loops, started from a
/// thread outside the pool, each hand their work over and wait on a futex (tens of
/// microseconds, per op); from a pool thread they share it by work stealing. A training
/// step is hundreds of ops, so it runs where they are cheap, with the other workers
/// spinning for work meanwhile instead of falling asleep between ops.
///
/// The step records as the calling thread would (see `with_grad`): the pool thread that
/// runs it may be one waiting inside another job's `no_grad` region.
fn on_pool<R: Send>(gpu: bool, f: impl FnOnce() -> R + Send) -> R {
    let grad = ringtrain_runtime::grad_enabled();
    let f = move || ringtrain_runtime::with_grad(grad, f);
    if gpu {
        // The host mostly waits for the device: no cores to keep spinning for it.
        rayon::scope(|_| f())
    } else {
        ringtrain_runtime::with_awake_workers(f)
    }
}
