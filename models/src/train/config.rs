//! What a training run is asked to do.

use super::cluster::CommConfig;
use super::devices::Devices;
use super::schedule::Schedule;
use crate::parallel::{Balance, LocalSgd, NonFinitePolicy};
use crate::zoo::ModelSpec;
use ringtrain_runtime::optim::LossScaler;
use ringtrain_runtime::{Error, Precision, Result};
use std::path::PathBuf;
use std::str::FromStr;

/// How often something happens: after every `N`th epoch, or every `N`th step (also in the
/// middle of an epoch). Written `N` or `Nepochs`, or `Nsteps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Epochs(u32),
    Steps(u64),
}

impl FromStr for Every {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("`{s}`: expected N (epochs), Nepochs or Nsteps, with N >= 1");
        let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let n: u64 = digits.parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        match &s[digits.len()..] {
            "" | "epoch" | "epochs" => Ok(Every::Epochs(u32::try_from(n).map_err(|_| bad())?)),
            "step" | "steps" => Ok(Every::Steps(n)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Every {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Every::Epochs(n) => write!(f, "{n}epochs"),
            Every::Steps(n) => write!(f, "{n}steps"),
        }
    }
}

impl Every {
    /// Whether a step that ends at global step `step`, `epoch_done` when it was the
    /// epoch's last, falls on this cadence.
    pub(crate) fn due(&self, step: u64, epoch: u32, epoch_done: bool) -> bool {
        match *self {
            Every::Epochs(n) => epoch_done && epoch.is_multiple_of(n),
            Every::Steps(n) => step.is_multiple_of(n),
        }
    }
}

/// A bag of `members` models (see [`TrainConfig::bagging`]): all of them, one after the
/// other, each into `member-I` under the checkpoint folder (and its metrics into
/// `NAME.member-I.EXT`); or `only` one, as a site training its own member does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bagging {
    pub members: usize,
    pub only: Option<usize>,
}

impl Bagging {
    pub fn validate(&self) -> Result<()> {
        if self.members < 2 {
            return Err(Error::InvalidArgument(format!(
                "a bag has at least 2 members, got {}",
                self.members
            )));
        }
        match self.only {
            Some(m) if m >= self.members => Err(Error::InvalidArgument(format!(
                "bag member {m} is not one of 0..{}",
                self.members
            ))),
            _ => Ok(()),
        }
    }

    /// The members this run trains.
    pub fn members(&self) -> Vec<usize> {
        match self.only {
            Some(m) => vec![m],
            None => (0..self.members).collect(),
        }
    }
}

/// Where and how often a run keeps checkpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// A folder of `epoch-EEEE-step-SSSSSSSS.safetensors` files (see
    /// [`CheckpointDir`](crate::checkpoint::CheckpointDir)).
    pub dir: PathBuf,
    /// Also at the end of the run.
    pub every: Every,
    /// The newest this many are kept.
    pub keep: usize,
}

/// Faults put into a run on purpose, to test what depends on it (a resume, the
/// non-finite policy). Steps count from 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// The process dies (exit status 3) right after this step, as if killed: nothing
    /// more is written.
    pub crash_after_step: Option<u64>,
    /// The run returns an error right after this step, writing nothing more (a crash
    /// that a test in the same process can live through).
    pub stop_after_step: Option<u64>,
    /// The loss of this step is multiplied by NaN on the replica holding the batch's
    /// first row, so that the step's loss and gradients are NaN.
    pub nan_at_step: Option<u64>,
}

