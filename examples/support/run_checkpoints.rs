//! Checkpoints of a training run, as the examples keep them: `DIR/epoch-NNNN.safetensors`,
//! the model under `model.` and the optimizer under `optimizer.`, with the epoch, the
//! run's settings and its metrics history in the metadata; the newest `keep` are kept.

use ringtrain::checkpoint::Checkpoint;
use std::error::Error;
use std::path::{Path, PathBuf};

pub type Res<T> = Result<T, Box<dyn Error>>;

/// Metadata keys.
pub const EPOCH: &str = "ringtrain.epoch";
pub const SETTINGS: &str = "ringtrain.settings";
pub const HISTORY: &str = "ringtrain.history";

/// The file of the checkpoint after `epoch`.
pub fn path_for(dir: &Path, epoch: u32) -> PathBuf {
    dir.join(format!("epoch-{epoch:04}.safetensors"))
}

/// The checkpoints in `dir`, by epoch, oldest first.
pub fn list(dir: &Path) -> Res<Vec<(u32, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display()).into()),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(epoch) = name
            .strip_prefix("epoch-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|n| n.parse::<u32>().ok())
        {
            found.push((epoch, path));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes `checkpoint` as the one after `epoch`, then deletes all but the newest `keep`.
pub fn save(dir: &Path, epoch: u32, checkpoint: &Checkpoint, keep: usize) -> Res<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = path_for(dir, epoch);
    checkpoint.save(&path)?;
    let all = list(dir)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_file(old)
            .map_err(|e| format!("cannot remove old checkpoint {}: {e}", old.display()))?;
    }
    Ok(path)
}

/// The newest checkpoint in `dir`, checked against this run's `settings` (a resumed run
/// must be the same run), and the epoch it ended.
pub fn latest(dir: &Path, settings: &str) -> Res<(u32, Checkpoint)> {
    let (epoch, path) = list(dir)?.pop().ok_or_else(|| {
        format!(
            "--resume: no checkpoint (epoch-NNNN.safetensors) in {}",
            dir.display()
        )
    })?;
    let checkpoint = Checkpoint::load(&path)?;
    let saved = checkpoint.metadata(SETTINGS).unwrap_or("");
    if saved != settings {
        return Err(format!(
            "--resume: {} was written by a run with other settings; resume with the same \
             flags (it has {saved}, this run {settings})",
            path.display()
        )
        .into());
    }
    if checkpoint.metadata(EPOCH) != Some(epoch.to_string().as_str()) {
        return Err(format!("{}: its epoch does not match its name", path.display()).into());
    }
    Ok((epoch, checkpoint))
}
