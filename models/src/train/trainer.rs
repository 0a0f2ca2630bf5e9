//! The training loop.

use super::cluster::Cluster;
use super::config::{Bagging, TrainConfig};
use super::devices::describe;
use super::engine::{Replicas, StepLoss, StepPlan};
use super::position::{Position, UnreadLosses};
use super::record::{format_scores, write_jsonl, Record, Scores};
use super::resume;
use super::schedule::Schedule;
use crate::checkpoint::CheckpointDir;
use crate::data::{DataSource, Shard};
use crate::nn::Module;
use crate::parallel::{Balance, NonFinitePolicy};
use crate::trace::TraceFile;
use crate::zoo::MODEL_KEY;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use ringtrain_runtime::optim::{LossScaler, Optimizer};
use ringtrain_runtime::{no_grad, Device, Error, Precision, Result, Tensor};
use std::ops::ControlFlow;
use std::time::Instant;

/// The metadata key of a bag member's checkpoints: `member/members`.
pub const BAG_KEY: &str = "ringtrain.bag";

/// `NAME.member-I.EXT` beside `path`.
fn member_path(path: &std::path::Path, member: usize) -> std::path::PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.member-{member}.{}", ext.to_string_lossy()),
        None => format!("{stem}.member-{member}"),
    };
    path.with_file_name(name)
}

/// Steps between two readbacks of a device's losses (and checks of its parameters).
const READ_LOSS_EVERY: usize = 20;

/// Steps skipped in a row (`NonFinitePolicy::Skip`) after which a run stops: it is not
/// recovering, and would only report a model that no longer trains.
const MAX_SKIPPED_IN_A_ROW: u64 = 20;

/// What a finished run leaves: the trained model and optimizer (replica 0's, all being
/// alike), its reports, and where it ended.
pub struct Trained<M, O> {
    pub model: M,
    pub optimizer: O,
    pub history: Vec<Record>,
    /// Steps taken in all (counting those before a resume).
    pub steps: u64,
    /// Epochs completed.
    pub epochs: u32,
}

/// Trains any [`Module`]: on the devices, and with the communicators, its
/// [`TrainConfig`] asks for (one device directly; several, in one process or many, as
/// data-parallel replicas), with a learning-rate schedule, gradient clipping and
/// accumulation, the non-finite policy, checkpoints with an exact resume, evaluation,
/// metrics and progress. See [the module](super) for an example.
pub struct Trainer {
    config: TrainConfig,
    cluster: Cluster,
    /// Whether this trainer started the cluster (and so reports its own failures).
    owns_cluster: bool,
    devices: Vec<Device>,
}

impl Trainer {
    /// Joins the run (starting MPI where `config.comm` asks for it), sets the thread
    /// count, checks the checkpoint folder and opens the devices.
    ///
    /// Under MPI, a run that fails ends the job with `MPI_Abort` once the trainer is
    /// dropped, after printing the error with its rank. A program that can fail outside
    /// [`Trainer::fit`] (reading its data, say) should rather run under
    /// [`Cluster::main`] and use [`Trainer::with_cluster`], so that any error ends the job
    /// at once instead of leaving the other ranks to time out.
    pub fn new(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let cluster = Cluster::start(&config.comm)?;
        let mut trainer = Self::with_cluster(config, cluster)?;
        trainer.owns_cluster = true;
        Ok(trainer)
    }

