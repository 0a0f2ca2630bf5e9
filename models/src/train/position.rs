//! Where a run stands, exactly enough that a resumed run goes on as the uninterrupted one,
//! and the losses of steps still on the device.

use ringtrain_runtime::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;

/// Inside `epoch` (from 1), `batch` batches of it done, `step` steps in all. The train
/// loss since the last report is the f64 sum of batch losses times batch sizes read back
/// (as bits) over `seen` samples, plus the f32 sum still on the device, not yet read,
/// over `unread_samples` (so a resumed run reads its losses in the same groups). Steps
/// skipped for non-finite values: in the run, since the last report, and in a row. An
/// f16 run's loss scaler: its scale (as bits) and good steps since it last changed (both
/// 0 in other runs, and in checkpoints written before mixed precision existed).
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
    pub window_skipped: u64,
    pub skipped_in_a_row: u64,
    #[serde(default)]
    pub loss_scale_bits: u32,
    #[serde(default)]
    pub loss_scale_good_steps: u32,
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
            window_skipped: 0,
            skipped_in_a_row: 0,
            loss_scale_bits: 0,
            loss_scale_good_steps: 0,
        }
    }

    /// The start of the next epoch; the report window goes on.
    pub fn next_epoch(self) -> Self {
        Self {
            epoch: self.epoch + 1,
            batch: 0,
            ..self
        }
    }

    /// The same place, with a new report window.
    pub fn new_window(self) -> Self {
        Self {
            loss_sum_bits: 0f64.to_bits(),
            seen: 0,
            unread_sum_bits: 0f32.to_bits(),
            unread_samples: 0,
            window_skipped: 0,
            ..self
        }
    }

    pub fn loss_sum(&self) -> f64 {
        f64::from_bits(self.loss_sum_bits)
    }
}

/// Losses of steps on one device, summed where they were computed and read back in one
/// go (reading makes the host wait for the device: a GPU runs one step while the next is
/// recorded). A sum that is not finite is taken apart to find the step.
#[derive(Default)]
pub struct UnreadLosses {
    sum: Option<Tensor>,
    samples: usize,
    steps: Vec<(Position, Tensor)>,
}

/// What a readback finds: the first step whose loss is not finite, or the sum (f32) and
/// samples left unread.
pub type Readback = ControlFlow<Position, (f32, usize)>;

impl UnreadLosses {
    /// The group a checkpoint at `at` left unread, on `device`.
    pub fn resumed(at: &Position, device: &Device) -> Result<Self> {
        if at.unread_samples == 0 {
            return Ok(Self::default());
        }
        let sum = f32::from_bits(at.unread_sum_bits);
        Ok(Self {
            sum: Some(Tensor::from_vec(vec![sum], Vec::<usize>::new(), device)?),
            samples: at.unread_samples,
            steps: Vec::new(),
        })
    }

    /// Adds a step's mean `loss` over `samples` samples.
    pub fn push(&mut self, at: &Position, loss: Tensor, samples: usize) -> Result<()> {
        let weighted = loss.scale(samples as f32)?;
        self.sum = Some(match self.sum.take() {
            Some(sum) => sum.add(&weighted)?,
            None => weighted,
        });
        self.samples += samples;
        self.steps.push((*at, loss));
        Ok(())
    }

    /// The group's sum so far, checked, leaving the group as it is.
    pub fn peek(&mut self) -> Result<Readback> {
        let Some(sum) = &self.sum else {
            return Ok(ControlFlow::Continue((0.0, 0)));
        };
        let sum = sum.to_scalar()?;
        if !sum.is_finite() {
            for (at, loss) in &self.steps {
                if !loss.to_scalar()?.is_finite() {
                    return Ok(ControlFlow::Break(*at));
                }
            }
        }
        Ok(ControlFlow::Continue((sum, self.samples)))
    }

    /// Adds the group to `at`'s window and starts a new one, or breaks with the first
    /// step whose loss was not finite.
    pub fn read(&mut self, at: &mut Position) -> Result<Readback> {
        let (sum, samples) = match self.peek()? {
            ControlFlow::Continue(group) => group,
            brk => return Ok(brk),
        };
        *self = Self::default();
        at.loss_sum_bits = (at.loss_sum() + f64::from(sum)).to_bits();
        at.seen += samples;
        at.unread_sum_bits = 0f32.to_bits();
        at.unread_samples = 0;
        Ok(ControlFlow::Continue((0.0, 0)))
    }
}
