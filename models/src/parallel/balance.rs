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
    /// rank order, all finite and >= 0, not all 0; a replica of weight 0 gets no rows,
    /// and still takes part in every reduction): the weights a calibrated run measured,
    /// to reproduce it.
    Weights(Vec<f64>),
    /// Measured on the first steps, then fixed for the rest of the run
    /// ([`super::DataParallel::balance_weights`] says what they came to), so that it
    /// stays reproducible from them. A warm-up step (allocations, shader compilation),
    /// `steps` steps on equal shards and `steps` on shards proportional to the
    /// throughput they showed, each replica's forward and backward timed: from the two
    /// shard sizes, each replica's time is a fixed cost plus a cost per row, and the
    /// shards are those that make the slowest replica fastest. A replica whose fixed
    /// cost alone is more than that (a software GPU beside a CPU) gets no rows.
    Auto { steps: usize },
}

impl Balance {
    /// Auto-balancing over the default number of timed steps.
    pub const AUTO: Balance = Balance::Auto { steps: 3 };

    pub(super) fn validate(&self, group: usize) -> Result<()> {
        match self {
            Balance::Weights(w) => check_weights(w, group),
            Balance::Auto { steps: 0 } => Err(Error::InvalidArgument(
                "auto-balancing needs at least one timed step".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// One weight per replica of a group of `group`, finite, >= 0 and not all 0.
pub(super) fn check_weights(w: &[f64], group: usize) -> Result<()> {
    if w.len() != group {
        return Err(Error::InvalidArgument(format!(
            "balance weights: {} given for a group of {group} replicas (one each, in rank \
             order)",
            w.len()
        )));
    }
    if w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) || w.iter().sum::<f64>() <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "balance weights must be finite, >= 0 and not all 0: {w:?}"
        )));
    }
    Ok(())
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
    /// Steps still to take before timing (the warm-up), the phase (0: equal shards, 1:
    /// proportional ones), steps still to time in it, and per local replica the rows
    /// and compute time so far in this phase.
    Running {
        warmup: usize,
        phase: usize,
        steps: usize,
        left: usize,
        rows: Vec<usize>,
        time: Vec<Duration>,
    },
    Done,
}

/// One replica's measurement: rows per step and seconds per step.
pub(super) type Point = (f64, f64);

impl Calibration {
    pub fn start(steps: usize, replicas: usize) -> Self {
        Calibration::Running {
            warmup: 1,
            phase: 0,
            steps,
            left: steps,
            rows: vec![0; replicas],
            time: vec![Duration::ZERO; replicas],
        }
    }

    /// Adds a step's rows and compute times; at the end of a phase returns it, and each
    /// local replica's mean rows and seconds per step in it, and starts the next.
    pub fn record(
        &mut self,
        step_rows: &[usize],
        step_time: &[Duration],
    ) -> Option<(usize, Vec<Point>)> {
        let Calibration::Running {
            warmup,
            phase,
            steps,
            left,
            rows,
            time,
        } = self
        else {
            return None;
        };
        if *warmup > 0 {
            *warmup -= 1;
            return None;
        }
        for i in 0..rows.len() {
            rows[i] += step_rows[i];
            time[i] += step_time[i];
        }
        *left -= 1;
        if *left > 0 {
            return None;
        }
        let n = *steps as f64;
        let points = rows
            .iter()
            .zip(time.iter())
            .map(|(&r, t)| (r as f64 / n, t.as_secs_f64() / n))
            .collect();
        let done = *phase;
        *phase += 1;
        *left = *steps;
        rows.iter_mut().for_each(|r| *r = 0);
        time.iter_mut().for_each(|t| *t = Duration::ZERO);
        if done == 1 {
            *self = Calibration::Done;
        }
        Some((done, points))
    }
}

/// Shards proportional to each replica's rows per second at `points`.
pub(super) fn proportional(points: &[Point]) -> Vec<f64> {
    points
        .iter()
        .map(|&(rows, secs)| {
            if rows > 0.0 && secs > 0.0 {
                rows / secs
            } else {
                1.0
            }
        })
        .collect()
}

