//! Synchronous data parallelism: one replica of a model per device, each global batch
//! split into one shard per replica, gradients averaged by all-reduce every step.
//!
//! The replicas of one group may live in one process (threads, joined by the in-process
//! ring: [`DataParallel::new`]) or in many (one or more per process, joined by MPI or a
//! two-level communicator: [`DataParallel::with_communicators`]). A replica's place in
//! the group is its communicator's rank, which picks its shard of every batch.
//!
//! Each step runs one worker thread per replica. A worker computes its shard's loss and
//! walks backward; as each bucket of gradients completes, it hands the bucket to the
//! replica's communication thread, which all-reduces buckets in a fixed order (the same
//! on every replica) while backward goes on producing the next. When all buckets are
//! back, every replica applies the same averaged gradients with its own optimizer, so all
//! replicas keep bitwise-identical parameters.
//!
//! With [`DataParallelConfig::local_sgd`] set the replicas instead step apart on their
//! shards and average their parameters every few steps (see [`LocalSgd`]).

mod balance;
mod buckets;
mod local_sgd;
mod zero;

use crate::nn::Module;
use balance::Calibration;
pub use balance::{weighted_shard, Balance};
use buckets::Layout;
use crossbeam_channel::{unbounded, Receiver, Sender};
pub(crate) use local_sgd::backward_in_pieces;
pub use local_sgd::{InnerState, LocalSgd, OuterOptimizer};
use local_sgd::{LocalStep, Outcome};
use ringtrain_runtime::comm::{ring_with, CommError, Communicator, RingConfig};
use ringtrain_runtime::optim::{Optimizer, StateTensor};
use ringtrain_runtime::{
    trace, Device, Error, GradStore, Precision, Result, Tensor, TensorId, Var,
};
use std::collections::HashMap;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};
use zero::Sharding;

/// How gradients are grouped and moved.
#[derive(Debug, Clone)]
pub struct DataParallelConfig {
    /// Gradient bytes per all-reduce (PyTorch DDP's default, 25 MiB): large enough to
    /// run at full bandwidth, small enough to overlap with backward.
    pub bucket_bytes: usize,
    /// The first bucket, holding the last layers' gradients (ready first), is smaller so
    /// that communication starts early.
    pub first_bucket_bytes: usize,
    /// The in-process ring's chunking and failure timeout.
    pub ring: RingConfig,
    /// What a step does when the averaged loss or gradients hold an infinity or NaN.
    pub on_nonfinite: NonFinitePolicy,
    /// Micro-batches per replica and step (gradient accumulation): each replica's shard
    /// is computed in this many contiguous pieces, one after another, their gradients
    /// summed on the device, so that only a piece's activations are held at once. The
    /// step is the same as with one piece, up to rounding.
    pub grad_accum: usize,
    /// Clips the averaged gradient to this global L2 norm before the update (PyTorch's
    /// `clip_grad_norm_`), on every replica alike: all hold the same averaged values.
    pub clip_grad_norm: Option<f32>,
    /// The format gradients cross the links in: f32, or bf16 / f16 (half the bytes),
    /// summed in f32 where they arrive (see [`Communicator::all_reduce_as`]); every
    /// replica still ends each step with the same bits. The loss, and the parameters
    /// broadcast at the start, always travel as f32.
    pub grad_compression: Precision,
    /// Local SGD instead of averaging gradients every step: replicas step apart and
    /// average their parameters every [`LocalSgd::sync_every`] steps (the change crossing
    /// the links in `grad_compression`'s format). `None` averages gradients every step.
    pub local_sgd: Option<LocalSgd>,
    /// ZeRO stage: 0, every replica holds the whole optimizer state; 1, each holds the
    /// state of its own share of the parameters (about `1 / N`, see
    /// [`DataParallel::optimizer_state`]), gradients reduce-scattered and parameters
    /// all-gathered. Stage 1 needs gradients averaged every step in f32 (no local SGD,
    /// no compression).
    pub zero: u8,
    /// How each batch is shared among the replicas: equally, or (for replicas that
    /// differ in speed) by weights or by throughput measured on the first steps.
    pub balance: Balance,
}

/// What a data-parallel step does when the averaged loss or gradients hold an infinity or
/// NaN. Either way no parameter or optimizer state changes (state the forward pass keeps,
/// such as batch norm's running estimates and dropout's stream, has moved on): every
/// replica sees the same averaged values, so all of them (in every process) decide
/// alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NonFinitePolicy {
    /// The step returns [`Error::NonFinite`], naming the first parameter affected; the
    /// group stays usable (a caller may lower the learning rate and go on).
    #[default]
    Stop,
    /// The step is skipped and counted ([`DataParallel::skipped_steps`]); it returns the
    /// loss, which may be NaN.
    Skip,
}

impl Default for DataParallelConfig {
    fn default() -> Self {
        Self {
            bucket_bytes: 25 << 20,
            first_bucket_bytes: 1 << 20,
            ring: RingConfig::default(),
            on_nonfinite: NonFinitePolicy::default(),
            grad_accum: 1,
            clip_grad_norm: None,
            grad_compression: Precision::F32,
            local_sgd: None,
            zero: 0,
            balance: Balance::Equal,
        }
    }
}

/// One model per device, trained as one: see the module documentation.
///
/// ```
/// use ringtrain_models::nn::{Module, ModuleState};
/// use ringtrain_models::parallel::{DataParallel, DataParallelConfig};
/// use ringtrain_models::zoo::{mlp, Activation};
/// use ringtrain_runtime::optim::{Sgd, SgdConfig};
/// use ringtrain_runtime::{rng_from_seed, Device, Tensor};
///
/// # fn main() -> ringtrain_runtime::Result<()> {
/// let devices = vec![Device::cpu(), Device::cpu()];
/// let mut dp = DataParallel::new(devices, |device| {
///     let model = mlp(4, &[8], 3, Activation::Relu, device, &mut rng_from_seed(1))?;
///     let opt = Sgd::new(model.parameters(), SgdConfig::default())?;
///     Ok((model, opt))
/// }, DataParallelConfig::default())?;
/// let (x, labels) = (vec![0.5f32; 6 * 4], vec![0u32, 1, 2, 0, 1, 2]);
/// // The closure computes one shard's loss on one replica: rows `rows` of the batch.
/// let loss = dp.step(6, |model, device, rows| {
///     let xs = Tensor::from_slice(&x[rows.start * 4..rows.end * 4], (rows.len(), 4), device)?;
///     model.forward(&xs)?.cross_entropy(&labels[rows])
/// })?;
/// assert!(loss.is_finite());
/// # Ok(())
/// # }
/// ```
pub struct DataParallel<M, O> {
    replicas: Vec<Replica<M, O>>,
    layout: Layout,
    /// Set by a failed step: the group cannot be trusted to agree any more.
    failed: Option<String>,
    on_nonfinite: NonFinitePolicy,
    grad_accum: usize,
    clip_grad_norm: Option<f32>,
    skipped: u64,
    last_grad_norm: Option<f32>,
    /// Each shard's loss is multiplied by this before backward and the averaged
    /// gradients divided by it after (f16's dynamic loss scaling; 1 is none).
    loss_scale: f32,
    overflowed: bool,
    grad_compression: Precision,
    /// Payload bytes replica 0 sent in the last step, where its communicator counts.
    last_bytes_sent: Option<u64>,
    local_sgd: Option<LocalSgd>,
    /// Local steps taken since the replicas last synchronized (local SGD only).
    since_sync: usize,
    /// ZeRO-1: which replica updates which parameter.
    sharding: Option<Sharding>,
    /// Each replica's share of a batch, where not equal (by rank).
    weights: Option<Vec<f64>>,
    /// Auto-balancing, while it times the first steps, and what its first phase
    /// measured (rows and seconds per step, by rank).
    calibration: Option<Calibration>,
    balance_first: Vec<balance::Point>,
}

