//! Learning-rate schedules: a factor on the optimizer's learning rate for each step.

use ringtrain_runtime::{Error, Result};
use std::f64::consts::PI;

/// How the learning rate moves over a run, as a factor on the optimizer's (its peak): an
/// optional linear warm-up, then constant, cosine decay or step decay. Step `s` counts
/// from 0; warm-up takes the factor from `1 / warmup` at step 0 up to 1 at step
/// `warmup - 1`, and decay starts after it.
///
/// ```
/// use ringtrain_models::train::Schedule;
///
/// let s = Schedule::Cosine { warmup: 10, total: Some(110), min_factor: 0.1 };
/// assert_eq!(s.factor(0, 110), 0.1);  // warming up: 1/10
/// assert_eq!(s.factor(9, 110), 1.0);  // warm
/// assert!((s.factor(60, 110) - 0.55).abs() < 1e-6); // half way down
/// assert_eq!(s.factor(200, 110), 0.1); // past the end: the floor
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The optimizer's rate throughout, after the warm-up.
    Constant { warmup: u64 },
    /// Half a cosine from 1 down to `min_factor` between the end of the warm-up and step
    /// `total` (by default the run's last step), `min_factor` after.
    Cosine {
        warmup: u64,
        total: Option<u64>,
        min_factor: f32,
    },
    /// Multiplied by `gamma` every `every` steps after the warm-up.
    Step { warmup: u64, every: u64, gamma: f32 },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant { warmup: 0 }
    }
}

impl Schedule {
    /// Checks the settings: factors in `[0, 1]`, a step decay's period above 0.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(format!("schedule: {what}")));
        match *self {
            Schedule::Constant { .. } => Ok(()),
            Schedule::Cosine { min_factor, .. } if !(0.0..=1.0).contains(&min_factor) => bad(
                format!("the floor factor must be in [0, 1], got {min_factor}"),
            ),
            Schedule::Cosine { .. } => Ok(()),
            Schedule::Step { every: 0, .. } => bad("a step decay needs a period above 0".into()),
            Schedule::Step { gamma, .. } if !(gamma.is_finite() && gamma > 0.0) => bad(format!(
                "the decay factor must be finite and > 0, got {gamma}"
            )),
            Schedule::Step { .. } => Ok(()),
        }
    }

    fn warmup(&self) -> u64 {
        match *self {
            Schedule::Constant { warmup }
            | Schedule::Cosine { warmup, .. }
            | Schedule::Step { warmup, .. } => warmup,
        }
    }

    /// The factor for step `step` (from 0) of a run of `run_steps` steps.
    pub fn factor(&self, step: u64, run_steps: u64) -> f32 {
        let warmup = self.warmup();
        if step < warmup {
            return ((step + 1) as f64 / warmup as f64) as f32;
        }
        let after = step - warmup;
        match *self {
            Schedule::Constant { .. } => 1.0,
            Schedule::Cosine {
                total, min_factor, ..
            } => {
                let total = total.unwrap_or(run_steps);
                let span = total.saturating_sub(warmup);
                if span == 0 || after >= span {
                    return min_factor;
                }
                let progress = after as f64 / span as f64;
                let cos = 0.5 * (1.0 + (PI * progress).cos());
                (f64::from(min_factor) + (1.0 - f64::from(min_factor)) * cos) as f32
            }
            Schedule::Step { every, gamma, .. } => {
                let n = after / every;
                f64::from(gamma).powi(i32::try_from(n).unwrap_or(i32::MAX)) as f32
            }
        }
    }

    /// A short description, for the run's first line and its settings.
    pub fn describe(&self) -> String {
        let warm = |w: u64| {
            if w > 0 {
                format!(" after {w} warm-up steps")
            } else {
                String::new()
            }
        };
        match *self {
            Schedule::Constant { warmup } => format!("constant{}", warm(warmup)),
            Schedule::Cosine {
                warmup,
                total,
                min_factor,
            } => format!(
                "cosine to {min_factor} x by step {}{}",
                total.map_or("the end".into(), |t| t.to_string()),
                warm(warmup)
            ),
            Schedule::Step {
                warmup,
                every,
                gamma,
            } => format!("x {gamma} every {every} steps{}", warm(warmup)),
        }
    }
}
