//! A run's checkpoints: the model under `model.` and the optimizer under `optimizer.`,
//! with where the run stands, its settings and its reports so far in the metadata.

use super::position::Position;
use super::record::Record;
use crate::checkpoint::{Checkpoint, CheckpointDir};
use ringtrain_runtime::{Error, Result};

/// Metadata keys.
pub const POSITION: &str = "ringtrain.position";
pub const SETTINGS: &str = "ringtrain.settings";
pub const HISTORY: &str = "ringtrain.history";

/// Writes `checkpoint` as the one at `position` into `dir`, with `settings` and
/// `history`. Nothing holding an infinity or NaN is written (an optimizer's moments can
/// overflow while the parameters stay finite).
pub fn save(
    dir: &CheckpointDir,
    position: &Position,
    settings: &str,
    history: &[Record],
    mut checkpoint: Checkpoint,
) -> Result<()> {
    if let Some(name) = checkpoint.first_nonfinite() {
        return Err(Error::Diverged(format!(
            "training diverged by step {}: `{name}` holds infinite or NaN values, so no \
             checkpoint was written; try a lower --lr",
            position.step
        )));
    }
    let history: Vec<serde_json::Value> = history.iter().map(Record::to_json).collect();
    checkpoint.set_metadata(SETTINGS, settings);
    checkpoint.set_metadata(HISTORY, serde_json::Value::Array(history).to_string());
    checkpoint.set_metadata(
        POSITION,
        serde_json::to_string(position).map_err(Error::msg)?,
    );
    dir.save(position.epoch, position.step, &checkpoint)?;
    Ok(())
}

/// The newest checkpoint in `dir`, checked against this run's `settings` (a resumed run
/// must be the same run), where it stands, and its reports so far.
pub fn latest(dir: &CheckpointDir, settings: &str) -> Result<(Position, Vec<Record>, Checkpoint)> {
    let (saved, checkpoint) = dir.latest()?.ok_or_else(|| {
        Error::msg(format!(
            "--resume: no checkpoint (epoch-EEEE-step-SSSSSSSS.safetensors) in {}",
            dir.path().display()
        ))
    })?;
    let stored = checkpoint.metadata(SETTINGS).unwrap_or("");
    if stored != settings {
        return Err(Error::msg(format!(
            "--resume: {} was written by a run with other settings; resume with the same \
             flags (it has {stored}, this run {settings})",
            saved.path.display()
        )));
    }
    let position: Position = checkpoint
        .metadata(POSITION)
        .and_then(|p| serde_json::from_str(p).ok())
        .ok_or_else(|| {
            Error::msg(format!(
                "{}: no valid `{POSITION}` metadata",
                saved.path.display()
            ))
        })?;
    if (position.epoch, position.step) != (saved.epoch, saved.step) {
        return Err(Error::msg(format!(
            "{}: its `{POSITION}` metadata does not match its name",
            saved.path.display()
        )));
    }
    let history = checkpoint
        .metadata(HISTORY)
        .map(|h| -> Result<Vec<Record>> {
            let values: Vec<serde_json::Value> = serde_json::from_str(h)
                .map_err(|e| Error::msg(format!("{}: `{HISTORY}`: {e}", saved.path.display())))?;
            values.iter().map(Record::from_json).collect()
        })
        .transpose()?
        .unwrap_or_default();
    Ok((position, history, checkpoint))
}

/// Restores `model` from the newest checkpoint a [`Trainer`](super::Trainer) wrote into
/// `dir` (to sample from it, or evaluate it), and returns the program's settings of that
/// run (its `TrainConfig::settings`), so a program can rebuild the model it holds.
pub fn restore_model(
    dir: &std::path::Path,
    model: &(impl crate::nn::ModuleState + ?Sized),
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let dir = CheckpointDir::new(dir, 1);
    let (saved, checkpoint) = dir.latest()?.ok_or_else(|| {
        Error::msg(format!(
            "no checkpoint (epoch-EEEE-step-SSSSSSSS.safetensors) in {}",
            dir.path().display()
        ))
    })?;
    checkpoint
        .restore(model, "model.")
        .map_err(|e| Error::msg(format!("{}: {e}", saved.path.display())))?;
    Ok(checkpoint_settings(&checkpoint))
}

/// The program's settings in a trainer checkpoint's metadata (empty when it has none).
pub fn checkpoint_settings(checkpoint: &Checkpoint) -> serde_json::Map<String, serde_json::Value> {
    checkpoint
        .metadata(SETTINGS)
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        .and_then(|v| v.get("program").and_then(|p| p.as_object().cloned()))
        .unwrap_or_default()
}

/// The program's settings of the newest checkpoint in `dir`, read before a model is
/// built from them.
pub fn latest_settings(
    dir: &std::path::Path,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let (_, checkpoint) = CheckpointDir::new(dir, 1).latest()?.ok_or_else(|| {
        Error::msg(format!(
            "no checkpoint (epoch-EEEE-step-SSSSSSSS.safetensors) in {}",
            dir.display()
        ))
    })?;
    Ok(checkpoint_settings(&checkpoint))
}