/// Everything a [`Trainer`](super::Trainer) run is asked to do, apart from the model, the
/// data and the loss. [`TrainArgs`](super::TrainArgs) makes one from a command line.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    pub devices: Devices,
    pub comm: CommConfig,
    /// CPU worker threads of this process; by default all cores, shared out among the
    /// MPI processes of a machine.
    pub threads: Option<usize>,
    /// The run ends after this many epochs, or after `steps` steps, whichever comes
    /// first; at least one of them must be set.
    pub epochs: Option<u32>,
    pub steps: Option<u64>,
    /// Samples per optimizer step, over all replicas (each takes its share).
    pub batch_size: usize,
    /// Tokens in one sample (a sequence model's window): the reports then give
    /// `tokens_per_sec` too.
    pub tokens_per_sample: Option<usize>,
    /// Seeds the data order (a new order each epoch).
    pub seed: u64,
    pub schedule: Schedule,
    /// Clips the (averaged) gradient to this global L2 norm before each update.
    pub clip_grad_norm: Option<f32>,
    /// Each replica computes its share of a batch in this many micro-batches, summing
    /// their gradients (the same step, holding less at once).
    pub grad_accum: usize,
    /// ZeRO stage over several replicas (see `DataParallelConfig::zero`): 1 shards the
    /// optimizer state; checkpoints still hold all of it, and resume on any number of
    /// replicas, sharded or not.
    pub zero: u8,
    /// How each batch is shared among replicas of different speeds (see
    /// `DataParallelConfig::balance`); auto-balanced weights are saved in checkpoints
    /// and a resumed run takes them up again.
    pub balance: Balance,
    pub on_nonfinite: NonFinitePolicy,
    /// The input precision of the model's products (matmul, linear, conv2d, attention),
    /// summed in f32; parameters, optimizer state and every other op stay f32 (see
    /// `ringtrain_runtime::with_precision`).
    pub precision: Precision,
    /// The dynamic loss scaling of an f16 run: its starting scale and growth interval
    /// (unused in f32 and bf16 runs, whose range is f32's).
    pub loss_scaler: LossScaler,
    /// Local SGD instead of averaging gradients every step (several replicas only): the
    /// replicas also synchronize before every evaluation and checkpoint, so that those
    /// see (and save) the group's model; see [`LocalSgd`].
    pub local_sgd: Option<LocalSgd>,
    /// Train a bag of models, each on its own part of the data ([`Shard`]), with no
    /// communication between them: the models an ensemble averages.
    ///
    /// [`Shard`]: crate::data::Shard
    pub bagging: Option<Bagging>,
    /// The zoo model this run trains: written into every checkpoint's metadata
    /// (`ringtrain.model`), so that a [`Predictor`](crate::infer::Predictor) rebuilds it
    /// from the file alone.
    pub model: Option<ModelSpec>,
    pub checkpoint: Option<CheckpointConfig>,
    /// Continue from the newest checkpoint of `checkpoint.dir`, which must have been
    /// written by a run of the same settings: the result is the uninterrupted run's.
    pub resume: bool,
    /// When to evaluate and write a line of metrics (train loss since the last one,
    /// the evaluation's scores, throughput); also at the end.
    pub eval_every: Every,
    /// One JSON object per evaluation, as JSON lines, rewritten atomically each time.
    pub metrics_out: Option<PathBuf>,
    /// Write a Chrome trace of the first `trace_steps` steps of this run (every step if
    /// 0) to this file (`NAME.rankR.EXT` per process under MPI): see [`crate::trace`].
    pub trace_out: Option<PathBuf>,
    pub trace_steps: u64,
    /// No progress bar and no lines on stdout (errors still go to stderr).
    pub quiet: bool,
    /// Settings of the program's own (the model's shape, say) that a resumed run must
    /// share with the run that wrote its checkpoint, beside the trainer's.
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub faults: Faults,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            devices: Devices::default(),
            comm: CommConfig::default(),
            threads: None,
            epochs: Some(1),
            steps: None,
            batch_size: 64,
            tokens_per_sample: None,
            seed: 0,
            schedule: Schedule::default(),
            clip_grad_norm: None,
            grad_accum: 1,
            zero: 0,
            balance: Balance::Equal,
            on_nonfinite: NonFinitePolicy::default(),
            precision: Precision::F32,
            loss_scaler: LossScaler::default(),
            local_sgd: None,
            bagging: None,
            model: None,
            checkpoint: None,
            resume: false,
            eval_every: Every::Epochs(1),
            metrics_out: None,
            trace_out: None,
            trace_steps: 20,
            quiet: false,
            settings: serde_json::Map::new(),
            faults: Faults::default(),
        }
    }
}

impl TrainConfig {
    /// Checks the settings that need no devices or data.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.epochs.is_none() && self.steps.is_none() {
            return bad("a run needs an end: set epochs, steps, or both");
        }
        if self.epochs == Some(0) || self.steps == Some(0) {
            return bad("epochs and steps must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("the batch size must be at least 1");
        }
        if self.grad_accum == 0 {
            return bad("gradient accumulation needs at least one micro-batch per step");
        }
        if let Some(c) = self.clip_grad_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "the gradient norm to clip to must be finite and > 0, got {c}"
                )));
            }
        }
        if let Some(local) = &self.local_sgd {
            local.validate()?;
        }
        if let Some(bag) = &self.bagging {
            bag.validate()?;
            if self.checkpoint.is_none() {
                return bad(
                    "bagging keeps each member's model in its checkpoints: set a \
                            checkpoint folder (--checkpoint-dir)",
                );
            }
        }
        if self.resume && self.checkpoint.is_none() {
            return bad("--resume needs a checkpoint folder (--checkpoint-dir)");
        }
        if self.checkpoint.as_ref().is_some_and(|c| c.keep == 0) {
            return bad("at least one checkpoint must be kept");
        }
        self.schedule.validate()
    }
}