    /// As [`Trainer::new`] in a process that has joined its run already, as
    /// [`Cluster::main`] gives it (MPI starts once per process), whose caller reports
    /// errors.
    pub fn with_cluster(config: TrainConfig, cluster: Cluster) -> Result<Self> {
        config.validate()?;
        if let Some(n) = config.threads.or_else(|| cluster.default_threads()) {
            set_threads(n)?;
        }
        if let Some(c) = &config.checkpoint {
            let dir = CheckpointDir::new(&c.dir, c.keep);
            if cluster.is_root() {
                // Now, not after the first epoch's work.
                std::fs::create_dir_all(dir.path()).map_err(|e| {
                    Error::msg(format!(
                        "cannot create the checkpoint folder {}: {e}",
                        dir.path().display()
                    ))
                })?;
            }
            if !config.resume && !dir.list()?.is_empty() {
                return Err(Error::msg(format!(
                    "{} already holds a run's checkpoints: add --resume to continue it, or \
                     give a new --checkpoint-dir (a new run there would prune the old one's \
                     files)",
                    dir.path().display()
                )));
            }
        }
        let devices = config.devices.open(&cluster, !config.quiet)?;
        Ok(Self {
            config,
            cluster,
            owns_cluster: false,
            devices,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// This process's devices, one per replica it trains.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Where this process writes `path`'s trace: `path` itself, or `NAME.rankR.EXT`
    /// when the run has several processes.
    fn trace_path(&self, path: &std::path::Path) -> std::path::PathBuf {
        if self.cluster.processes <= 1 {
            return path.to_path_buf();
        }
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let name = match path.extension() {
            Some(ext) => format!("{stem}.rank{}.{}", self.cluster.rank, ext.to_string_lossy()),
            None => format!("{stem}.rank{}", self.cluster.rank),
        };
        path.with_file_name(name)
    }

    /// Whether this process reports (rank 0).
    pub fn is_root(&self) -> bool {
        self.cluster.is_root()
    }

    /// Prints `line` on stdout from rank 0, unless the run is quiet.
    pub fn println(&self, line: impl std::fmt::Display) {
        if self.is_root() && !self.config.quiet {
            println!("{line}");
        }
    }

    /// Trains the model `build` makes (once per device, with its optimizer) on `data`:
    /// `loss(model, device, batch)` returns the mean loss of a batch of samples (a
    /// replica's share of a step, or a micro-batch of it) as a scalar on `device`.
    pub fn fit<M, O, D, B, L>(&mut self, build: B, data: &D, loss: L) -> Result<Trained<M, O>>
    where
        M: Module + Send,
        O: Optimizer + Send,
        D: DataSource,
        B: FnMut(&Device) -> Result<(M, O)>,
        L: Fn(&M, &Device, &D::Batch) -> Result<Tensor> + Sync,
    {
        self.fit_with_eval(build, data, loss, |_: &M, _: &Device| Ok(Scores::new()))
    }

    /// [`Trainer::fit`], evaluating at every `eval_every`: `eval(model, device)` scores
    /// replica 0's model (in evaluation mode, recording no gradients) on rank 0, and its
    /// scores go into the report and the metrics.
    pub fn fit_with_eval<M, O, D, B, L, E>(
        &mut self,
        build: B,
        data: &D,
        loss: L,
        eval: E,
    ) -> Result<Trained<M, O>>
    where
        M: Module + Send,
        O: Optimizer + Send,
        D: DataSource,
        B: FnMut(&Device) -> Result<(M, O)>,
        L: Fn(&M, &Device, &D::Batch) -> Result<Tensor> + Sync,
        E: FnMut(&M, &Device) -> Result<Scores>,
    {
        let result = match self.config.bagging {
            Some(bag) => self.run_bag(bag, build, data, loss, eval),
            None => self.run(build, data, loss, eval),
        };
        if let Err(e) = &result {
            if self.cluster.processes > 1 {
                // Peers may wait for this rank: the job ends when the cluster goes.
                self.cluster.abort_job_on_exit();
                if self.owns_cluster {
                    // Which may be before the caller could print this.
                    self.cluster.eprint(&format!("error: {e}"));
                }
            }
        }
        result
    }

    /// The members of a bag, one after the other, each a whole run on its own
    /// [`Shard`] of `data`, with its own seed (the run's plus its index), checkpoint
    /// folder and metrics file (when it trains them all). Returns the last member's.
    fn run_bag<M, O, D, B, L, E>(
        &mut self,
        bag: Bagging,
        mut build: B,
        data: &D,
        loss: L,
        mut eval: E,
    ) -> Result<Trained<M, O>>
    where
        M: Module + Send,
        O: Optimizer + Send,
        D: DataSource,
        B: FnMut(&Device) -> Result<(M, O)>,
        L: Fn(&M, &Device, &D::Batch) -> Result<Tensor> + Sync,
        E: FnMut(&M, &Device) -> Result<Scores>,
    {
        let base = self.config.clone();
        let mut last = None;
        for member in bag.members() {
            let shard = Shard::new(data, member, bag.members, base.seed)?;
            let mut config = base.clone();
            config.seed = base.seed.wrapping_add(member as u64);
            config.bagging = Some(Bagging {
                only: Some(member),
                ..bag
            });
            if bag.only.is_none() {
                if let Some(c) = &mut config.checkpoint {
                    c.dir = c.dir.join(format!("member-{member}"));
                    if self.is_root() {
                        std::fs::create_dir_all(&c.dir).map_err(|e| {
                            Error::msg(format!("cannot create {}: {e}", c.dir.display()))
                        })?;
                    }
                    let started = !CheckpointDir::new(&c.dir, c.keep).list()?.is_empty();
                    if config.resume && !started {
                        // A member the interrupted run had not reached starts afresh.
                        config.resume = false;
                    } else if !config.resume && started {
                        return Err(Error::msg(format!(
                            "{} already holds a member's checkpoints: add --resume to \
                             continue the bag, or give a new --checkpoint-dir",
                            c.dir.display()
                        )));
                    }
                }
                config.metrics_out = config.metrics_out.map(|p| member_path(&p, member));
            }
            self.println(format!(
                "bag member {member} of 0..{}: {} of {} samples",
                bag.members,
                shard.len(),
                data.len()
            ));
            self.config = config;
            let result = self.run(&mut build, &shard, &loss, &mut eval);
            self.config = base.clone();
            last = Some(result?);
        }
        last.ok_or_else(|| Error::msg("a bag has members"))
    }

    fn run<M, O, D, B, L, E>(
        &mut self,
        build: B,
        data: &D,
        loss: L,
        mut eval: E,
    ) -> Result<Trained<M, O>>
    where
        M: Module + Send,
        O: Optimizer + Send,
        D: DataSource,
        B: FnMut(&Device) -> Result<(M, O)>,
        L: Fn(&M, &Device, &D::Batch) -> Result<Tensor> + Sync,
        E: FnMut(&M, &Device) -> Result<Scores>,
    {
        let config = self.config.clone();
        let samples = data.len();
        if samples == 0 {
            return Err(Error::InvalidArgument(
                "the training data holds no samples".into(),
            ));
        }
        let root = self.is_root();
        let say = |line: &str| {
            if root && !config.quiet {
                println!("{line}");
            }
        };
        let comms = self.cluster.communicators(self.devices.len())?;
        let mut replicas = Replicas::build(self.devices.clone(), comms, build, &config)?;
        let base_lr = replicas.optimizer().learning_rate();
        let group = replicas.group_size();
        let batch_size = config.batch_size;
        let per_epoch = samples.div_ceil(batch_size);
        let planned = planned_steps(&config, per_epoch);
        let settings = self.settings(samples, group, base_lr, planned)?;
        let checkpoints = config
            .checkpoint
            .as_ref()
            .map(|c| CheckpointDir::new(&c.dir, c.keep));

        let mut position = Position::start();
        let mut history: Vec<Record> = Vec::new();
        if config.resume {
            let dir = checkpoints
                .as_ref()
                .expect("validated: resume needs a folder");
            let (at, past, checkpoint) = resume::latest(dir, &settings)?;
            replicas.restore(&checkpoint)?;
            (position, history) = (at, past);
            say(&format!(
                "resumed from {} at step {} (epoch {}, batch {})",
                dir.path().display(),
                at.step,
                at.epoch,
                at.batch
            ));
        }
        if position.batch >= per_epoch {
            position = position.next_epoch();
        }
        let completed = position.epoch - 1;
        let past_epochs = config.epochs.is_some_and(|e| position.epoch > e);
        let past_steps = config.steps.is_some_and(|s| position.step >= s);
        if past_epochs || past_steps {
            if let Some(e) = config.epochs.filter(|&e| completed > e) {
                return Err(Error::msg(format!(
                    "--resume: the checkpoint is after epoch {completed}, past --epochs {e}"
                )));
            }
            if let Some(s) = config.steps.filter(|&s| position.step > s) {
                return Err(Error::msg(format!(
                    "--resume: the checkpoint is after step {}, past --steps {s}",
                    position.step
                )));
            }
            say(&format!(
                "the run is complete ({completed} epochs) at step {}; raise --epochs or \
                 --steps to train on",
                position.step
            ));
            self.write_metrics(&history)?;
            let (model, optimizer) = replicas.into_model();
            return Ok(Trained {
                model,
                optimizer,
                history,
                steps: position.step,
                epochs: completed,
            });
        }

        let device_names = self.describe_devices(group);
        say(&format!(
            "train: {} samples, {} parameters | lr {base_lr} ({}) | batch {batch_size}{}{}{}{}{} | {device_names}",
            samples,
            replicas.model().num_parameters(),
            config.schedule.describe(),
            if config.grad_accum > 1 {
                format!(" in {} micro-batches per replica", config.grad_accum)
            } else {
                String::new()
            },
            config
                .clip_grad_norm
                .map_or(String::new(), |c| format!(" | clip grad norm {c}")),
            match config.on_nonfinite {
                NonFinitePolicy::Stop => "",
                NonFinitePolicy::Skip => " | non-finite steps skipped",
            },
            match config.precision {
                Precision::F32 => "",
                Precision::Bf16 => " | bf16 products",
                Precision::F16 => " | f16 products, dynamic loss scale",
            },
            match (config.comm.grad_compression, &config.local_sgd) {
                (Precision::F32, _) => String::new(),
                (wire, None) if group > 1 => format!(" | gradients sent as {wire}"),
                (wire, Some(_)) => format!(" | changes sent as {wire}"),
                _ => String::new(),
            },
        ));
        if let Some(local) = &config.local_sgd {
            say(&format!("  {}", local.describe()));
        }
        if config.precision == Precision::F16
            && self
                .devices
                .iter()
                .any(|d| d.gpu_f16_kernels() == Some(false))
        {
            say(
                "  f16: this GPU has no SHADER_F16 (WGSL's `enable f16`), so its products \
                 round their inputs to f16 on the bits and keep f32 tiles: the same results, \
                 in twice the workgroup memory",
            );
        }

        let mut trace = match &config.trace_out {
            Some(path) => Some(TraceFile::start(self.trace_path(path))?),
            None => None,
        };
        let trace_until = position.step + config.trace_steps;
        let started = Instant::now();
        let mut window = Window::start();
        let mut at = position;
        // f16's dynamic loss scaling, from where a resumed run left it.
        let mut scaler = match config.precision {
            Precision::F16 if at.loss_scale_bits != 0 => Some(LossScaler::resumed(
                f32::from_bits(at.loss_scale_bits),
                config.loss_scaler.growth_interval(),
                at.loss_scale_good_steps,
            )?),
            Precision::F16 => Some(config.loss_scaler),
            _ => None,
        };
        if let Some(s) = &scaler {
            at.loss_scale_bits = s.scale().to_bits();
        }
        let mut balance_said = false;
        'epochs: loop {
            let epoch = at.epoch;
            let mut order: Vec<usize> = (0..samples).collect();
            // A fresh, seed-determined order every epoch; a resumed epoch skips what it did.
            order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
                config.seed ^ (u64::from(epoch) << 32),
            ));
            let bar = self.progress_bar(per_epoch, epoch, at.batch);
            let mut losses = UnreadLosses::resumed(&at, replicas.device())?;
            let mut checked_step = at.step;
            for b in at.batch..per_epoch {
                let indices = &order[b * batch_size..((b + 1) * batch_size).min(samples)];
                at.step += 1;
                at.batch = b + 1;
                let lr = base_lr * config.schedule.factor(at.step - 1, planned);
                replicas.set_learning_rate(lr)?;
                let plan = StepPlan {
                    grad_accum: config.grad_accum,
                    clip_grad_norm: config.clip_grad_norm,
                    on_nonfinite: config.on_nonfinite,
                    inject_nan: config.faults.nan_at_step == Some(at.step),
                    precision: config.precision,
                    loss_scale: scaler.as_ref().map(LossScaler::scale),
                };
                let step = replicas
                    .step(data, indices, &loss, &plan)
                    .map_err(|e| match e {
                        Error::NonFinite(what) => diverged(&at, &what, config.on_nonfinite),
                        e => e,
                    })?;
                if !balance_said && root {
                    if let Some(w) = replicas.balance_weights() {
                        let shown: Vec<String> = w.iter().map(|x| format!("{x:.4}")).collect();
                        bar.suspend(|| {
                            say(&format!("balance: shards weighted [{}]", shown.join(", ")))
                        });
                        balance_said = true;
                    }
                }
                if config.trace_steps > 0 && at.step >= trace_until {
                    if let Some(t) = trace.take() {
                        // The step's last GPU work, submitted (and timed) inside the trace.
                        replicas.device().synchronize()?;
                        finish_trace(t, &say);
                    }
                }
                if !matches!(step, StepLoss::Skipped | StepLoss::Overflowed) {
                    at.skipped_in_a_row = 0;
                }
                // A step skipped for a non-finite loss tells the scaler nothing.
                if let Some(s) = scaler
                    .as_mut()
                    .filter(|_| !matches!(step, StepLoss::Skipped))
                {
                    s.update(matches!(step, StepLoss::Overflowed));
                    at.loss_scale_bits = s.scale().to_bits();
                    at.loss_scale_good_steps = s.good_steps();
                }
                match step {
                    StepLoss::Host(l) => {
                        at.loss_sum_bits =
                            (at.loss_sum() + f64::from(l) * indices.len() as f64).to_bits();
                        at.seen += indices.len();
                    }
                    StepLoss::OnDevice(l) => losses.push(&at, l, indices.len())?,
                    StepLoss::Overflowed => {
                        at.skipped += 1;
                        at.window_skipped += 1;
                        at.skipped_in_a_row += 1;
                        if at.skipped_in_a_row == MAX_SKIPPED_IN_A_ROW {
                            return Err(Error::Diverged(format!(
                                "training diverged at step {} (epoch {}): the f16 gradients \
                                 overflowed {MAX_SKIPPED_IN_A_ROW} steps in a row, down to a \
                                 loss scale of {}; try a lower --lr, or --precision bf16",
                                at.step,
                                at.epoch,
                                scaler.as_ref().map_or(1.0, LossScaler::scale)
                            )));
                        }
                    }
                    StepLoss::Skipped => {
                        at.skipped += 1;
                        at.window_skipped += 1;
                        at.skipped_in_a_row += 1;
                        if at.skipped_in_a_row == MAX_SKIPPED_IN_A_ROW {
                            return Err(diverged(
                                &at,
                                &format!(
                                    "{MAX_SKIPPED_IN_A_ROW} steps in a row had infinite or \
                                     NaN values, so were skipped"
                                ),
                                config.on_nonfinite,
                            ));
                        }
                    }
                }
                let epoch_done = at.batch == per_epoch;
                let last =
                    config.steps == Some(at.step) || (epoch_done && config.epochs == Some(epoch));
                let report = last || config.eval_every.due(at.step, epoch, epoch_done);
                let save = checkpoints.is_some()
                    && (last
                        || config
                            .checkpoint
                            .as_ref()
                            .is_some_and(|c| c.every.due(at.step, epoch, epoch_done)));
                if report || save {
                    // Local SGD: what is evaluated and saved is the group's model. Every
                    // rank decides this alike, so all of them join in.
                    replicas.sync()?;
                }
                window.samples += indices.len();
                if let Some(b) = replicas.last_step_bytes_sent() {
                    window.bytes_sent += b;
                    window.counted_steps += 1;
                }
                bar.inc(1);
                if config.faults.crash_after_step == Some(at.step) {
                    eprintln!("simulated crash after step {}", at.step);
                    std::process::exit(3);
                }
                if config.faults.stop_after_step == Some(at.step) {
                    return Err(Error::msg(format!(
                        "stopped after step {} (Faults::stop_after_step)",
                        at.step
                    )));
                }
                let read = report || epoch_done || at.batch.is_multiple_of(READ_LOSS_EVERY);
                if !read && !save {
                    continue;
                }
                // A checkpoint between readbacks keeps the group's sum as it stands, so
                // that where checkpoints fall never changes how losses are summed.
                let seen = if read {
                    losses.read(&mut at)?
                } else {
                    losses.peek()?
                };
                match seen {
                    ControlFlow::Break(bad) => {
                        return Err(diverged(
                            &bad,
                            "its loss is infinite or NaN (from its batch, or from \
                             parameters an earlier step made so)",
                            config.on_nonfinite,
                        ))
                    }
                    ControlFlow::Continue((unread, samples)) => {
                        at.unread_sum_bits = unread.to_bits();
                        at.unread_samples = samples;
                    }
                }
                // Also catches what no step check can: an update of finite gradients
                // that overflowed (a learning rate far too high).
                if !replicas.parameters_finite()? {
                    return Err(Error::Diverged(format!(
                        "training diverged between steps {} and {} (epoch {}): parameters \
                         are now infinite or NaN, from a gradient that was or from an \
                         update that overflowed; try a lower --lr",
                        checked_step + 1,
                        at.step,
                        at.epoch
                    )));
                }
                checked_step = at.step;
                if !at.loss_sum().is_finite() {
                    let what = format!("the loss summed to {}", at.loss_sum());
                    return Err(diverged(&at, &what, config.on_nonfinite));
                }
                bar.set_message(format!("loss {:.4}", at.loss_sum() / at.seen.max(1) as f64));
                if report {
                    let mut record = window.report(&at, epoch_done, group, lr, || {
                        if !root {
                            return Ok(Scores::new());
                        }
                        let model = replicas.model();
                        model.set_training(false);
                        let scores = no_grad(|| eval(model, replicas.device()));
                        model.set_training(true);
                        scores
                    })?;
                    record.tokens_per_sec = config
                        .tokens_per_sample
                        .map(|t| record.samples_per_sec * t as f64);
                    if root {
                        bar.suspend(|| say(&record.line()));
                        history.push(record);
                        self.write_metrics(&history)?;
                    }
                    at = at.new_window();
                    window = Window::start();
                }
                // Under ZeRO-1 every rank takes part in gathering the optimizer state.
                let gathered = if save && replicas.checkpoint_is_collective() {
                    Some(replicas.checkpoint()?)
                } else {
                    None
                };
                if save && root {
                    let dir = checkpoints.as_ref().expect("save implies a folder");
                    let mut checkpoint = match gathered {
                        Some(c) => c,
                        None => replicas.checkpoint()?,
                    };
                    if let Some(spec) = &config.model {
                        checkpoint.set_metadata(MODEL_KEY, spec.to_json());
                    }
                    if let Some(Bagging {
                        members,
                        only: Some(member),
                    }) = config.bagging
                    {
                        checkpoint.set_metadata(BAG_KEY, format!("{member}/{members}"));
                    }
                    resume::save(dir, &at, &settings, &history, checkpoint)?;
                }
                if last {
                    bar.finish_and_clear();
                    break 'epochs;
                }
            }
            bar.finish_and_clear();
            at = at.next_epoch();
        }

        if let Some(t) = trace.take() {
            replicas.device().synchronize()?;
            finish_trace(t, &say);
        }
        let epochs = if at.batch == per_epoch {
            at.epoch
        } else {
            at.epoch - 1
        };
        if let Some(last) = history.last() {
            let throughput =
                history.iter().map(|r| r.samples_per_sec).sum::<f64>() / history.len() as f64;
            say(&format!(
                "done: {epochs} epochs ({} steps) in {:.1}s |{} | {throughput:.0} train \
                 samples/s | {device_names}",
                at.step,
                started.elapsed().as_secs_f64(),
                if last.scores.is_empty() {
                    format!("  train loss {:.4}", last.train_loss)
                } else {
                    format_scores(&last.scores)
                },
            ));
        }
        let (model, optimizer) = replicas.into_model();
        Ok(Trained {
            model,
            optimizer,
            history,
            steps: at.step,
            epochs,
        })
    }

