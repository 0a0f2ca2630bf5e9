//! The GEMM timing protocol of ringtrain's benchmarks (`examples/gpu_gemm.rs`, the
//! backend comparison) and of the peer benchmarks `bench/burn-matmul` and
//! `bench/gemm-crates` (which include this file with `#[path]`, so it needs only std,
//! serde and serde_json): ringtrain's and the peers' figures compare number for number,
//! with the same operands, the same check of the result, the same samples and
//! statistics, the same JSON.
//!
//! Protocol: 2 warm-up samples, then samples until at least 3 and `min_time` seconds of
//! calls have passed (at most 5000); a sample is `calls` back-to-back products followed by
//! a device sync, timed by the caller and reported per call.

#![allow(dead_code)] // the peer benchmarks that include this file use part of it

use serde::Serialize;
use std::error::Error;
use std::path::Path;

pub type Res<T> = Result<T, Box<dyn Error>>;

/// Deterministic `n x n` operands A and B.
pub fn operands(n: usize) -> (Vec<f32>, Vec<f32>) {
    let a = (0..n * n)
        .map(|i| ((i * 7 + 1) % 13) as f32 * 0.01 - 0.06)
        .collect();
    let b = (0..n * n)
        .map(|i| ((i * 5 + 2) % 11) as f32 * 0.01 - 0.05)
        .collect();
    (a, b)
}

/// Checks the first and last rows of `c = a b` (spread columns, the last included)
/// against an f64 reference; NaN never passes.
pub fn verify(n: usize, a: &[f32], b: &[f32], c: &[f32]) -> Res<()> {
    if c.len() != n * n {
        return Err(format!("n={n}: C has {} elements, want {}", c.len(), n * n).into());
    }
    for i in [0, n - 1] {
        for j in (0..n).step_by((n / 7).max(1)).chain([n - 1]) {
            let want: f64 = (0..n)
                .map(|p| a[i * n + p] as f64 * b[p * n + j] as f64)
                .sum();
            let got = c[i * n + j] as f64;
            if got.is_nan() || (got - want).abs() > 1e-3 * want.abs().max(1e-2) {
                return Err(format!("n={n}: C[{i},{j}] = {got}, want {want}").into());
            }
        }
    }
    Ok(())
}

/// Per-call seconds of the two warm-up samples and of the timed ones (sorted).
pub struct Timed {
    pub warm_up: [f64; 2],
    pub sorted: Vec<f64>,
}

/// Runs the protocol over `sample`, which makes `calls` products, syncs, and returns the
/// seconds per call.
pub fn time_samples(calls: u32, min_time: f64, sample: impl FnMut() -> Res<f64>) -> Res<Timed> {
    time_at_least(3, calls, min_time, sample)
}

/// [`time_samples`] with at least `min_samples` timed samples instead of 3.
pub fn time_at_least(
    min_samples: usize,
    calls: u32,
    min_time: f64,
    mut sample: impl FnMut() -> Res<f64>,
) -> Res<Timed> {
    let warm_up = [sample()?, sample()?];
    let (mut times, mut total) = (Vec::new(), 0.0);
    let min_samples = min_samples.clamp(1, 5000);
    while times.len() < 5000 && (times.len() < min_samples || total < min_time) {
        let dt = sample()?;
        times.push(dt);
        total += dt * f64::from(calls);
    }
    times.sort_by(f64::total_cmp);
    Ok(Timed {
        warm_up,
        sorted: times,
    })
}

#[derive(Serialize)]
pub struct Row {
    pub n: usize,
    pub gflops: f64,
    pub gflops_median: f64,
    pub best_ms: f64,
    pub median_ms: f64,
    pub samples: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fraction_of_peak: Option<f64>,
}

impl Row {
    /// Best and median GFLOP/s (2 n^3 per product) of `t`, and the best as a fraction of
    /// `peak_tflops` when given.
    pub fn new(n: usize, t: &Timed, peak_tflops: Option<f64>) -> Row {
        let (best, median) = (t.sorted[0], t.sorted[t.sorted.len() / 2]);
        let flops = 2.0 * (n as f64).powi(3);
        Row {
            n,
            gflops: flops / best / 1e9,
            gflops_median: flops / median / 1e9,
            best_ms: best * 1e3,
            median_ms: median * 1e3,
            samples: t.sorted.len(),
            fraction_of_peak: peak_tflops.map(|p| flops / best / (p * 1e12)),
        }
    }
}

/// What `--json-out` writes (the schema scripts/gpu_gemm_report.py reads).
#[derive(Serialize)]
pub struct Report {
    pub library: String,
    pub adapter: String,
    pub calls_per_sample: u32,
    pub gemm: Vec<Row>,
}

impl Report {
    /// Writes the report atomically (a temporary file, then a rename).
    pub fn write(&self, path: &Path) -> Res<()> {
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}
