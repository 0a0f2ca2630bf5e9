//! Row-wise log-softmax and the fused softmax + cross-entropy loss. Rows are independent,
//! so large batches split across rayon's pool by rows.

use super::elementwise::{parallel, PAR_CHUNK};
use super::isa::simd_fn;
use super::math;
use super::reduce::sum;
use super::Simd;
use rayon::prelude::*;

simd_fn! {
    fn row_max(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 16];
        let chunks = x.chunks_exact(16);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                // NaN wins, so a NaN logit yields a NaN loss rather than a silent number.
                *a = if v > *a || v.is_nan() { v } else { *a };
            }
        }
        acc.iter().chain(tail).fold(f32::NEG_INFINITY, |m, &v| if v > m || v.is_nan() { v } else { m })
    }
}

simd_fn! {
    /// `out = exp(x - shift)`.
    fn exp_shifted(x: &[f32], shift: f32, out: &mut [f32]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = math::exp(v - shift));
    }
}

simd_fn! {
    /// `out = (x - shift) - c`.
    fn shifted_minus(x: &[f32], shift: f32, c: f32, out: &mut [f32]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = (v - shift) - c);
    }
}

simd_fn! {
    fn scale(out: &mut [f32], c: f32) {
        out.iter_mut().for_each(|o| *o *= c);
    }
}

/// Runs `f(row_index, x_row, out_row)` over the rows, in parallel when large.
fn rows(x: &[f32], out: &mut [f32], cols: usize, f: impl Fn(usize, &[f32], &mut [f32]) + Sync) {
    if cols == 0 {
        return;
    }
    let run = |(r, (o, x)): (usize, (&mut [f32], &[f32]))| f(r, x, o);
    if parallel(out.len()) {
        out.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .enumerate()
            .with_min_len((PAR_CHUNK / cols).max(1))
            .for_each(run);
    } else {
        out.chunks_mut(cols)
            .zip(x.chunks(cols))
            .enumerate()
            .for_each(run);
    }
}

pub(crate) fn log_softmax(simd: Simd, x: &[f32], y: &mut [f32], cols: usize) {
    rows(x, y, cols, |_, x, y| {
        let max = row_max(simd, x);
        exp_shifted(simd, x, max, y);
        // (x - max) - ln(sum), not x - (max + ln(sum)): exact to the rounding of the
        // shifted logit even when the logits are large.
        let ln_sum = sum(simd, y).ln();
        shifted_minus(simd, x, max, ln_sum, y);
    });
}

simd_fn! {
    /// `dx = dy - exp(y) * g`.
    fn log_softmax_grad_row(y: &[f32], dy: &[f32], g: f32, dx: &mut [f32]) {
        for ((d, &y), &gy) in dx.iter_mut().zip(y).zip(dy) {
            *d = gy - math::exp(y) * g;
        }
    }
}

pub(crate) fn log_softmax_backward(simd: Simd, y: &[f32], dy: &[f32], dx: &mut [f32], cols: usize) {
    rows(dy, dx, cols, |r, dy, dx| {
        let g = sum(simd, dy);
        log_softmax_grad_row(simd, &y[r * cols..(r + 1) * cols], dy, g, dx);
    });
}

/// Writes the row softmax of `logits` into `probs` and returns the mean cross-entropy.
/// A label out of range makes its row's loss NaN, as on the GPU, where labels are not
/// read on the host (the runtime checks them before a launch).
pub(crate) fn softmax_cross_entropy(
    simd: Simd,
    logits: &[f32],
    labels: &[u32],
    probs: &mut [f32],
    cols: usize,
) -> f32 {
    if cols == 0 || labels.is_empty() {
        return 0.0;
    }
    let row = |(r, (p, x)): (usize, (&mut [f32], &[f32]))| -> f32 {
        let max = row_max(simd, x);
        exp_shifted(simd, x, max, p);
        let total = sum(simd, p);
        scale(simd, p, 1.0 / total);
        // -log softmax(x)[label] = log-sum-exp(x) - x[label]
        match x.get(labels[r] as usize) {
            Some(&picked) => max + total.ln() - picked,
            None => f32::NAN,
        }
    };
    let row_loss: Vec<f32> = if parallel(probs.len()) {
        probs
            .par_chunks_mut(cols)
            .zip(logits.par_chunks(cols))
            .enumerate()
            .map(row)
            .collect()
    } else {
        probs
            .chunks_mut(cols)
            .zip(logits.chunks(cols))
            .enumerate()
            .map(row)
            .collect()
    };
    // Summed in f64 and in row order: the loss is deterministic and exact to f32.
    (row_loss.iter().map(|&l| l as f64).sum::<f64>() / row_loss.len() as f64) as f32
}

simd_fn! {
    fn xent_grad_row(p: &[f32], scale: f32, dx: &mut [f32]) {
        dx.iter_mut().zip(p).for_each(|(d, &p)| *d = p * scale);
    }
}

pub(crate) fn softmax_cross_entropy_backward(
    simd: Simd,
    probs: &[f32],
    labels: &[u32],
    dloss: f32,
    dlogits: &mut [f32],
    cols: usize,
) {
    let scale_by = dloss / labels.len().max(1) as f32;
    rows(probs, dlogits, cols, |r, p, dx| {
        xent_grad_row(simd, p, scale_by, dx);
        if let Some(d) = dx.get_mut(labels[r] as usize) {
            *d -= scale_by;
        }
    });
}
