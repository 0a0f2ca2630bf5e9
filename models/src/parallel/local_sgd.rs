//! Local SGD: replicas train apart for a few steps, then average their parameters.
//!
//! Between synchronizations each replica steps on its own shard of every batch with its
//! own optimizer and sends nothing. Every `H`th step (and whenever the owner asks, e.g.
//! before an evaluation or a checkpoint) the replicas all-reduce how far each moved from
//! the parameters they last agreed on, the *anchor*, and apply an outer optimizer to the
//! average of those changes (DiLoCo's outer loop; with the default outer learning rate
//! of 1 and no momentum this is plain parameter averaging).
//!
//! The inner optimizers' state (momentum, Adam's moments) is averaged too by default
//! ([`InnerState::Averaged`]), so that after a synchronization every replica holds the
//! same bits, parameters and optimizer alike: a checkpoint taken there is the whole
//! run's state, and a resumed run continues exactly. [`InnerState::Local`] keeps each
//! replica's own, as DiLoCo does, and sends only the parameters' change; a checkpoint
//! then holds replica 0's inner state, which a resumed run gives every replica, so a
//! resume is a close continuation rather than the same run.
//!
//! What it trades: the parameters' change crosses the links once per `H` steps instead
//! of the gradients every step (plus, averaged, the optimizer state in f32: as many
//! values again for momentum SGD, twice as many for AdamW), at the price of replicas that
//! drift apart in between, which costs accuracy as `H` grows.

use super::{NonFinitePolicy, Replica, StepSettings};
use crate::nn::Module;
use ringtrain_runtime::comm::CommError;
use ringtrain_runtime::optim::{clip_grad_norm, Optimizer, StateTensor};
use ringtrain_runtime::{Device, Error, GradStore, Precision, Result, Tensor};
use std::ops::Range;

/// Local SGD's settings: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalSgd {
    /// Local steps between synchronizations (`H`, at least 1).
    pub sync_every: usize,
    /// What is done with the averaged change at a synchronization.
    pub outer: OuterOptimizer,
    /// Whether the inner optimizers' state is averaged at a synchronization.
    pub inner_state: InnerState,
}

/// What becomes of the inner optimizers' state at a synchronization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InnerState {
    /// Averaged over the replicas (sent in f32): every replica alike afterwards, so a
    /// checkpoint is exact.
    #[default]
    Averaged,
    /// Each replica keeps its own (DiLoCo): only the parameters' change is sent.
    Local,
}

impl LocalSgd {
    /// Plain parameter averaging every `sync_every` steps.
    pub fn every(sync_every: usize) -> Self {
        Self {
            sync_every,
            outer: OuterOptimizer::default(),
            inner_state: InnerState::default(),
        }
    }

    pub fn with_outer(mut self, outer: OuterOptimizer) -> Self {
        self.outer = outer;
        self
    }

    pub fn with_inner_state(mut self, inner_state: InnerState) -> Self {
        self.inner_state = inner_state;
        self
    }

    pub fn validate(&self) -> Result<()> {
        if self.sync_every == 0 {
            return Err(Error::InvalidArgument(
                "local SGD synchronizes every H >= 1 steps, got H = 0".into(),
            ));
        }
        self.outer.validate()
    }

    /// One line for a run's header.
    pub fn describe(&self) -> String {
        let o = &self.outer;
        let outer = if *o == OuterOptimizer::default() {
            "parameters averaged".to_string()
        } else {
            format!(
                "outer SGD lr {} momentum {}{}",
                o.lr,
                o.momentum,
                if o.nesterov { " (Nesterov)" } else { "" }
            )
        };
        let inner = match self.inner_state {
            InnerState::Averaged => "optimizer state averaged",
            InnerState::Local => "optimizer state kept per replica",
        };
        format!(
            "local SGD, synchronized every {} steps: {outer}, {inner}",
            self.sync_every
        )
    }
}

/// The optimizer applied at a synchronization to the *outer gradient* `d`, the mean over
/// replicas of (anchor - local parameters): with momentum `mu`, `v = mu * v + d`, and the
/// new anchor is `anchor - lr * (d + mu * v)` (Nesterov) or `anchor - lr * v`, as
/// PyTorch's SGD. The default (lr 1, no momentum) makes the new anchor the replicas' mean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OuterOptimizer {
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
}

impl Default for OuterOptimizer {
    fn default() -> Self {
        Self {
            lr: 1.0,
            momentum: 0.0,
            nesterov: false,
        }
    }
}

impl OuterOptimizer {
    /// DiLoCo's outer optimizer (Douillard et al., 2023): Nesterov momentum 0.9, lr 0.7.
    pub fn diloco() -> Self {
        Self {
            lr: 0.7,
            momentum: 0.9,
            nesterov: true,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the outer learning rate must be finite and > 0, got {}",
                self.lr
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::InvalidArgument(format!(
                "the outer momentum must be in [0, 1), got {}",
                self.momentum
            )));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(Error::InvalidArgument(
                "Nesterov momentum needs an outer momentum > 0".into(),
            ));
        }
        Ok(())
    }
}

