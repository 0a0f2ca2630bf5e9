//! The command line every training program shares: `#[command(flatten)]` a [`TrainArgs`]
//! into a program's own clap `Parser`, and it has ringtrain's flags (`--backend`,
//! `--devices`, `--epochs`, `--lr`, `--checkpoint-dir`, `--resume`, ...).

use super::cluster::{CommConfig, CommKind, MpiAlgorithm};
use super::config::{Bagging, CheckpointConfig, Every, Faults, TrainConfig};
use super::devices::{Backend, DeviceName, Devices};
use super::schedule::Schedule;
use crate::parallel::{Balance, InnerState, LocalSgd, NonFinitePolicy, OuterOptimizer};
use clap::ValueEnum;
use ringtrain_runtime::optim::{
    AdamW, AdamWConfig, LossScaler, Optimizer, ParamGroup, Sgd, SgdConfig,
};
use ringtrain_runtime::{Error, Precision, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Which optimizer `--optimizer` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerKind {
    /// SGD with momentum (see --momentum).
    Sgd,
    /// AdamW (betas 0.9, 0.999).
    Adamw,
}

/// How the learning rate moves (see --warmup-steps, --lr-decay-steps, --min-lr-factor,
/// --lr-gamma).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleKind {
    Constant,
    /// Cosine decay to --min-lr-factor at --lr-decay-steps (default: the run's end).
    Cosine,
    /// Multiplied by --lr-gamma every --lr-decay-steps steps.
    Step,
}

/// `--devices`: a count of `--backend` devices, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicesArg {
    Count(usize),
    List(Vec<DeviceName>),
}

fn parse_devices(s: &str) -> std::result::Result<DevicesArg, String> {
    if let Ok(n) = s.trim().parse::<usize>() {
        return if n == 0 {
            Err("at least one device is needed".into())
        } else {
            Ok(DevicesArg::Count(n))
        };
    }
    s.split(',')
        .map(|d| d.parse::<DeviceName>().map_err(|e| e.to_string()))
        .collect::<std::result::Result<_, _>>()
        .map(DevicesArg::List)
}

fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v < 1e9 => Ok(v),
        _ => Err(format!("`{s}` is not a number of seconds above 0")),
    }
}

fn parse_positive_f32(s: &str) -> std::result::Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a finite number above 0")),
    }
}

#[cfg_attr(
    doc,
    doc = r#"
How a process joins its run, for programs that use the cluster without a trainer
(`--comm`, `--mpi-algorithm`, `--comm-timeout`; part of [`TrainArgs`]).
"#
)]
#[derive(clap::Args, Debug, Clone)]
pub struct CommArgs {
    /// How replicas communicate: local, mpi (one process per device) or hierarchical (one
    /// process per machine, --devices replicas each).
    #[arg(long, value_enum, default_value = "local")]
    pub comm: CommKind,
    /// The all-reduce between MPI processes.
    #[arg(long, value_enum, default_value = "ring")]
    pub mpi_algorithm: MpiAlgorithm,
    /// Seconds a collective waits for a silent peer before the run fails. Keep it well
    /// above anything one rank does alone between steps (rank 0 evaluates while the
    /// others wait).
    #[arg(long, default_value_t = 120.0, value_parser = parse_seconds)]
    pub comm_timeout: f64,
    /// The format gradients cross the links between replicas in: f32, or bf16 / f16
    /// (half the bytes), summed in f32 where they arrive; every replica still ends each
    /// step with the same parameters. Over MPI it needs --mpi-algorithm ring.
    #[arg(long, default_value = "f32")]
    pub grad_compression: Precision,
}

impl CommArgs {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.comm_timeout)
    }

    pub fn config(&self) -> CommConfig {
        CommConfig {
            kind: self.comm,
            mpi_algorithm: self.mpi_algorithm,
            timeout: self.timeout(),
            grad_compression: self.grad_compression,
        }
    }
}

// The docs are for rustdoc only: clap would make a flattened struct's doc comment the
// program's own description.
#[cfg_attr(
    doc,
    doc = r#"
ringtrain's training flags, for a program's own clap parser:

```
use clap::Parser;
use ringtrain_models::train::TrainArgs;

#[derive(Parser)]
struct Args {
    /// A flag of the program's own.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    #[command(flatten)]
    train: TrainArgs,
}

let args = Args::parse_from(["prog", "--epochs", "3", "--lr", "0.01", "--devices", "2"]);
let config = args.train.config().unwrap();
assert_eq!(config.epochs, Some(3));
assert_eq!(args.hidden, 64);
```
"#
)]
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Device to train on.
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: Backend,
    /// Replicas for data-parallel training: a count of --backend devices [default: every
    /// hardware GPU, or one CPU], or a list such as gpu:0,gpu:1 or cpu,cpu. Several CPU
    /// replicas share the CPU's cores.
    #[arg(long, value_parser = parse_devices)]
    pub devices: Option<DevicesArg>,
    #[command(flatten)]
    pub comm: CommArgs,
    /// Worker threads for the CPU backend [default: all cores, shared out among the MPI
    /// processes on this machine].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Epochs to train [default: 10, unless --steps is given].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub epochs: Option<u32>,
    /// Optimizer steps to train (with --epochs too, whichever ends first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Samples per step, over all replicas.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Learning rate (the peak of --schedule) [default: the program's, per optimizer].
    #[arg(long, value_parser = parse_positive_f32)]
    pub lr: Option<f32>,
    #[arg(long, value_enum, default_value = "sgd")]
    pub optimizer: OptimizerKind,
    /// SGD momentum [default: 0.9]; only for --optimizer sgd.
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Weight decay (L2 for sgd, decoupled for adamw).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// How the learning rate moves over the run.
    #[arg(long, value_enum, default_value = "constant")]
    pub schedule: ScheduleKind,
    /// Steps of linear warm-up from lr/N to lr, before the schedule.
    #[arg(long, default_value_t = 0)]
    pub warmup_steps: u64,
    /// --schedule cosine: the step the decay ends [default: the run's last]; --schedule
    /// step: the steps between decays (needed).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub lr_decay_steps: Option<u64>,
    /// --schedule cosine: the floor, as a fraction of lr.
    #[arg(long, default_value_t = 0.0)]
    pub min_lr_factor: f32,
    /// --schedule step: the factor at each decay.
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f32,
    /// Clip the gradient (averaged over replicas) to this global L2 norm before each
    /// update.
    #[arg(long, value_parser = parse_positive_f32)]
    pub clip_grad_norm: Option<f32>,
    /// Micro-batches per replica and step (gradient accumulation): the same step in
    /// less memory.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub grad_accum: u32,
    /// ZeRO stage over several replicas: 1 shards the optimizer state (each replica
    /// holds about 1/N of it), 0 keeps all of it on every replica.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    /// How each batch is shared among replicas of different speeds: equal, auto
    /// (shards sized by the throughput measured on the first steps, then fixed), auto:N
    /// (N timed steps), or weights W1,W2,... (one per replica, in rank order).
    #[arg(long, default_value = "equal")]
    pub balance: Balance,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Save checkpoints (model, optimizer, where the run stands, metrics so far) into
    /// this folder, as epoch-EEEE-step-SSSSSSSS.safetensors, every --checkpoint-every
    /// and at the end.
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// How often to checkpoint: N or Nepochs (after every Nth epoch), or Nsteps (after
    /// every Nth step, also mid-epoch).
    #[arg(long, default_value = "1")]
    pub checkpoint_every: Every,
    /// Checkpoints to keep, the newest.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_checkpoints: u32,
    /// Continue from the newest checkpoint in --checkpoint-dir, with the flags of the run
    /// that wrote it (up to --epochs or --steps): the result is the uninterrupted run's.
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// What a step whose loss or gradients hold an infinity or NaN does: stop the run
    /// naming the step, or skip it (no parameter changes) and go on. On one device,
    /// `stop` checks each step's loss, and the parameters whenever the loss is read
    /// (every 20 steps and before a checkpoint), which costs no extra pass per step and
    /// no wait; `skip` checks loss and gradients before every update.
    #[arg(long, value_enum, default_value = "stop")]
    pub on_nonfinite: NonFinitePolicy,
    /// The input precision of the model's products (matrix products, convolutions,
    /// attention): f32, or bf16 / f16 rounded inputs summed in f32, the weights, the
    /// optimizer and every other op staying f32. f16 scales the loss dynamically (steps
    /// whose gradients overflow are skipped and counted, the scale adapts).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Local SGD, for slow links: replicas take H steps apart, each on its shard, then
    /// average their parameters (and optimizer state), instead of averaging gradients
    /// every step; also before every evaluation and checkpoint. Several replicas only.
    #[arg(long, value_name = "H", value_parser = clap::value_parser!(u32).range(1..))]
    pub sync_every: Option<u32>,
    /// Local SGD's outer learning rate, on the replicas' mean change since they last
    /// synchronized (1 with no --outer-momentum: plain averaging; DiLoCo uses 0.7).
    #[arg(long, default_value_t = 1.0, requires = "sync_every", value_parser = parse_positive_f32)]
    pub outer_lr: f32,
    /// Local SGD's outer Nesterov momentum (DiLoCo uses 0.9) [default: none].
    #[arg(long, requires = "sync_every")]
    pub outer_momentum: Option<f32>,
    /// Local SGD: average the inner optimizers' state at each synchronization (exact
    /// resumes; more bytes), or keep each replica's own (DiLoCo; only the parameters'
    /// change is sent).
    #[arg(long, value_enum, default_value = "averaged", requires = "sync_every")]
    pub inner_state: InnerState,
    /// Bagging: train K models, each on its own 1/K of the training data (a seeded
    /// split), with no communication, into member-I folders of --checkpoint-dir: the
    /// models `infer --ensemble` averages.
    #[arg(long, value_name = "K", requires = "checkpoint_dir", value_parser = clap::value_parser!(u32).range(2..))]
    pub bag: Option<u32>,
    /// With --bag K: train member I only (0..K), into --checkpoint-dir itself (one site
    /// of several, each training its own member with the same --seed).
    #[arg(long, value_name = "I", requires = "bag")]
    pub bag_member: Option<u32>,
    /// How often to evaluate and report: N or Nepochs, or Nsteps.
    #[arg(long, default_value = "1")]
    pub eval_every: Every,
    /// Write one JSON object per evaluation to this file (JSON lines).
    #[arg(long)]
    pub metrics_out: Option<PathBuf>,
    /// Write a Chrome trace (Perfetto, chrome://tracing) of the first --trace-steps steps:
    /// every kernel with its thread and shape, GEMM GFLOP/s, gradients, all-reduces.
    #[arg(long, value_name = "FILE")]
    pub trace_out: Option<PathBuf>,
    /// Steps the trace covers (0: all of them; a long run's trace grows large).
    #[arg(long, default_value_t = 20)]
    pub trace_steps: u64,
    /// No progress and no report lines on stdout.
    #[arg(long)]
    pub quiet: bool,
    /// Testing aid: the loss of global step N (from 1) is made NaN.
    #[arg(long, hide = true)]
    pub inject_nan: Option<u64>,
    /// Testing aid: the process dies (exit status 3) right after global step N, as if
    /// killed, writing nothing more.
    #[arg(long, hide = true)]
    pub crash_after_step: Option<u64>,
}