/// Each replica's time as `fixed + per_row * rows`, fitted through its two
/// measurements (`first` on equal shards, `second` on proportional ones); where the two
/// shard sizes are too close to tell the costs apart, or the fit makes no sense (noise),
/// all of the time is per row.
pub(super) fn fit(first: Point, second: Point) -> (f64, f64) {
    let ((r1, t1), (r2, t2)) = (first, second);
    let rows = r1 + r2;
    if rows <= 0.0 {
        // No rows either time: its time is all fixed, and rows would only add to it.
        return ((t1 + t2) / 2.0, f64::INFINITY);
    }
    let proportional = (0.0, (t1 + t2) / rows);
    if (r2 - r1).abs() < 0.1 * r1.max(r2) {
        return proportional;
    }
    let per_row = (t2 - t1) / (r2 - r1);
    let fixed = t1 - per_row * r1;
    if per_row <= 0.0 || fixed < 0.0 {
        return proportional;
    }
    (fixed, per_row)
}

/// The shard sizes (as weights) that make the slowest replica's time least, for a batch
/// of `batch` rows, each replica taking `fixed + per_row * rows`: the time `T` at which
/// the replicas together take the batch, each `(T - fixed) / per_row` rows, none below
/// zero.
pub(super) fn plan(costs: &[(f64, f64)], batch: f64) -> Vec<f64> {
    let rows_at = |t: f64| -> Vec<f64> {
        costs
            .iter()
            .map(|&(fixed, per_row)| ((t - fixed) / per_row).max(0.0))
            .collect()
    };
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for &(fixed, per_row) in costs {
        if per_row.is_finite() {
            hi = hi.max(fixed + per_row * batch);
        }
    }
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if rows_at(mid).iter().sum::<f64>() < batch {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let weights = rows_at(hi);
    if weights.iter().sum::<f64>() > 0.0 {
        weights
    } else {
        vec![1.0; costs.len()]
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
        assert!(Balance::Weights(vec![1.0, 0.0]).validate(2).is_ok());
        assert!(Balance::Weights(vec![0.0, 0.0]).validate(2).is_err());
        assert!(Balance::Weights(vec![1.0, -1.0]).validate(2).is_err());
        assert!(Balance::Weights(vec![1.0]).validate(2).is_err());
        assert!(Balance::Auto { steps: 0 }.validate(2).is_err());
        assert!(Balance::Weights(vec![1.0, 2.0]).validate(2).is_ok());
    }

    #[test]
    fn calibration_times_two_phases_after_the_warm_up() {
        let mut c = Calibration::start(2, 2);
        let ms = Duration::from_millis;
        assert!(c.record(&[5, 5], &[ms(100), ms(100)]).is_none());
        assert!(c.record(&[5, 5], &[ms(10), ms(40)]).is_none());
        let (phase, points) = c.record(&[5, 5], &[ms(10), ms(40)]).unwrap();
        assert_eq!(phase, 0);
        assert_eq!(points, vec![(5.0, 0.01), (5.0, 0.04)]);
        assert_eq!(proportional(&points), vec![500.0, 125.0]);
        assert!(c.record(&[8, 2], &[ms(16), ms(20)]).is_none());
        let (phase, _) = c.record(&[8, 2], &[ms(16), ms(20)]).unwrap();
        assert_eq!(phase, 1);
        assert!(matches!(c, Calibration::Done));
    }

    #[test]
    fn a_replica_whose_fixed_cost_exceeds_the_others_time_gets_no_rows() {
        // A CPU: 0.1 ms per row. A software GPU: 20 ms fixed, 0.1 ms per row.
        let cpu = fit((50.0, 0.005), (90.0, 0.009));
        let gpu = fit((50.0, 0.025), (10.0, 0.021));
        assert!(
            (cpu.0).abs() < 1e-9 && (cpu.1 - 1e-4).abs() < 1e-9,
            "{cpu:?}"
        );
        assert!((gpu.0 - 0.02).abs() < 1e-9, "{gpu:?}");
        let w = plan(&[cpu, gpu], 100.0);
        assert!((w[0] - 100.0).abs() < 1e-6 && w[1] == 0.0, "{w:?}");
        // Two alike devices share evenly; one twice as fast per row takes twice the rows.
        let w = plan(&[(0.0, 1.0), (0.0, 0.5)], 90.0);
        assert!(
            (w[0] - 30.0).abs() < 1e-6 && (w[1] - 60.0).abs() < 1e-6,
            "{w:?}"
        );
        // Too close to tell fixed from per-row cost: all per row.
        assert_eq!(fit((50.0, 0.01), (52.0, 0.0104)), (0.0, 0.0204 / 102.0));
    }
}