/// How one replica's local step went.
pub(super) struct LocalStep {
    /// Rows of the batch this replica computed, and their mean loss (0 for none).
    pub rows: usize,
    pub loss: f32,
    pub outcome: Outcome,
}

pub(super) enum Outcome {
    Stepped,
    /// Non-finite under [`NonFinitePolicy::Skip`]: no update.
    Skipped,
    /// Scaled gradients overflowed (the loss finite): no update.
    Overflowed,
    /// Non-finite under [`NonFinitePolicy::Stop`]: no update, and the step is an error.
    NonFinite(String),
}

/// Forward and backward over `rows`, in `grad_accum` contiguous pieces whose gradients
/// are summed: the gradients of the rows' mean loss, and that loss (on the device). With
/// a loss scale, backward starts from the scaled loss and the gradients are unscaled
/// after (a power of two: exact where nothing overflowed).
pub(crate) fn backward_in_pieces<M, F>(
    model: &M,
    device: &Device,
    rows: Range<usize>,
    grad_accum: usize,
    loss_scale: Option<f32>,
    loss: &F,
) -> Result<(GradStore, Tensor)>
where
    F: Fn(&M, &Device, Range<usize>) -> Result<Tensor>,
{
    let len = rows.len();
    let mut grads = GradStore::default();
    let mut total: Option<Tensor> = None;
    for j in 0..grad_accum {
        let piece = super::shard(len, grad_accum, j);
        if piece.is_empty() {
            continue;
        }
        let piece_len = piece.len();
        let mut l = loss(
            model,
            device,
            rows.start + piece.start..rows.start + piece.end,
        )?;
        if l.elem_count() != 1 {
            return Err(Error::NotScalar(l.shape().clone()));
        }
        if piece_len != len {
            l = l.scale(piece_len as f32 / len as f32)?;
        }
        grads.add(match loss_scale {
            Some(s) => l.scale(s)?.backward()?,
            None => l.backward()?,
        })?;
        let l = l.detach();
        total = Some(match total {
            Some(t) => t.add(&l)?,
            None => l,
        });
    }
    let total = total.ok_or_else(|| Error::InvalidArgument("an empty batch has no loss".into()))?;
    if let Some(s) = loss_scale {
        grads.scale(1.0 / s)?;
    }
    Ok((grads, total))
}

impl<M: Module + Send, O: Optimizer + Send> Replica<M, O> {
    /// One step on this replica's own rows, applied by its own optimizer; nothing is
    /// sent. The first local step after a synchronization (or the start) notes the
    /// parameters as the anchor.
    pub(super) fn local_step<F>(
        &mut self,
        settings: &StepSettings,
        policy: NonFinitePolicy,
        rows: Range<usize>,
        loss: &F,
    ) -> Result<LocalStep>
    where
        F: Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync,
    {
        if self.anchor.is_none() {
            self.anchor = Some(self.read_parameters()?);
        }
        if rows.is_empty() {
            return Ok(LocalStep {
                rows: 0,
                loss: 0.0,
                outcome: Outcome::Stepped,
            });
        }
        let scale = (settings.loss_scale != 1.0).then_some(settings.loss_scale);
        let (mut grads, total) = backward_in_pieces(
            &self.model,
            &self.device,
            rows.clone(),
            settings.grad_accum,
            scale,
            loss,
        )?;
        // The loss and both non-finite counts in one read: one wait per step.
        let mut parts = vec![total.reshape(1)?, total.count_nonfinite()?.reshape(1)?];
        if let Some(g) = grads.count_nonfinite()? {
            parts.push(g.reshape(1)?);
        }
        let read = Tensor::cat(&parts.iter().collect::<Vec<_>>(), 0)?.to_vec()?;
        let (loss_value, loss_bad, grads_bad) = (read[0], read[1], read.get(2).copied());
        let step = |outcome| LocalStep {
            rows: rows.len(),
            loss: loss_value,
            outcome,
        };
        if loss_bad > 0.0 || grads_bad.unwrap_or(0.0) > 0.0 {
            return Ok(step(if scale.is_some() && loss_bad == 0.0 {
                Outcome::Overflowed
            } else if policy == NonFinitePolicy::Skip {
                Outcome::Skipped
            } else {
                Outcome::NonFinite(format!(
                    "replica {}'s local loss is {loss_value}, and {} of its gradient values \
                     are infinite or NaN",
                    self.comm.rank(),
                    grads_bad.unwrap_or(0.0)
                ))
            }));
        }
        if let Some(max_norm) = settings.clip_grad_norm {
            clip_grad_norm(&self.params, &mut grads, max_norm)?;
        }
        self.optimizer.step(&grads)?;
        Ok(step(Outcome::Stepped))
    }