struct Replica<M, O> {
    device: Device,
    model: M,
    optimizer: O,
    params: Vec<Var>,
    /// Parameter index by tensor id, to place gradients as backward reports them.
    index: HashMap<TensorId, usize>,
    comm: Box<dyn Communicator>,
    /// Host buffers of the buckets, kept from step to step.
    buckets: Vec<Vec<f32>>,
    /// Local SGD: the parameters the replicas last agreed on, all of them in one vector
    /// (`None` until the first local step after a start or a restore).
    anchor: Option<Vec<f32>>,
    /// Local SGD: the outer optimizer's momentum, like `anchor` (empty without).
    outer_momentum: Vec<f32>,
}

/// From a replica's worker to its communication thread.
enum ToComm {
    Bucket(usize, Vec<f32>),
    /// The replica's share of the batch loss, then one flag per parameter (1 where this
    /// replica's backward reached it): the last thing reduced.
    Tail(Vec<f32>),
    Failed(String),
}

/// From the communication thread back to the worker.
enum FromComm {
    Bucket(usize, Vec<f32>),
    Tail(Vec<f32>),
}

impl<M: Module + Send, O: Optimizer + Send> DataParallel<M, O> {
    /// One replica per device, connected by an in-process ring. `build` makes a model
    /// and its optimizer on a device; it is called once per device, and replica 0's
    /// parameters are then broadcast to all others, so they start identical whatever
    /// `build` did.
    pub fn new(
        devices: Vec<Device>,
        build: impl FnMut(&Device) -> Result<(M, O)>,
        config: DataParallelConfig,
    ) -> Result<Self> {
        let comms = ring_with(devices.len(), config.ring.clone())?
            .into_iter()
            .map(|c| Box::new(c) as Box<dyn Communicator>)
            .collect();
        Self::with_communicators(devices, comms, build, config)
    }