    /// What a resumed run must share with the run that wrote its checkpoint.
    fn settings(&self, samples: usize, replicas: usize, lr: f32, planned: u64) -> Result<String> {
        let c = &self.config;
        let mut trainer = serde_json::json!({
            "batch_size": c.batch_size,
            "seed": c.seed,
            "samples": samples,
            "replicas": replicas,
            "lr": lr,
            "schedule": c.schedule.describe(),
            "clip_grad_norm": c.clip_grad_norm,
            "grad_accum": c.grad_accum,
            // A decay to the run's end depends on where the end is.
            "schedule_steps": matches!(c.schedule, Schedule::Cosine { total: None, .. })
                .then_some(planned),
        });
        if c.precision.is_reduced() {
            // Only when set, so that f32 runs resume from checkpoints written before.
            trainer["precision"] = c.precision.name().into();
        }
        if let Some(spec) = &c.model {
            trainer["model"] = serde_json::to_value(spec).map_err(Error::msg)?;
        }
        if let Some(bag) = &c.bagging {
            trainer["bag"] = serde_json::json!({ "members": bag.members, "member": bag.only });
        }
        if c.balance != Balance::Equal {
            trainer["balance"] = format!("{:?}", c.balance).into();
        }
        if let Some(local) = &c.local_sgd {
            trainer["local_sgd"] = serde_json::json!({
                "sync_every": local.sync_every,
                "outer_lr": local.outer.lr,
                "outer_momentum": local.outer.momentum,
                "outer_nesterov": local.outer.nesterov,
                "inner_state": format!("{:?}", local.inner_state),
            });
        }
        Ok(serde_json::json!({ "trainer": trainer, "program": c.settings }).to_string())
    }