    /// Averages the replicas' progress since the anchor through the outer optimizer, and
    /// (as `local` says) the inner optimizers' state: afterwards every replica holds the
    /// same parameters. A failure aborts the group, so that no peer waits for this
    /// replica.
    pub(super) fn synchronize(&mut self, local: &LocalSgd, wire: Precision) -> Result<()> {
        let result = self.try_synchronize(local, wire);
        if let Err(e) = &result {
            self.comm.abort(&e.to_string());
        }
        result
    }

    fn try_synchronize(&mut self, local: &LocalSgd, wire: Precision) -> Result<()> {
        let outer = &local.outer;
        let Some(mut anchor) = self.anchor.take() else {
            // No local step since the last synchronization, on any replica (they step
            // together): the replicas are alike already.
            return Ok(());
        };
        let n = self.comm.size() as f32;
        // The change, not the parameters, crosses the links: it is small beside them, so
        // a 16-bit wire rounds it far less than it would round the parameters.
        let mut change = self.read_parameters()?;
        for (c, a) in change.iter_mut().zip(&anchor) {
            *c = a - *c;
        }
        self.comm.all_reduce_as(&mut change, wire)?;
        if outer.momentum > 0.0 && self.outer_momentum.len() != anchor.len() {
            self.outer_momentum = vec![0.0; anchor.len()];
        }
        for (j, (a, &sum)) in anchor.iter_mut().zip(&change).enumerate() {
            let d = sum / n;
            let step = if outer.momentum == 0.0 {
                d
            } else {
                let v = &mut self.outer_momentum[j];
                *v = outer.momentum * *v + d;
                if outer.nesterov {
                    d + outer.momentum * *v
                } else {
                    *v
                }
            };
            *a -= outer.lr * step;
        }
        self.write_parameters(&anchor)?;
        self.anchor = Some(anchor);
        match local.inner_state {
            InnerState::Averaged => self.average_optimizer_state(),
            InnerState::Local => Ok(()),
        }
    }

    /// Replaces the optimizer's state by its mean over the replicas, summed in f32 on
    /// the ring (exact for the step counts, small integers alike on every replica) and
    /// then divided.
    fn average_optimizer_state(&mut self) -> Result<()> {
        let n = self.comm.size() as f32;
        let state = self.optimizer.state()?;
        let len: usize = state.iter().map(|(_, _, v)| v.len()).sum();
        // A replica that skipped its first steps may hold no state yet: the lengths must
        // agree before the all-reduce, or it would pair unrelated values (or wait).
        let halves = |len: usize| [(len & 0xffff) as f32, (len >> 16 & 0xffff) as f32];
        let mut total = halves(len).to_vec();
        self.comm.all_reduce(&mut total)?;
        if total != halves(len).map(|h| h * n) {
            return Err(Error::Comm(CommError::Mismatch(format!(
                "the replicas' optimizers hold state of different sizes ({len} values on \
                 rank {}), so it cannot be averaged: did a replica skip its first steps?",
                self.comm.rank()
            ))));
        }
        if len == 0 {
            return Ok(());
        }
        let mut flat: Vec<f32> = state
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .collect();
        self.comm.all_reduce(&mut flat)?;
        let mut at = 0;
        let averaged: Vec<StateTensor> = state
            .into_iter()
            .map(|(name, shape, values)| {
                let mean = flat[at..at + values.len()].iter().map(|s| s / n).collect();
                at += values.len();
                (name, shape, mean)
            })
            .collect();
        self.optimizer.load_state(&averaged)
    }

    /// The outer optimizer's momentum, one tensor per parameter (none without momentum).
    pub(super) fn outer_state(&self) -> Vec<StateTensor> {
        if self.outer_momentum.is_empty() {
            return Vec::new();
        }
        let mut at = 0;
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let n = p.elem_count();
                let v = self.outer_momentum[at..at + n].to_vec();
                at += n;
                (format!("{i}.momentum"), p.dims().to_vec(), v)
            })
            .collect()
    }

    pub(super) fn load_outer_state(&mut self, state: &[StateTensor]) -> Result<()> {
        if state.is_empty() {
            self.outer_momentum.clear();
            return Ok(());
        }
        if state.len() != self.params.len() {
            return Err(Error::InvalidArgument(format!(
                "the outer optimizer's state holds {} tensors for {} parameters",
                state.len(),
                self.params.len()
            )));
        }
        let mut flat = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let name = format!("{i}.momentum");
            let Some((_, shape, values)) = state.iter().find(|(n, _, _)| *n == name) else {
                return Err(Error::InvalidArgument(format!(
                    "the outer optimizer's state has no `{name}`"
                )));
            };
            if shape.as_slice() != p.dims() || values.len() != p.elem_count() {
                return Err(Error::InvalidArgument(format!(
                    "the outer optimizer's `{name}` has shape {shape:?}, its parameter {:?}",
                    p.dims()
                )));
            }
            flat.extend_from_slice(values);
        }
        self.outer_momentum = flat;
        Ok(())
    }
}