    /// Like [`DataParallel::new`], with communicators of the caller's: `comms[i]` serves
    /// `devices[i]`. The communicators belong to one group (the same size) with distinct
    /// ranks; in a multi-process run each process holds some of the group's ranks (one,
    /// with [`MpiComm`](ringtrain_runtime::comm)), and every process builds its
    /// `DataParallel` at the same time.
    ///
    /// Before anything else the group checks that every rank built the same parameters
    /// (names and shapes) and gradient buckets, by comparing a hash of them with rank 0's:
    /// a mismatch is an error on every rank, not a hang in a collective of the wrong
    /// length. Then rank 0's parameters are broadcast to every replica.
    pub fn with_communicators(
        devices: Vec<Device>,
        comms: Vec<Box<dyn Communicator>>,
        mut build: impl FnMut(&Device) -> Result<(M, O)>,
        config: DataParallelConfig,
    ) -> Result<Self> {
        if devices.is_empty() {
            return Err(Error::InvalidArgument(
                "data parallelism needs at least one device".into(),
            ));
        }
        if config.grad_accum == 0 {
            return Err(Error::InvalidArgument(
                "gradient accumulation needs at least one micro-batch per step".into(),
            ));
        }
        if let Some(c) = config.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "the gradient norm to clip to must be finite and > 0, got {c}"
                )));
            }
        }
        if let Some(local) = &config.local_sgd {
            local.validate()?;
        }
        match config.zero {
            0 => {}
            1 if config.local_sgd.is_some() => {
                return Err(Error::InvalidArgument(
                    "ZeRO-1 shards the state of an optimizer that steps on averaged \
                     gradients; local SGD steps each replica apart: use one or the other"
                        .into(),
                ))
            }
            1 if config.grad_compression.is_reduced() => {
                return Err(Error::InvalidArgument(format!(
                    "ZeRO-1 reduce-scatters gradients in f32; {} gradient compression is \
                     for the all-reduce of plain data parallelism",
                    config.grad_compression
                )))
            }
            1 => {}
            z => {
                return Err(Error::InvalidArgument(format!(
                    "ZeRO stage {z} is not built: stage 1 shards the optimizer state; stages \
                     2 and 3 (sharded gradients and parameters) are not in ringtrain"
                )))
            }
        }
        let group = comms.first().map_or(0, |c| c.size());
        let checked = check_group(devices.len(), &comms).and_then(|_| {
            config.balance.validate(group)?;
            if config.local_sgd.is_some() && matches!(config.balance, Balance::Auto { .. }) {
                return Err(Error::InvalidArgument(
                    "auto-balancing times gradient-averaging steps; under local SGD give \
                     the weights (--balance W1,W2,...)"
                        .into(),
                ));
            }
            Ok(())
        });
        if let Err(e) = checked {
            abort_all(comms, &e);
            return Err(e);
        }
        let devices_len = devices.len();
        let mut pending = comms.into_iter();
        let mut replicas: Vec<Replica<M, O>> = Vec::with_capacity(devices.len());
        let mut names = None;
        // A replica is built before it takes its communicator, so that on a failure every
        // communicator not yet handed out is still here to abort.
        let built = (|| -> Result<()> {
            for device in devices {
                let (model, optimizer) = build(&device)?;
                let named = crate::nn::unique_parameters(model.named_parameters());
                let these: Vec<(String, Vec<usize>)> = named
                    .iter()
                    .map(|(n, v)| (n.clone(), v.dims().to_vec()))
                    .collect();
                match &names {
                    None => names = Some(these),
                    Some(first) if *first != these => {
                        return Err(Error::InvalidArgument(format!(
                            "replica {} has other parameters than replica 0 (names and shapes \
                             must match): {these:?} vs {first:?}",
                            replicas.len()
                        )))
                    }
                    Some(_) => {}
                }
                if let Some((name, v)) = named.iter().find(|(_, v)| v.device() != &device) {
                    return Err(Error::InvalidArgument(format!(
                        "replica {}: parameter {name} lives on {}, not on the replica's device {}",
                        replicas.len(),
                        v.device().name(),
                        device.name()
                    )));
                }
                let params: Vec<Var> = named.into_iter().map(|(_, v)| v).collect();
                let index = params
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (v.id(), i))
                    .collect();
                replicas.push(Replica {
                    device,
                    model,
                    optimizer,
                    params,
                    index,
                    comm: pending
                        .next()
                        .expect("one communicator per device, checked"),
                    buckets: Vec::new(),
                    anchor: None,
                    outer_momentum: Vec::new(),
                });
            }
            Ok(())
        })();
        if let Err(e) = built {
            // Peers in other processes would otherwise wait for these replicas until
            // their timeout.
            let taken = replicas.into_iter().map(|r| r.comm);
            abort_all(taken.chain(pending), &e);
            return Err(e);
        }
        let shapes: Vec<_> = replicas[0]
            .params
            .iter()
            .map(|v| v.shape().clone())
            .collect();
        let names = names.expect("at least one replica");
        let param_names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        let layout = Layout::new(
            &shapes,
            &param_names,
            config.first_bucket_bytes,
            config.bucket_bytes,
        );
        for r in &mut replicas {
            r.buckets = layout.bucket_lens.iter().map(|&n| vec![0.0; n]).collect();
        }
        let mut layout_hash = layout.hash(&names);
        let sharding = (config.zero == 1).then(|| {
            // Ranks that disagree on sharding would scatter buffers differently.
            layout_hash ^= 0x5a5a_0001;
            Sharding::new(&layout, replicas[0].comm.size())
        });
        let mut dp = Self {
            replicas,
            layout,
            failed: None,
            on_nonfinite: config.on_nonfinite,
            grad_accum: config.grad_accum,
            clip_grad_norm: config.clip_grad_norm,
            skipped: 0,
            last_grad_norm: None,
            loss_scale: 1.0,
            overflowed: false,
            grad_compression: config.grad_compression,
            last_bytes_sent: None,
            local_sgd: config.local_sgd,
            since_sync: 0,
            sharding,
            weights: match &config.balance {
                Balance::Weights(w) => Some(w.clone()),
                _ => None,
            },
            calibration: match config.balance {
                Balance::Auto { steps } => Some(Calibration::start(steps, devices_len)),
                _ => None,
            },
            balance_first: Vec::new(),
        };
        run_on_replicas(&mut dp.replicas, &mut dp.failed, |r| {
            r.agree_on_layout(layout_hash)?;
            r.broadcast_parameters()
        })?;
        Ok(dp)
    }

    /// Replicas in this process.
    pub fn size(&self) -> usize {
        self.replicas.len()
    }

    /// Replicas in the whole group, across processes.
    pub fn group_size(&self) -> usize {
        self.replicas[0].comm.size()
    }

    /// The group ranks of this process's replicas.
    pub fn ranks(&self) -> Vec<usize> {
        self.replicas.iter().map(|r| r.comm.rank()).collect()
    }

    /// Stops the group: every replica's peers, in this process and others, get an error
    /// naming this process's replicas and `reason` from their current or next
    /// collective. Call it when this process must give up outside a step (a step's own
    /// failures already do this), so that no peer waits for it until its timeout.
    pub fn abort(&mut self, reason: &str) {
        for r in &mut self.replicas {
            r.comm.abort(reason);
        }
        self.failed.get_or_insert_with(|| reason.to_string());
    }

    pub fn devices(&self) -> Vec<&Device> {
        self.replicas.iter().map(|r| &r.device).collect()
    }

    /// Replica `i`'s model (all hold the same parameters).
    pub fn replica(&self, i: usize) -> Option<&M> {
        self.replicas.get(i).map(|r| &r.model)
    }

    /// Replica 0's model, e.g. to evaluate or save.
    pub fn model(&self) -> &M {
        &self.replicas[0].model
    }

    /// Replica 0's optimizer, e.g. to save its state (all replicas hold the same,
    /// except under ZeRO-1: see [`DataParallel::optimizer_state`]).
    pub fn optimizer(&self) -> &O {
        &self.replicas[0].optimizer
    }

    /// Replica `i`'s optimizer (under ZeRO-1, it holds the state of its own parameters
    /// only).
    pub fn replica_optimizer(&self, i: usize) -> Option<&O> {
        self.replicas.get(i).map(|r| &r.optimizer)
    }

    /// Whether the optimizer state is sharded (ZeRO-1).
    pub fn is_sharded(&self) -> bool {
        self.sharding.is_some()
    }

    /// The whole optimizer state, for a checkpoint: replica 0's, or under ZeRO-1 every
    /// replica's share gathered into what one optimizer of plain data parallelism would
    /// hold (the same names and shapes; values within rounding). Under ZeRO-1 this is a
    /// collective: every process of the group calls it at the same step.
    ///
    /// ZeRO-1 gives each parameter to one replica, whose optimizer alone updates it and
    /// holds its state; the parameters are cut into `N` contiguous runs of about equal
    /// size (whole parameters, as PyTorch's `ZeroRedundancyOptimizer` shards), so each
    /// replica holds about `1 / N` of the state, or the largest parameter's where that is
    /// more.
    pub fn optimizer_state(&mut self) -> Result<Vec<StateTensor>> {
        if let Some(reason) = &self.failed {
            return Err(Error::InvalidArgument(format!(
                "this data-parallel group stopped at an earlier failure: {reason}"
            )));
        }
        let Some(sharding) = &self.sharding else {
            return self.replicas[0].optimizer.state();
        };
        let mut states = run_on_replicas(&mut self.replicas, &mut self.failed, |r| {
            let gathered = zero::gather_state(r.comm.as_mut(), &r.optimizer, sharding);
            if let Err(e) = &gathered {
                r.comm.abort(&e.to_string());
            }
            gathered
        })?;
        Ok(states.swap_remove(0))
    }

    /// Sets every replica's optimizer state from `state` (as
    /// [`DataParallel::optimizer_state`] gave it, from a group of any size, sharded or
    /// not); under ZeRO-1 each replica keeps its own parameters' share.
    pub fn load_optimizer_state(&mut self, state: &[StateTensor]) -> Result<()> {
        for r in &mut self.replicas {
            match &self.sharding {
                Some(sharding) => {
                    let own = zero::own_state(&r.optimizer, state, sharding, r.comm.rank());
                    r.optimizer.load_state(&own)?;
                }
                None => r.optimizer.load_state(state)?,
            }
        }
        Ok(())
    }

    /// Replica 0's model and optimizer, the group given up (the other replicas and the
    /// communicators are dropped).
    pub fn into_model(self) -> (M, O) {
        let r = self
            .replicas
            .into_iter()
            .next()
            .expect("at least one replica");
        (r.model, r.optimizer)
    }

    /// Every replica of this process, to change all alike (restore a checkpoint, say):
    /// replicas must stay identical, so whatever is done to one must be done to all.
    /// Under local SGD, [`DataParallel::sync`] first: the parameters as they are
    /// afterwards become the replicas' new common starting point.
    pub fn replicas_mut(&mut self) -> impl Iterator<Item = (&M, &mut O)> {
        self.since_sync = 0;
        self.replicas.iter_mut().map(|r| {
            r.anchor = None;
            (&r.model, &mut r.optimizer)
        })
    }

    /// Sets every replica's learning rate (a schedule).
    pub fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        for r in &mut self.replicas {
            r.optimizer.set_learning_rate(lr)?;
        }
        Ok(())
    }

    /// One synchronous step over a global batch of `batch_len` rows, and its mean loss.
    ///
    /// The replica of rank `i` gets the contiguous shard `rows` of the batch (sizes differ
    /// by at most one, or follow [`DataParallelConfig::balance`]'s weights; a replica may
    /// get none when the batch is smaller than the group), and `loss(model, device,
    /// rows)` returns the mean loss of those rows on that replica.
    /// Shard losses are weighted by their share of the batch, so the averaged gradient is
    /// the gradient of the whole batch's mean loss, as on one device. Parameters that no
    /// replica's loss reached get no gradient, so the optimizer leaves them alone, as on
    /// one device.
    ///
    /// If any replica fails (an error or a panic in `loss`, a device error, a peer that
    /// stops), the step returns an error naming that replica, and so does every later
    /// step. If the averaged loss or gradients are not finite, no parameter changes and
    /// [`DataParallelConfig::on_nonfinite`] decides what the step returns.
    ///
    /// Under local SGD each replica instead steps on its own rows' mean loss with its own
    /// optimizer, and the step synchronizes the replicas when it is the
    /// [`LocalSgd::sync_every`]th since they last did. It returns the mean loss of this
    /// process's rows (the whole batch's when every replica is in this process; 0 when
    /// none of its replicas had rows). A replica whose loss or gradients are not finite
    /// skips its update (and the others go on): under `Skip` the step is counted as
    /// skipped, under `Stop` it returns [`Error::NonFinite`], the group still usable; a
    /// replica whose scaled gradients overflowed sets
    /// [`DataParallel::last_step_overflowed`].
    pub fn step<F>(&mut self, batch_len: usize, loss: F) -> Result<f32>
    where
        F: Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync,
    {
        if let Some(reason) = &self.failed {
            return Err(Error::InvalidArgument(format!(
                "this data-parallel group stopped at an earlier failure: {reason}"
            )));
        }
        if batch_len == 0 {
            return Err(Error::InvalidArgument("an empty batch has no loss".into()));
        }
        if let Some(local) = self.local_sgd {
            return self.step_locally(batch_len, &loss, local);
        }
        let layout = &self.layout;
        let sharding = self.sharding.as_ref();
        let weights = self.weights.as_deref();
        let loss = &loss;
        let settings = self.settings(batch_len);
        self.overflowed = false;
        let bytes_before = self.replicas[0].comm.bytes_sent();
        let outcomes = run_on_replicas(&mut self.replicas, &mut self.failed, |r| {
            let rows = rows_of(batch_len, weights, r.comm.size(), r.comm.rank());
            r.step(layout, sharding, &settings, rows, loss)
        })?;
        if self.calibration.is_some() {
            self.calibrate(batch_len, &outcomes)?;
        }
        self.last_bytes_sent = bytes_before
            .zip(self.replicas[0].comm.bytes_sent())
            .map(|(before, after)| after - before);
        // Every replica reduced the same values, so they agree on this.
        let StepOutcome {
            loss: global_loss,
            grad_norm,
            nonfinite,
            ..
        } = &outcomes[0];
        self.last_grad_norm = *grad_norm;
        let Some(what) = nonfinite else {
            return Ok(*global_loss);
        };
        if self.loss_scale != 1.0 && global_loss.is_finite() {
            // The scaled gradients overflowed: the loss scaler's to handle.
            self.overflowed = true;
            return Ok(*global_loss);
        }
        match self.on_nonfinite {
            NonFinitePolicy::Skip => {
                self.skipped += 1;
                Ok(*global_loss)
            }
            NonFinitePolicy::Stop => {
                let names: Vec<String> =
                    crate::nn::unique_parameters(self.model().named_parameters())
                        .into_iter()
                        .map(|(n, _)| n)
                        .collect();
                Err(Error::NonFinite(what.describe(&names)))
            }
        }
    }

    /// Auto-balancing: adds this step's timings, and at the end of each phase agrees
    /// with the group on every replica's rows and seconds per step (a collective, at the
    /// same step on every process): after the first, shards proportional to the
    /// throughputs; after the second, the shards that make the slowest replica fastest,
    /// fixed from then on.
    fn calibrate(&mut self, batch_len: usize, outcomes: &[StepOutcome]) -> Result<()> {
        let Some(calibration) = self.calibration.as_mut() else {
            return Ok(());
        };
        let weights = self.weights.as_deref();
        let rows: Vec<usize> = self
            .replicas
            .iter()
            .map(|r| rows_of(batch_len, weights, r.comm.size(), r.comm.rank()).len())
            .collect();
        let times: Vec<_> = outcomes.iter().map(|o| o.compute).collect();
        let Some((phase, local)) = calibration.record(&rows, &times) else {
            return Ok(());
        };
        let ranks: Vec<usize> = self.ranks();
        let agreed = run_on_replicas(&mut self.replicas, &mut self.failed, |r| {
            let me = ranks
                .iter()
                .position(|&k| k == r.comm.rank())
                .expect("a rank");
            // Each replica its own slots: a sum of one value and zeros is that value.
            let mut all = vec![0.0f32; 2 * r.comm.size()];
            all[2 * r.comm.rank()] = local[me].0 as f32;
            all[2 * r.comm.rank() + 1] = local[me].1 as f32;
            let reduced = r.comm.all_reduce(&mut all).map_err(Error::Comm);
            if let Err(e) = &reduced {
                r.comm.abort(&e.to_string());
            }
            reduced.map(|_| all)
        })?;
        let points: Vec<balance::Point> = agreed[0]
            .chunks(2)
            .map(|p| (f64::from(p[0]), f64::from(p[1])))
            .collect();
        if phase == 0 {
            self.weights = Some(balance::proportional(&points));
            self.balance_first = points;
            return Ok(());
        }
        let costs: Vec<(f64, f64)> = self
            .balance_first
            .iter()
            .zip(&points)
            .map(|(&a, &b)| balance::fit(a, b))
            .collect();
        self.weights = Some(balance::plan(&costs, batch_len as f64));
        Ok(())
    }

    /// Each replica's share of a batch, by rank: the weights given, or those
    /// auto-balancing measured (`None` while it measures, and for equal shards).
    pub fn balance_weights(&self) -> Option<&[f64]> {
        if matches!(self.calibration, Some(Calibration::Running { .. })) {
            return None;
        }
        self.weights.as_deref()
    }

    /// Fixes the shards' weights (one per replica of the group, in rank order), as
    /// [`DataParallel::balance_weights`] gave them: a resumed run takes up the
    /// calibrated balance of the run it continues, instead of timing again.
    pub fn set_balance_weights(&mut self, weights: Vec<f64>) -> Result<()> {
        balance::check_weights(&weights, self.group_size())?;
        self.weights = Some(weights);
        if self.calibration.is_some() {
            self.calibration = Some(Calibration::Done);
        }
        Ok(())
    }

    /// The rows of a batch of `batch_len` that rank `rank` computes.
    pub fn rows_of(&self, batch_len: usize, rank: usize) -> Range<usize> {
        rows_of(batch_len, self.weights.as_deref(), self.group_size(), rank)
    }

    fn settings(&self, batch_len: usize) -> StepSettings {
        StepSettings {
            batch_len,
            grad_accum: self.grad_accum,
            clip_grad_norm: self.clip_grad_norm,
            loss_scale: self.loss_scale,
            wire: self.grad_compression,
        }
    }

    fn step_locally<F>(&mut self, batch_len: usize, loss: &F, local: LocalSgd) -> Result<f32>
    where
        F: Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync,
    {
        let settings = self.settings(batch_len);
        let policy = self.on_nonfinite;
        self.overflowed = false;
        self.last_grad_norm = None;
        let bytes_before = self.replicas[0].comm.bytes_sent();
        let weights = self.weights.as_deref();
        let steps: Vec<LocalStep> = run_on_replicas(&mut self.replicas, &mut self.failed, |r| {
            let rows = rows_of(batch_len, weights, r.comm.size(), r.comm.rank());
            let stepped = r.local_step(&settings, policy, rows, loss);
            if let Err(e) = &stepped {
                // Peers in other processes would otherwise learn of it only when the
                // next synchronization times out.
                r.comm.abort(&e.to_string());
            }
            stepped
        })?;
        self.since_sync += 1;
        if self.since_sync == local.sync_every {
            self.sync()?;
        }
        self.last_bytes_sent = bytes_before
            .zip(self.replicas[0].comm.bytes_sent())
            .map(|(before, after)| after - before);
        let rows: usize = steps.iter().map(|s| s.rows).sum();
        let loss = if rows == 0 {
            0.0
        } else {
            let sum: f64 = steps
                .iter()
                .map(|s| f64::from(s.loss) * s.rows as f64)
                .sum();
            (sum / rows as f64) as f32
        };
        let mut skipped = false;
        for s in steps {
            match s.outcome {
                Outcome::Stepped => {}
                Outcome::Skipped => skipped = true,
                Outcome::Overflowed => self.overflowed = true,
                Outcome::NonFinite(what) => return Err(Error::NonFinite(what)),
            }
        }
        self.skipped += u64::from(skipped);
        Ok(loss)
    }

    /// Under local SGD, synchronizes the replicas now (a collective: every process of
    /// the group calls it at the same step) unless they are alike already; afterwards
    /// every replica holds the same parameters and optimizer state, so that
    /// [`DataParallel::model`] is the group's model. Call it before evaluating or saving.
    /// Its bytes count into [`DataParallel::last_step_bytes_sent`]. Without local SGD it
    /// does nothing: the replicas never differ.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(reason) = &self.failed {
            return Err(Error::InvalidArgument(format!(
                "this data-parallel group stopped at an earlier failure: {reason}"
            )));
        }
        let Some(local) = self.local_sgd else {
            return Ok(());
        };
        if self.since_sync == 0 {
            return Ok(());
        }
        let wire = self.grad_compression;
        let before = self.replicas[0].comm.bytes_sent();
        run_on_replicas(&mut self.replicas, &mut self.failed, |r| {
            r.synchronize(&local, wire)
        })?;
        self.since_sync = 0;
        if let (Some(before), Some(after)) = (before, self.replicas[0].comm.bytes_sent()) {
            *self.last_bytes_sent.get_or_insert(0) += after - before;
        }
        Ok(())
    }

    /// Local steps since the replicas last synchronized (always 0 without local SGD).
    pub fn local_steps_since_sync(&self) -> usize {
        self.since_sync
    }

    /// The local SGD outer optimizer's state (replica 0's; every replica holds the same
    /// after a [`DataParallel::sync`]), for a checkpoint: empty without outer momentum.
    pub fn outer_state(&self) -> Vec<StateTensor> {
        self.replicas[0].outer_state()
    }

    /// Sets every replica's outer optimizer state, as [`DataParallel::outer_state`] gave
    /// it for the same model (empty: none yet).
    pub fn load_outer_state(&mut self, state: &[StateTensor]) -> Result<()> {
        for r in &mut self.replicas {
            r.load_outer_state(state)?;
        }
        Ok(())
    }

    /// Steps skipped for non-finite values under [`NonFinitePolicy::Skip`].
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Multiplies each shard's loss by `scale` (a power of two: see
    /// [`LossScaler`](ringtrain_runtime::optim::LossScaler)) before backward, and divides
    /// the averaged gradients and loss by it after; 1 turns it off. A step whose loss is
    /// finite but whose gradients are not then changes nothing and sets
    /// [`DataParallel::last_step_overflowed`], whatever the non-finite policy.
    pub fn set_loss_scale(&mut self, scale: f32) -> Result<()> {
        if !(scale.is_finite() && scale > 0.0 && scale.to_bits() & 0x007f_ffff == 0) {
            return Err(Error::InvalidArgument(format!(
                "a loss scale must be a positive power of two, got {scale}"
            )));
        }
        self.loss_scale = scale;
        Ok(())
    }

    /// Payload bytes one replica sent in the last step (gradients, loss and flags), where
    /// its communicator counts them (the ring, in process and over MPI).
    pub fn last_step_bytes_sent(&self) -> Option<u64> {
        self.last_bytes_sent
    }

    /// Whether the last step's scaled gradients overflowed (it was skipped).
    pub fn last_step_overflowed(&self) -> bool {
        self.overflowed
    }

    /// The global L2 norm of the last step's averaged gradient, before clipping (with
    /// [`DataParallelConfig::clip_grad_norm`] set; `None` otherwise, or after a
    /// non-finite step).
    pub fn last_grad_norm(&self) -> Option<f32> {
        self.last_grad_norm
    }
}

