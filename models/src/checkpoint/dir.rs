//! A training run's folder of checkpoints: one file per save, named by epoch and step
//! (`epoch-0003-step-00000189.safetensors`), the newest few kept.

use super::{Checkpoint, CheckpointError, Result};
use std::path::{Path, PathBuf};

/// One checkpoint file of a [`CheckpointDir`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub epoch: u32,
    pub step: u64,
    pub path: PathBuf,
}

/// A folder holding a run's checkpoints as `epoch-EEEE-step-SSSSSSSS.safetensors`, ordered
/// by step; [`save`](Self::save) writes one atomically and deletes all but the newest
/// `keep`. Other files in the folder are left alone.
///
/// ```
/// use ringtrain_models::checkpoint::{Checkpoint, CheckpointDir};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let tmp = tempfile::tempdir()?;
/// let dir = CheckpointDir::new(tmp.path().join("run"), 2);
/// assert!(dir.latest()?.is_none());
/// for step in [100, 200, 300] {
///     let mut c = Checkpoint::new();
///     c.set_metadata("note", format!("after step {step}"));
///     dir.save(1, step, &c)?;
/// }
/// let steps: Vec<u64> = dir.list()?.iter().map(|s| s.step).collect();
/// assert_eq!(steps, [200, 300]);
/// let (saved, newest) = dir.latest()?.expect("two are kept");
/// assert_eq!((saved.step, newest.metadata("note")), (300, Some("after step 300")));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    path: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// The folder `path` (created at the first save), keeping the newest `keep` (at
    /// least one).
    pub fn new(path: impl Into<PathBuf>, keep: usize) -> Self {
        Self {
            path: path.into(),
            keep: keep.max(1),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file of the checkpoint at `epoch` and `step`.
    pub fn path_for(&self, epoch: u32, step: u64) -> PathBuf {
        self.path
            .join(format!("epoch-{epoch:04}-step-{step:08}.safetensors"))
    }

    /// The checkpoints in the folder, oldest (lowest step) first; none if it does not
    /// exist.
    pub fn list(&self) -> Result<Vec<Saved>> {
        let read_error = |source| CheckpointError::Read {
            path: self.path.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&self.path) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_error(e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let path = entry.map_err(read_error)?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parsed = name
                .strip_prefix("epoch-")
                .and_then(|r| r.strip_suffix(".safetensors"))
                .and_then(|r| r.split_once("-step-"))
                .and_then(|(e, s)| Some((e.parse::<u32>().ok()?, s.parse::<u64>().ok()?)));
            if let Some((epoch, step)) = parsed {
                found.push(Saved { epoch, step, path });
            }
        }
        found.sort_by_key(|s| (s.step, s.epoch));
        Ok(found)
    }

    /// Writes `checkpoint` as the one at `epoch` and `step` (atomically: a crash leaves
    /// the previous files whole), then deletes all but the newest `keep`.
    pub fn save(&self, epoch: u32, step: u64, checkpoint: &Checkpoint) -> Result<Saved> {
        std::fs::create_dir_all(&self.path).map_err(|source| CheckpointError::Write {
            path: self.path.clone(),
            source,
        })?;
        let path = self.path_for(epoch, step);
        checkpoint.save(&path)?;
        let all = self.list()?;
        for old in all.iter().take(all.len().saturating_sub(self.keep)) {
            std::fs::remove_file(&old.path).map_err(|source| CheckpointError::Write {
                path: old.path.clone(),
                source,
            })?;
        }
        Ok(Saved { epoch, step, path })
    }

    /// The newest checkpoint, loaded; `None` if there is none.
    pub fn latest(&self) -> Result<Option<(Saved, Checkpoint)>> {
        match self.list()?.pop() {
            None => Ok(None),
            Some(saved) => {
                let checkpoint = Checkpoint::load(&saved.path)?;
                Ok(Some((saved, checkpoint)))
            }
        }
    }
}