    fn describe_devices(&self, group: usize) -> String {
        let names = describe(&self.devices);
        if self.cluster.processes > 1 {
            format!(
                "{group} replicas: {names} on rank 0 | {}",
                self.cluster.describe()
            )
        } else {
            names
        }
    }

    fn progress_bar(&self, batches: usize, epoch: u32, done: usize) -> ProgressBar {
        if !self.is_root() || self.config.quiet {
            return ProgressBar::hidden();
        }
        // indicatif draws on stderr only when it is a terminal.
        let bar = ProgressBar::new(batches as u64);
        if let Ok(style) =
            ProgressStyle::with_template("epoch {prefix:>3} [{bar:30}] {pos}/{len} batches {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(epoch.to_string());
        bar.set_position(done as u64);
        bar
    }

    fn write_metrics(&self, history: &[Record]) -> Result<()> {
        match &self.config.metrics_out {
            Some(path) if self.is_root() => write_jsonl(path, history),
            _ => Ok(()),
        }
    }
}

/// The steps a run will take, for schedules that decay to its end.
fn planned_steps(config: &TrainConfig, per_epoch: usize) -> u64 {
    let by_epochs = config.epochs.map(|e| u64::from(e) * per_epoch as u64);
    match (by_epochs, config.steps) {
        (Some(e), Some(s)) => e.min(s),
        (Some(e), None) => e,
        (None, Some(s)) => s,
        (None, None) => unreachable!("validated: a run has an end"),
    }
}

/// The time and samples of the steps since the last report.
struct Window {
    started: Instant,
    samples: usize,
    /// Payload bytes one replica sent, over the steps that counted them.
    bytes_sent: u64,
    counted_steps: u64,
}

impl Window {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            samples: 0,
            bytes_sent: 0,
            counted_steps: 0,
        }
    }

    fn report(
        &self,
        at: &Position,
        epoch_end: bool,
        devices: usize,
        lr: f32,
        eval: impl FnOnce() -> Result<Scores>,
    ) -> Result<Record> {
        let train_seconds = self.started.elapsed().as_secs_f64();
        let scores = eval()?;
        Ok(Record {
            epoch: at.epoch,
            step: at.step,
            epoch_end,
            // NaN (null in the metrics) for a window whose every step was skipped.
            train_loss: at.loss_sum() / at.seen as f64,
            scores,
            samples_per_sec: self.samples as f64 / train_seconds,
            tokens_per_sec: None,
            devices,
            seconds: self.started.elapsed().as_secs_f64(),
            lr,
            skipped_steps: at.window_skipped,
            loss_scale: (at.loss_scale_bits != 0).then(|| f32::from_bits(at.loss_scale_bits)),
            bytes_sent_per_step: (self.counted_steps > 0)
                .then(|| self.bytes_sent as f64 / self.counted_steps as f64),
        })
    }
}

