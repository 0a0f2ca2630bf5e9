//! Inference timings: a [`Predictor`]'s latency per call at a batch size and its rows
//! per second, as `scripts/infer_peer.py` times PyTorch and onnxruntime (the same
//! warm-up, calls and percentiles), and a process's peak memory.

use crate::infer::Predictor;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// One batch size's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct InferPoint {
    pub batch: usize,
    /// Median and 99th percentile of a call's wall time, in microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    /// `batch` rows over the mean call time.
    pub rows_per_sec: f64,
}

/// Calls of `predictor` on `batch` consecutive rows of `inputs` (wrapping around), 20
/// unmeasured first, then `calls` timed one by one, the way the peer script times.
pub fn time_predictor(
    predictor: &Predictor,
    inputs: &[f32],
    batch: usize,
    calls: usize,
) -> crate::Result<InferPoint> {
    let width = predictor.inputs();
    let rows = inputs.len() / width;
    if batch == 0 || rows <= batch || calls == 0 {
        return Err(crate::Error::InvalidArgument(format!(
            "timing batches of {batch} needs more than {batch} rows (got {rows}) and calls"
        )));
    }
    let slice = |i: usize| {
        let start = (i * batch) % (rows - batch);
        &inputs[start * width..(start + batch) * width]
    };
    for i in 0..20 {
        predictor.outputs_of(slice(i))?;
    }
    let mut times = Vec::with_capacity(calls);
    for i in 0..calls {
        let x = slice(i);
        let t0 = Instant::now();
        predictor.outputs_of(x)?;
        times.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    let mean = times.iter().sum::<f64>() / calls as f64;
    times.sort_by(f64::total_cmp);
    Ok(InferPoint {
        batch,
        p50_us: percentile(&times, 0.50),
        p99_us: percentile(&times, 0.99),
        rows_per_sec: batch as f64 * 1e6 / mean,
    })
}

/// NumPy's default (linear) percentile of sorted `values`.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// This process's peak resident memory (Linux's `VmHWM`), where the OS says.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_interpolate_as_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(super::percentile(&v, 0.5), 2.5);
        assert_eq!(super::percentile(&v, 0.0), 1.0);
        assert!((super::percentile(&v, 0.99) - 3.97).abs() < 1e-12);
    }
}
