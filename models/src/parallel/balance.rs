//! How a global batch is shared among replicas that differ in speed (a CPU beside a
//! GPU, two GPUs of different generations): each replica's shard sized to its
//! throughput, so that all finish their part of a step at about the same time. The
//! gradient is still the whole batch's mean: each shard's loss is weighted by its share
//! of the rows.

use ringtrain_runtime::{Error, Result};
use std::ops::Range;
use std::time::Duration;

/// How shards are sized.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Balance {
    /// Equal shards (sizes differing by at most one row).
    #[default]
    Equal,
    /// Shard `r` proportional to `weights[r]` (one weight per replica of the group, in
    /// rank order, all finite and > 0): throughputs measured earlier, to reproduce a
    /// calibrated run.
    Weights(Vec<f64>),
    /// Equal shards for the first `steps + 1` steps, timing each replica's forward and
    /// backward on all but the first (which warms up: allocations, shader compilation);
    /// then weights from the measured rows per second, fixed for the rest of the run
    /// ([`super::DataParallel::balance_weights`] says which), so that it stays
    /// reproducible from them.
    Auto { steps: usize },
}

impl Balance {
    /// Auto-balancing over the default number of timed steps.
    pub const AUTO: Balance = Balance::Auto { steps: 3 };

    pub(super) fn validate(&self, group: usize) -> Result<()> {
        match self {
            Balance::Weights(w) if w.len() != group => Err(Error::InvalidArgument(format!(
                "balance weights: {} given for a group of {group} replicas (one each, in \
                 rank order)",
                w.len()
            ))),
            Balance::Weights(w) if w.iter().any(|x| !(x.is_finite() && *x > 0.0)) => Err(
                Error::InvalidArgument(format!("balance weights must be finite and > 0: {w:?}")),
            ),
            Balance::Auto { steps: 0 } => Err(Error::InvalidArgument(
                "auto-balancing needs at least one timed step".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// `equal`, `auto`, `auto:N` (N timed steps) or weights `W1,W2,...`.
impl std::str::FromStr for Balance {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "equal" => return Ok(Balance::Equal),
            "auto" => return Ok(Balance::AUTO),
            _ => {}
        }
        if let Some(n) = s.strip_prefix("auto:") {
            return n
                .parse()
                .map(|steps| Balance::Auto { steps })
                .map_err(|_| format!("`{s}`: auto:N takes a number of steps"));
        }
        s.split(',')
            .map(|w| w.trim().parse::<f64>())
            .collect::<std::result::Result<Vec<f64>, _>>()
            .map(Balance::Weights)
            .map_err(|_| format!("`{s}`: expected equal, auto, auto:N or weights W1,W2,..."))
    }
}

/// Rows `len` cut among replicas in proportion to `weights`: replica `i`'s contiguous
/// part. Boundaries are rounded from the cumulative weights, so the parts cover the
/// rows exactly once; f64 arithmetic on the same weights gives every rank the same cut.
pub fn weighted_shard(len: usize, weights: &[f64], i: usize) -> Range<usize> {
    let total: f64 = weights.iter().sum();
    let at = |k: usize| -> usize {
        if k == weights.len() {
            return len;
        }
        let before: f64 = weights[..k].iter().sum();
        ((before / total * len as f64).round() as usize).min(len)
    };
    at(i)..at(i + 1).max(at(i))
}

/// The state of auto-balancing on this process's replicas.
#[derive(Debug, Clone)]
pub(super) enum Calibration {
    /// Steps still to take before timing (the warm-up), steps to time, and per local
    /// replica the rows and compute time so far.
    Running {
        warmup: usize,
        left: usize,
        rows: Vec<usize>,
        time: Vec<Duration>,
    },
    Done,
}

impl Calibration {
    pub fn start(steps: usize, replicas: usize) -> Self {
        Calibration::Running {
            warmup: 1,
            left: steps,
            rows: vec![0; replicas],
            time: vec![Duration::ZERO; replicas],
        }
    }

    /// Adds a step's rows and compute times; true when the last timed step is in.
    pub fn record(&mut self, step_rows: &[usize], step_time: &[Duration]) -> bool {
        let Calibration::Running {
            warmup,
            left,
            rows,
            time,
        } = self
        else {
            return false;
        };
        if *warmup > 0 {
            *warmup -= 1;
            return false;
        }
        for i in 0..rows.len() {
            rows[i] += step_rows[i];
            time[i] += step_time[i];
        }
        *left -= 1;
        *left == 0
    }

    /// Rows per second of each local replica (a replica given no rows counts as 1 row
    /// per second: it is weighted, if barely, and learns nothing wrong).
    pub fn throughputs(&self) -> Vec<f64> {
        match self {
            Calibration::Running { rows, time, .. } => rows
                .iter()
                .zip(time)
                .map(|(&r, t)| {
                    let secs = t.as_secs_f64();
                    if r == 0 || secs <= 0.0 {
                        1.0
                    } else {
                        r as f64 / secs
                    }
                })
                .collect(),
            Calibration::Done => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_shards_cover_the_rows_once_in_proportion() {
        for len in [0, 1, 7, 100, 1001] {
            for weights in [vec![1.0], vec![1.0, 3.0], vec![0.2, 5.0, 1.0, 1.0]] {
                let mut next = 0;
                for i in 0..weights.len() {
                    let r = weighted_shard(len, &weights, i);
                    assert_eq!(r.start, next, "{len} {weights:?}");
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
        assert_eq!(weighted_shard(100, &[1.0, 3.0], 0), 0..25);
        assert_eq!(weighted_shard(100, &[1.0, 3.0], 1), 25..100);
    }

    #[test]
    fn balance_parses_and_checks_its_weights() {
        assert_eq!("auto".parse::<Balance>().unwrap(), Balance::AUTO);
        assert_eq!(
            "auto:5".parse::<Balance>().unwrap(),
            Balance::Auto { steps: 5 }
        );
        assert_eq!("Equal".parse::<Balance>().unwrap(), Balance::Equal);
        assert_eq!(
            "1,2.5".parse::<Balance>().unwrap(),
            Balance::Weights(vec![1.0, 2.5])
        );
        assert!("fast".parse::<Balance>().is_err());
        assert!(Balance::Weights(vec![1.0, 0.0]).validate(2).is_err());
        assert!(Balance::Weights(vec![1.0]).validate(2).is_err());
        assert!(Balance::Auto { steps: 0 }.validate(2).is_err());
        assert!(Balance::Weights(vec![1.0, 2.0]).validate(2).is_ok());
    }

    #[test]
    fn calibration_skips_the_warm_up_step() {
        let mut c = Calibration::start(2, 2);
        let ms = Duration::from_millis;
        assert!(!c.record(&[5, 5], &[ms(100), ms(100)]));
        assert!(!c.record(&[5, 5], &[ms(10), ms(40)]));
        assert!(c.record(&[5, 5], &[ms(10), ms(40)]));
        assert_eq!(c.throughputs(), vec![500.0, 125.0]);
    }
}