/// The error that stops a run at a non-finite step.
fn diverged(at: &Position, what: &str, policy: NonFinitePolicy) -> Error {
    let hint = match policy {
        NonFinitePolicy::Stop => "try a lower --lr, or --on-nonfinite skip to skip such steps",
        NonFinitePolicy::Skip => "try a lower --lr",
    };
    Error::Diverged(format!(
        "training diverged at step {} (epoch {}, batch {}): {what}; {hint}",
        at.step, at.epoch, at.batch
    ))
}

/// Sets the CPU thread count of this process (rayon's global pool): once, before the first
/// parallel work; asking again for the count it has is not an error.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidArgument(
            "--threads must be at least 1".into(),
        ));
    }
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
    {
        Ok(()) => Ok(()),
        Err(_) if rayon::current_num_threads() == n => Ok(()),
        Err(_) => Err(Error::InvalidArgument(format!(
            "this process already runs {} CPU threads; --threads {n} can only be set \
             before the first parallel work",
            rayon::current_num_threads()
        ))),
    }
}

/// Writes a finished trace and says where; a trace that cannot be written is a warning,
/// not the end of the training run it describes.
fn finish_trace(trace: TraceFile, say: &impl Fn(&str)) {
    match trace.finish() {
        Ok(summary) => say(&summary.to_string()),
        Err(e) => eprintln!("warning: {e}"),
    }
}