/// Tells every peer of `comms` that this process failed with `e` before training.
fn abort_all(comms: impl IntoIterator<Item = Box<dyn Communicator>>, e: &Error) {
    for mut c in comms {
        c.abort(&format!(
            "its process could not set up data parallelism: {e}"
        ));
    }
}

/// Checks that `comms` can serve `n` local replicas: one each, all of one group, with
/// distinct ranks.
fn check_group(n: usize, comms: &[Box<dyn Communicator>]) -> Result<()> {
    let size = comms.first().map_or(0, |c| c.size());
    let mut ranks: Vec<usize> = comms.iter().map(|c| c.rank()).collect();
    ranks.sort_unstable();
    ranks.dedup();
    if comms.len() != n
        || comms.iter().any(|c| c.size() != size || c.rank() >= size)
        || ranks.len() != n
    {
        let described: Vec<String> = comms
            .iter()
            .map(|c| format!("rank {} of {}", c.rank(), c.size()))
            .collect();
        return Err(Error::InvalidArgument(format!(
            "{n} devices need {n} communicators of one group with distinct ranks, got [{}]",
            described.join(", ")
        )));
    }
    Ok(())
}

/// Runs `f` on every replica, one thread each, and gathers the results; on a failure,
/// returns the failed replica's own error as the step's, and marks the group failed.
/// Replicas are named by their group rank.
fn run_on_replicas<M: Send, O: Send, T: Send>(
    replicas: &mut [Replica<M, O>],
    failed: &mut Option<String>,
    f: impl Fn(&mut Replica<M, O>) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let f = &f;
    // Each replica's thread records as this one does.
    let grad = ringtrain_runtime::grad_enabled();
    let ranks: Vec<usize> = replicas.iter().map(|r| r.comm.rank()).collect();
    let results: Vec<Result<T>> = std::thread::scope(|s| {
        let handles: Vec<_> = replicas
            .iter_mut()
            .map(|r| {
                let name = format!("replica {}", r.comm.rank());
                let thread = std::thread::Builder::new().name(name);
                // As `s.spawn`, which panics where the OS has no thread to give.
                let spawn = |f| {
                    thread
                        .spawn_scoped(s, f)
                        .expect("spawning a replica thread")
                };
                spawn(move || {
                    // A panic must not leave this replica's peers waiting on it.
                    let out = catch_unwind(AssertUnwindSafe(|| {
                        ringtrain_runtime::with_grad(grad, || f(&mut *r))
                    }));
                    out.unwrap_or_else(|p| {
                        let reason = panic_message(&p);
                        r.comm.abort(&reason);
                        Err(Error::Comm(CommError::PeerFailed {
                            rank: r.comm.rank(),
                            reason,
                        }))
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(&ranks)
            .map(|(h, &rank)| {
                h.join().unwrap_or_else(|p| {
                    Err(Error::Comm(CommError::PeerFailed {
                        rank,
                        reason: panic_message(&p),
                    }))
                })
            })
            .collect()
    });
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().map(|r| r.unwrap()).collect());
    }
    // Report the cause: the error of the replica the others blame, or else the
    // first replica's error that is not a complaint about a peer.
    let blamed = results.iter().find_map(|r| match r {
        Err(Error::Comm(CommError::PeerFailed { rank, .. })) => Some(*rank),
        _ => None,
    });
    let mut errors: Vec<(usize, Error)> = results
        .into_iter()
        .zip(ranks)
        .filter_map(|(r, rank)| r.err().map(|e| (rank, e)))
        .collect();
    let own = |(i, e): &(usize, Error)| !matches!(e, Error::Comm(CommError::PeerFailed { rank, .. }) if rank != i);
    let pick = errors
        .iter()
        .position(|ie| Some(ie.0) == blamed && own(ie))
        .or_else(|| errors.iter().position(own))
        .unwrap_or(0);
    let (rank, cause) = errors.swap_remove(pick);
    let err = match cause {
        // Errors that name their culprit already, or that every replica reports alike.
        e @ Error::Comm(
            CommError::PeerFailed { .. }
            | CommError::PeerLeft { .. }
            | CommError::Timeout { .. }
            | CommError::Stalled { .. }
            | CommError::Mismatch(_),
        ) => e,
        e => Error::Comm(CommError::PeerFailed {
            rank,
            reason: e.to_string(),
        }),
    };
    *failed = Some(err.to_string());
    Err(err)
}

/// Rows of shard `i` of `n` of a `len`-row batch: contiguous, sizes differing by at most
/// 1 (how a batch is split among replicas, and a replica's rows among micro-batches).
pub fn shard(len: usize, n: usize, i: usize) -> Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

/// Rank `rank`'s rows of a batch of `len` in a group of `n`: by `weights` where given,
/// else equal.
fn rows_of(len: usize, weights: Option<&[f64]>, n: usize, rank: usize) -> Range<usize> {
    match weights {
        Some(w) => weighted_shard(len, w, rank),
        None => shard(len, n, rank),
    }
}

/// What one replica's part of a step came to.
struct StepOutcome {
    loss: f32,
    grad_norm: Option<f32>,
    nonfinite: Option<NonFinite>,
    /// Forward and backward on this replica (not waiting on communication).
    compute: Duration,
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown payload".into());
    format!("panicked: {msg}")
}

impl<M: Module + Send, O: Optimizer + Send> Replica<M, O> {
    /// Compares this replica's layout hash with rank 0's and tells every rank which ranks
    /// differ, using only messages whose length all ranks agree on (4 words, then one
    /// flag per rank). A failure aborts the group.
    fn agree_on_layout(&mut self, hash: u64) -> Result<()> {
        let result = self.try_agree_on_layout(hash);
        if let Err(e) = &result {
            if !matches!(e, Error::Comm(CommError::Mismatch(_))) {
                self.comm.abort(&e.to_string());
            }
        }
        result
    }

    fn try_agree_on_layout(&mut self, hash: u64) -> Result<()> {
        // 16 bits per word: exact in f32.
        let words =
            |h: u64| -> Vec<f32> { (0..4).map(|i| ((h >> (16 * i)) & 0xffff) as f32).collect() };
        let mut theirs = words(hash);
        self.comm.broadcast(&mut theirs, 0)?;
        let rank0 = theirs
            .iter()
            .enumerate()
            .fold(0u64, |h, (i, &w)| h | ((w as u64) << (16 * i)));
        let mut differs = vec![0.0f32; self.comm.size()];
        differs[self.comm.rank()] = f32::from(u8::from(rank0 != hash));
        self.comm.all_reduce(&mut differs)?;
        let ranks: Vec<usize> = (0..differs.len()).filter(|&r| differs[r] > 0.0).collect();
        if ranks.is_empty() {
            return Ok(());
        }
        Err(Error::Comm(CommError::Mismatch(format!(
            "ranks {ranks:?} built other parameters (names or shapes) or gradient buckets \
             than rank 0 (layout hash {hash:016x} here, {rank0:016x} on rank 0): every rank \
             must build the same model with the same DataParallelConfig"
        ))))
    }

    /// Makes this replica's parameters rank 0's. A failure here aborts the group, so that
    /// no peer waits for this one.
    fn broadcast_parameters(&mut self) -> Result<()> {
        let result = self.try_broadcast_parameters();
        if let Err(e) = &result {
            self.comm.abort(&e.to_string());
        }
        result
    }

    fn try_broadcast_parameters(&mut self) -> Result<()> {
        let mut flat = self.read_parameters()?;
        self.comm.broadcast(&mut flat, 0)?;
        if self.comm.rank() != 0 {
            self.write_parameters(&flat)?;
        }
        Ok(())
    }

    /// Every parameter, in order, as one host vector.
    fn read_parameters(&self) -> Result<Vec<f32>> {
        let mut flat = Vec::with_capacity(self.params.iter().map(|p| p.elem_count()).sum());
        for p in &self.params {
            flat.extend(p.to_vec()?);
        }
        Ok(flat)
    }

    /// Sets every parameter from `flat`, as [`Replica::read_parameters`] lays it out.
    fn write_parameters(&self, flat: &[f32]) -> Result<()> {
        let mut at = 0;
        for p in &self.params {
            let n = p.elem_count();
            p.set(&Tensor::from_slice(
                &flat[at..at + n],
                p.shape().clone(),
                &self.device,
            )?)?;
            at += n;
        }
        Ok(())
    }

    /// The averaged loss, the gradient's norm before clipping (when clipping), and what
    /// is not finite, if anything (then the optimizer did not step).
    fn step<F>(
        &mut self,
        layout: &Layout,
        sharding: Option<&Sharding>,
        settings: &StepSettings,
        rows: Range<usize>,
        loss: &F,
    ) -> Result<StepOutcome>
    where
        F: Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync,
    {
        let Replica {
            device,
            model,
            optimizer,
            params,
            index,
            comm,
            buckets,
            ..
        } = self;
        let rank = comm.rank();
        let (to_comm, comm_in) = unbounded();
        let (comm_out, from_comm) = unbounded();
        let mut compute = Duration::ZERO;
        let reduced = std::thread::scope(|s| {
            let n_buckets = layout.buckets();
            let scatter = sharding.map(|sh| sh.parts.as_slice());
            let how = Reduction {
                n_buckets,
                wire: settings.wire,
                scatter,
            };
            let comm: &mut dyn Communicator = comm.as_mut();
            std::thread::Builder::new()
                .name(format!("comm {rank}"))
                .spawn_scoped(s, move || reduce_in_order(comm, how, comm_in, comm_out))
                .expect("spawning the communication thread");
            let started = Instant::now();
            let work = catch_unwind(AssertUnwindSafe(|| {
                forward_backward(
                    model, device, params, index, layout, buckets, settings, rows, loss, &to_comm,
                )
            }));
            compute = started.elapsed();
            let failure = match work {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(p) => Some(panic_message(&p)),
            };
            if let Some(reason) = failure {
                let _ = to_comm.send(ToComm::Failed(reason.clone()));
                return Err(reason);
            }
            drop(to_comm);
            Ok(collect(&from_comm, buckets))
        });
        let tail = match reduced {
            Err(reason) => return Err(Error::Comm(CommError::PeerFailed { rank, reason })),
            Ok(r) => r?,
        };
        let mut global_loss = tail[0];
        // Under ZeRO-1 a replica holds the summed gradients of its own parameters only.
        let own = |b: usize, len: usize| sharding.map_or(0..len, |sh| sh.own(rank, b));
        if settings.loss_scale != 1.0 {
            // A power of two: exact, and the same bits on every replica.
            let inv = 1.0 / settings.loss_scale;
            global_loss *= inv;
            for (b, buf) in buckets.iter_mut().enumerate() {
                let mine = own(b, buf.len());
                buf[mine].iter_mut().for_each(|g| *g *= inv);
            }
        }
        let (nonfinite, squares) = match sharding {
            None => (NonFinite::find(global_loss, layout, buckets), None),
            Some(sh) => {
                let check = zero::check_group(comm.as_mut(), layout, sh, buckets)?;
                let bad = (check.nonfinite > 0 || !global_loss.is_finite()).then_some(NonFinite {
                    loss: global_loss,
                    count: check.nonfinite,
                    first: check.first,
                });
                (bad, Some(check.squares))
            }
        };
        if let Some(bad) = nonfinite {
            return Ok(StepOutcome {
                loss: global_loss,
                grad_norm: None,
                nonfinite: Some(bad),
                compute,
            });
        }
        let grad_norm = settings.clip_grad_norm.map(|max_norm| {
            let squares = squares.unwrap_or_else(|| sum_of_squares(buckets));
            let coef = clip_coefficient(squares, max_norm);
            if let Some(coef) = coef {
                for (b, buf) in buckets.iter_mut().enumerate() {
                    let mine = own(b, buf.len());
                    buf[mine].iter_mut().for_each(|g| *g *= coef);
                }
            }
            squares.sqrt() as f32
        });
        // A parameter no replica's backward reached has no gradient, as on one device:
        // the optimizer leaves it alone (no decay, no momentum).
        let mut grads = GradStore::default();
        for (i, ((p, slot), &reached)) in
            params.iter().zip(&layout.slots).zip(&tail[1..]).enumerate()
        {
            let mine = sharding.is_none_or(|sh| sh.owner[i] == rank);
            if reached > 0.0 && mine {
                let g = &buckets[slot.bucket][slot.offset..slot.offset + slot.len];
                grads.insert(p, Tensor::from_slice(g, slot.shape.clone(), device)?);
            }
        }
        optimizer.step(&grads)?;
        if let Some(sh) = sharding {
            zero::gather_parameters(comm.as_mut(), params, device, layout, sh, buckets)?;
        }
        Ok(StepOutcome {
            loss: global_loss,
            grad_norm,
            nonfinite: None,
            compute,
        })
    }
}

/// What every replica's part of a step needs to know.
struct StepSettings {
    batch_len: usize,
    grad_accum: usize,
    clip_grad_norm: Option<f32>,
    loss_scale: f32,
    wire: Precision,
}

/// The averaged gradient's squared L2 norm (all buckets, as one vector), summed in f64
/// in bucket order: every replica holds the same bits, so every replica gets the same.
fn sum_of_squares(buckets: &[Vec<f32>]) -> f64 {
    buckets
        .iter()
        .flat_map(|b| b.iter())
        .map(|&g| f64::from(g) * f64::from(g))
        .sum()
}

/// What scales a gradient of squared norm `squares` to an L2 norm of at most
/// `max_norm`, as [`clip_grad_norm`](ringtrain_runtime::optim::clip_grad_norm) does on a
/// device: `None` where it is within it already.
fn clip_coefficient(squares: f64, max_norm: f32) -> Option<f32> {
    let coef = f64::from(max_norm) / (squares.sqrt() + 1e-6);
    (coef < 1.0).then_some(coef as f32)
}

/// What of a step's averaged values is infinite or NaN.
struct NonFinite {
    loss: f32,
    /// Non-finite gradient elements, and the first parameter that has one.
    count: usize,
    first: Option<usize>,
}

impl NonFinite {
    fn find(loss: f32, layout: &Layout, buckets: &[Vec<f32>]) -> Option<NonFinite> {
        let bad = |s: &[f32]| s.iter().filter(|x| !x.is_finite()).count();
        let count: usize = buckets.iter().map(|b| bad(b)).sum();
        if count == 0 && loss.is_finite() {
            return None;
        }
        let first = layout
            .slots
            .iter()
            .position(|s| bad(&buckets[s.bucket][s.offset..s.offset + s.len]) > 0);
        Some(NonFinite { loss, count, first })
    }

    fn describe(&self, names: &[String]) -> String {
        let grads = match self.first {
            Some(p) => format!(
                "{} gradient values are infinite or NaN (the first in `{}`)",
                self.count, names[p]
            ),
            None => "the gradients are finite".into(),
        };
        format!("the averaged loss is {}, {grads}", self.loss)
    }
}

/// The worker's half of a step: this shard's loss, scaled by the shard's share of the
/// batch, then backward, handing each bucket to the communication thread as soon as its
/// last gradient is in. With gradient accumulation the shard is computed in pieces: the
/// gradients of all but the last stay on the device, summed, and the last piece's
/// backward adds them in as it reports each variable.
#[allow(clippy::too_many_arguments)]
fn forward_backward<M, F>(
    model: &M,
    device: &Device,
    params: &[Var],
    index: &HashMap<TensorId, usize>,
    layout: &Layout,
    buckets: &mut [Vec<f32>],
    settings: &StepSettings,
    rows: Range<usize>,
    loss: &F,
    to_comm: &Sender<ToComm>,
) -> Result<()>
where
    F: Fn(&M, &Device, Range<usize>) -> Result<Tensor> + Sync,
{
    let mut missing = layout.bucket_params.clone();
    let mut filled = vec![false; layout.slots.len()];
    // A send fails only when the communication thread has stopped on an error, which
    // it reports itself; the worker just stops feeding it.
    let send = |b: usize, buckets: &mut [Vec<f32>]| {
        let _ = to_comm.send(ToComm::Bucket(b, std::mem::take(&mut buckets[b])));
    };
    let pieces: Vec<Range<usize>> = (0..settings.grad_accum)
        .map(|j| {
            let r = shard(rows.len(), settings.grad_accum, j);
            rows.start + r.start..rows.start + r.end
        })
        .filter(|r| !r.is_empty())
        .collect();
    let mut earlier = GradStore::default();
    let mut share: Option<Tensor> = None;
    for (j, piece) in pieces.iter().enumerate() {
        let weight = piece.len() as f32 / settings.batch_len as f32;
        let piece_loss = loss(model, device, piece.clone())?;
        if piece_loss.elem_count() != 1 {
            return Err(Error::NotScalar(piece_loss.shape().clone()));
        }
        let scaled = piece_loss.scale(weight)?;
        // The loss scale apart from the weight: a power of two, so the loss read back
        // (divided by it) has the bits of an unscaled run's.
        let backward_from = if settings.loss_scale == 1.0 {
            scaled.clone()
        } else {
            scaled.scale(settings.loss_scale)?
        };
        if j + 1 < pieces.len() {
            earlier.add(backward_from.backward()?)?;
        } else {
            backward_from.backward_with(|var, grad| {
                let Some(&i) = index.get(&var.id()) else {
                    return Ok(()); // a variable that is not one of the model's parameters
                };
                let total = match earlier.remove_id(var.id()) {
                    Some(e) => e.add(grad)?,
                    None => grad.clone(),
                };
                let slot = &layout.slots[i];
                let dst = &mut buckets[slot.bucket][slot.offset..slot.offset + slot.len];
                dst.copy_from_slice(&total.to_vec()?);
                filled[i] = true;
                missing[slot.bucket] -= 1;
                if missing[slot.bucket] == 0 {
                    send(slot.bucket, buckets);
                }
                Ok(())
            })?;
        }
        let scaled = backward_from.detach();
        share = Some(match share {
            Some(s) => s.add(&scaled)?,
            None => scaled,
        });
    }
    // Parameters only earlier pieces reached have their sums still on the device; those
    // the loss did not reach at all (or an empty shard) contribute zeros. The flags sent
    // with the loss say which were reached anywhere.
    for (i, slot) in layout.slots.iter().enumerate() {
        if !filled[i] {
            let dst = &mut buckets[slot.bucket][slot.offset..slot.offset + slot.len];
            match earlier.get(&params[i]) {
                Some(g) => {
                    dst.copy_from_slice(&g.to_vec()?);
                    filled[i] = true;
                }
                None => dst.fill(0.0),
            }
            missing[slot.bucket] -= 1;
            if missing[slot.bucket] == 0 {
                send(slot.bucket, buckets);
            }
        }
    }
    let share = match share {
        Some(s) => s.to_scalar()?,
        None => 0.0,
    };
    let mut tail = vec![share];
    tail.extend(filled.iter().map(|&f| f32::from(u8::from(f))));
    let _ = to_comm.send(ToComm::Tail(tail));
    Ok(())
}

/// How the communication thread reduces a step's buckets.
#[derive(Clone, Copy)]
struct Reduction<'a> {
    n_buckets: usize,
    wire: Precision,
    /// ZeRO-1: each bucket reduce-scattered by these parts instead of all-reduced.
    scatter: Option<&'a [Vec<usize>]>,
}

/// The communication thread: all-reduces (or reduce-scatters) buckets in index order
/// (the same order on every replica, whatever order backward finished them in), then
/// the loss. A worker that reports a failure, or goes away, aborts the group so that no
/// peer waits for it.
fn reduce_in_order(
    comm: &mut dyn Communicator,
    how: Reduction<'_>,
    from_worker: Receiver<ToComm>,
    to_worker: Sender<std::result::Result<FromComm, CommError>>,
) {
    // A panic in the communicator must not leave the peers waiting for this one.
    struct AbortOnPanic<'a>(&'a mut dyn Communicator);
    impl Drop for AbortOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.abort("its communication thread panicked");
            }
        }
    }
    let guard = AbortOnPanic(comm);
    let comm = &mut *guard.0;
    let mut ready: Vec<Option<Vec<f32>>> = (0..how.n_buckets).map(|_| None).collect();
    let (mut next, mut tail) = (0, None::<Vec<f32>>);
    let reduce = |comm: &mut dyn Communicator, buf: &mut [f32], bucket: Option<usize>| {
        let _span = trace::span("comm", "all_reduce")
            .arg("bucket", || {
                bucket.map_or_else(|| "tail".to_string(), |b| b.to_string())
            })
            .arg("bytes", || 4 * buf.len());
        // Gradients in the wire's format; the tail (loss, flags) exact.
        let r = match (bucket, how.scatter) {
            (Some(b), Some(parts)) => comm.reduce_scatter(buf, &parts[b]),
            (Some(_), None) => comm.all_reduce_as(buf, how.wire),
            (None, _) => comm.all_reduce(buf),
        };
        if let Err(e) = &r {
            comm.abort(&e.to_string());
        }
        r
    };
    loop {
        while next < how.n_buckets {
            let Some(mut buf) = ready[next].take() else {
                break;
            };
            if let Err(e) = reduce(comm, &mut buf, Some(next)) {
                let _ = to_worker.send(Err(e));
                return;
            }
            let _ = to_worker.send(Ok(FromComm::Bucket(next, buf)));
            next += 1;
        }
        if next == how.n_buckets {
            if let Some(mut t) = tail.take() {
                let reduced = reduce(comm, &mut t, None).map(|_| FromComm::Tail(t));
                let _ = to_worker.send(reduced);
                return;
            }
        }
        match from_worker.recv() {
            Ok(ToComm::Bucket(b, buf)) => ready[b] = Some(buf),
            Ok(ToComm::Tail(t)) => tail = Some(t),
            Ok(ToComm::Failed(reason)) => {
                comm.abort(&reason);
                return;
            }
            Err(_) => {
                comm.abort("its worker stopped in the middle of a step");
                return;
            }
        }
    }
}

/// Waits for every reduced bucket (put back in place, averaged already by the shard
/// weights), then the batch loss and the reached-parameter counts.
fn collect(
    from_comm: &Receiver<std::result::Result<FromComm, CommError>>,
    buckets: &mut [Vec<f32>],
) -> Result<Vec<f32>> {
    loop {
        match from_comm.recv() {
            Ok(Ok(FromComm::Bucket(b, buf))) => buckets[b] = buf,
            Ok(Ok(FromComm::Tail(t))) => return Ok(t),
            Ok(Err(e)) => return Err(Error::Comm(e)),
            Err(_) => {
                return Err(Error::InvalidArgument(
                    "the communication thread stopped without a result".into(),
                ))
            }
        }
    }
}
