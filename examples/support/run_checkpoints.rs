//! Checkpoints of a training run, as the examples keep them in a
//! [`CheckpointDir`](ringtrain::checkpoint::CheckpointDir): the model under `model.` and
//! the optimizer under `optimizer.`, with where the run stands, its settings and its
//! metrics history in the metadata.

use ringtrain::checkpoint::{Checkpoint, CheckpointDir};
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::str::FromStr;

pub type Res<T> = Result<T, Box<dyn Error>>;

/// Metadata keys.
pub const POSITION: &str = "ringtrain.position";
pub const SETTINGS: &str = "ringtrain.settings";
pub const HISTORY: &str = "ringtrain.history";

/// How often to checkpoint: `--checkpoint-every 2` or `2epochs`, or `500steps`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Epochs(u32),
    Steps(u64),
}

impl FromStr for Every {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
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

/// Where a run stands, exactly enough that a resumed run goes on as the uninterrupted one:
/// inside `epoch` (from 1), `batch` batches of it done, `step` steps in all. The epoch's
/// loss so far is the f64 sum of batch losses times batch sizes read back (as bits) over
/// `seen` samples, plus the f32 sum still on the device, not yet read, over
/// `unread_samples` (so a resumed run reads its losses in the same groups). Steps skipped
/// for non-finite values: in the run, in this epoch, and in a row up to here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u32,
    pub batch: usize,
    pub step: u64,
    pub loss_sum_bits: u64,
    pub seen: usize,
    pub unread_sum_bits: u32,
    pub unread_samples: usize,
    pub skipped: u64,
    pub epoch_skipped: u64,
    pub skipped_in_a_row: u64,
}

impl Position {
    pub fn start() -> Self {
        Self {
            epoch: 1,
            batch: 0,
            step: 0,
            loss_sum_bits: 0f64.to_bits(),
            seen: 0,
            unread_sum_bits: 0f32.to_bits(),
            unread_samples: 0,
            skipped: 0,
            epoch_skipped: 0,
            skipped_in_a_row: 0,
        }
    }

    /// The start of the epoch after this one.
    pub fn next_epoch(self) -> Self {
        Self {
            epoch: self.epoch + 1,
            step: self.step,
            skipped: self.skipped,
            skipped_in_a_row: self.skipped_in_a_row,
            ..Self::start()
        }
    }
}

/// Writes `checkpoint` as the one at `position` (recorded in its metadata) into `dir`.
pub fn save(dir: &CheckpointDir, position: &Position, mut checkpoint: Checkpoint) -> Res<()> {
    checkpoint.set_metadata(POSITION, serde_json::to_string(position)?);
    dir.save(position.epoch, position.step, &checkpoint)?;
    Ok(())
}

/// The newest checkpoint in `dir`, checked against this run's `settings` (a resumed run
/// must be the same run), and where it stands.
pub fn latest(dir: &CheckpointDir, settings: &str) -> Res<(Position, Checkpoint)> {
    let (saved, checkpoint) = dir.latest()?.ok_or_else(|| {
        format!(
            "--resume: no checkpoint (epoch-EEEE-step-SSSSSSSS.safetensors) in {}",
            dir.path().display()
        )
    })?;
    let stored = checkpoint.metadata(SETTINGS).unwrap_or("");
    if stored != settings {
        return Err(format!(
            "--resume: {} was written by a run with other settings; resume with the same \
             flags (it has {stored}, this run {settings})",
            saved.path.display()
        )
        .into());
    }
    let position: Position = checkpoint
        .metadata(POSITION)
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| format!("{}: no valid `{POSITION}` metadata", saved.path.display()))?;
    if (position.epoch, position.step) != (saved.epoch, saved.step) {
        return Err(format!(
            "{}: its `{POSITION}` metadata does not match its name",
            saved.path.display()
        )
        .into());
    }
    Ok((position, checkpoint))
}