impl TrainArgs {
    /// The run these flags ask for. The optimizer's settings (`--optimizer`,
    /// `--momentum`, `--weight-decay`) go into the settings a resume must match; add the
    /// program's own to `settings` of the result.
    pub fn config(&self) -> Result<TrainConfig> {
        let devices = match &self.devices {
            None => Devices::of(self.backend, None),
            Some(DevicesArg::Count(n)) => Devices::of(self.backend, Some(*n)),
            Some(DevicesArg::List(names)) => Devices::List(names.clone()),
        };
        let schedule = match self.schedule {
            ScheduleKind::Constant => Schedule::Constant {
                warmup: self.warmup_steps,
            },
            ScheduleKind::Cosine => Schedule::Cosine {
                warmup: self.warmup_steps,
                total: self.lr_decay_steps,
                min_factor: self.min_lr_factor,
            },
            ScheduleKind::Step => Schedule::Step {
                warmup: self.warmup_steps,
                every: self.lr_decay_steps.unwrap_or(0),
                gamma: self.lr_gamma,
            },
        };
        if self.momentum.is_some() && self.optimizer != OptimizerKind::Sgd {
            return Err(Error::InvalidArgument(
                "--momentum applies to --optimizer sgd only (AdamW keeps its beta1 = 0.9)".into(),
            ));
        }
        if matches!(self.schedule, ScheduleKind::Step) && self.lr_decay_steps.is_none() {
            return Err(Error::InvalidArgument(
                "--schedule step needs --lr-decay-steps (the steps between decays)".into(),
            ));
        }
        let mut settings = serde_json::Map::new();
        settings.insert("optimizer".into(), format!("{:?}", self.optimizer).into());
        settings.insert("momentum".into(), self.momentum.map(f64::from).into());
        settings.insert("weight_decay".into(), f64::from(self.weight_decay).into());
        let config = TrainConfig {
            devices,
            comm: self.comm.config(),
            threads: self.threads.map(|n| n as usize),
            epochs: self
                .epochs
                .or(if self.steps.is_none() { Some(10) } else { None }),
            steps: self.steps,
            batch_size: self.batch_size as usize,
            tokens_per_sample: None,
            seed: self.seed,
            schedule,
            clip_grad_norm: self.clip_grad_norm,
            grad_accum: self.grad_accum as usize,
            zero: self.zero,
            balance: self.balance.clone(),
            on_nonfinite: self.on_nonfinite,
            precision: self.precision,
            loss_scaler: LossScaler::default(),
            local_sgd: self.sync_every.map(|h| {
                LocalSgd::every(h as usize)
                    .with_outer(OuterOptimizer {
                        lr: self.outer_lr,
                        momentum: self.outer_momentum.unwrap_or(0.0),
                        nesterov: self.outer_momentum.is_some_and(|m| m > 0.0),
                    })
                    .with_inner_state(self.inner_state)
            }),
            bagging: self.bag.map(|k| Bagging {
                members: k as usize,
                only: self.bag_member.map(|m| m as usize),
            }),
            model: None,
            checkpoint: self.checkpoint_dir.as_ref().map(|dir| CheckpointConfig {
                dir: dir.clone(),
                every: self.checkpoint_every,
                keep: self.keep_checkpoints as usize,
            }),
            resume: self.resume,
            eval_every: self.eval_every,
            metrics_out: self.metrics_out.clone(),
            trace_out: self.trace_out.clone(),
            trace_steps: self.trace_steps,
            quiet: self.quiet,
            settings,
            faults: Faults {
                crash_after_step: self.crash_after_step,
                nan_at_step: self.inject_nan,
                ..Faults::default()
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// The learning rate: `--lr`, or the program's default for the chosen optimizer.
    pub fn lr(&self, default: impl Fn(OptimizerKind) -> f32) -> f32 {
        self.lr.unwrap_or_else(|| default(self.optimizer))
    }

    /// The optimizer `--optimizer`, `--lr` (else `default_lr` of the kind),
    /// `--momentum` and `--weight-decay` ask for, over `groups` (one group of a model's
    /// `parameters()`, or groups with settings of their own).
    pub fn optimizer(
        &self,
        groups: Vec<ParamGroup>,
        default_lr: impl Fn(OptimizerKind) -> f32,
    ) -> Result<Box<dyn Optimizer + Send>> {
        let lr = self.lr(default_lr);
        Ok(match self.optimizer {
            OptimizerKind::Sgd => Box::new(Sgd::with_groups(
                groups,
                SgdConfig {
                    lr,
                    momentum: self.momentum.unwrap_or(0.9),
                    weight_decay: self.weight_decay,
                    nesterov: false,
                },
            )?),
            OptimizerKind::Adamw => Box::new(AdamW::with_groups(
                groups,
                AdamWConfig {
                    lr,
                    weight_decay: self.weight_decay,
                    ..AdamWConfig::default()
                },
            )?),
        })
    }
}
