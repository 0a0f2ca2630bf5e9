//! Fused layer norm: one pass for the row statistics (sums in 16 lanes), one for the
//! output; the backward
//! pass computes the input gradient per row and the parameter gradients over the rows in
//! fixed blocks summed in order, so results do not depend on the thread count.

use super::elementwise::{parallel, PAR_CHUNK};
use super::isa::simd_fn;
use super::lanes;
use super::Simd;
use rayon::prelude::*;

/// Rows per block of the parameter gradients' partial sums.
const ROW_BLOCK: usize = 64;

simd_fn! {
    fn row_forward(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) -> (f32, f32) {
        let n = x.len() as f32;
        let mean = lanes::sum_map(x, |v| v) / n;
        let var = lanes::sum_map(x, |v| (v - mean) * (v - mean)) / n;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
            *y = (x - mean) * rstd * g + b;
        }
        (mean, rstd)
    }
}

simd_fn! {
    fn row_backward(x: &[f32], gamma: &[f32], dy: &[f32], mean: f32, rstd: f32, dx: &mut [f32]) {
        let n = x.len() as f32;
        let a = lanes::sum_zip(gamma, dy, |g, d| d * g);
        let b = lanes::sum_zip3(x, gamma, dy, |x, g, d| d * g * ((x - mean) * rstd));
        let (mean_g, mean_gx) = (a / n, b / n);
        for (((dx, &x), &g), &d) in dx.iter_mut().zip(x).zip(gamma).zip(dy) {
            let xhat = (x - mean) * rstd;
            *dx = rstd * (d * g - mean_g - xhat * mean_gx);
        }
    }
}

simd_fn! {
    /// Adds rows `x`, `dy` (with their statistics) into `dgamma` and `dbeta`.
    fn params_block(x: &[f32], dy: &[f32], stats: &[f32], cols: usize, dgamma: &mut [f32], dbeta: &mut [f32]) {
        for (r, (x, dy)) in x.chunks_exact(cols).zip(dy.chunks_exact(cols)).enumerate() {
            let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
            for (((g, b), &x), &d) in dgamma.iter_mut().zip(dbeta.iter_mut()).zip(x).zip(dy) {
                *g += d * (x - mean) * rstd;
                *b += d;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm(
    simd: Simd,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
    stats: &mut [f32],
    cols: usize,
    eps: f32,
) {
    if cols == 0 {
        return;
    }
    let run = |((y, x), s): ((&mut [f32], &[f32]), &mut [f32])| {
        let (mean, rstd) = row_forward(simd, x, gamma, beta, eps, y);
        s[0] = mean;
        s[1] = rstd;
    };
    if parallel(y.len()) {
        y.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .zip(stats.par_chunks_mut(2))
            .with_min_len((PAR_CHUNK / cols).max(1))
            .for_each(run);
    } else {
        y.chunks_mut(cols)
            .zip(x.chunks(cols))
            .zip(stats.chunks_mut(2))
            .for_each(run);
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
    simd: Simd,
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    cols: usize,
) {
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    if cols == 0 {
        return;
    }
    type Row<'a> = ((&'a mut [f32], &'a [f32]), (&'a [f32], &'a [f32]));
    let row = |((dx, x), (dy, s)): Row<'_>| {
        row_backward(simd, x, gamma, dy, s[0], s[1], dx);
    };
    let block = ROW_BLOCK * cols;
    let partial = |(x, (dy, s)): (&[f32], (&[f32], &[f32]))| {
        let (mut g, mut b) = (vec![0f32; cols], vec![0f32; cols]);
        params_block(simd, x, dy, s, cols, &mut g, &mut b);
        (g, b)
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = if parallel(dx.len()) {
        dx.par_chunks_mut(cols)
            .zip(x.par_chunks(cols))
            .zip(dy.par_chunks(cols).zip(stats.par_chunks(2)))
            .with_min_len((PAR_CHUNK / cols).max(1))
            .for_each(row);
        x.par_chunks(block)
            .zip(dy.par_chunks(block).zip(stats.par_chunks(2 * ROW_BLOCK)))
            .map(partial)
            .collect()
    } else {
        dx.chunks_mut(cols)
            .zip(x.chunks(cols))
            .zip(dy.chunks(cols).zip(stats.chunks(2)))
            .for_each(row);
        x.chunks(block)
            .zip(dy.chunks(block).zip(stats.chunks(2 * ROW_BLOCK)))
            .map(partial)
            .collect()
    };
    // Blocks summed in order: the same bits on 1 or N threads.
    for (g, b) in &partials {
        for (acc, v) in dgamma.iter_mut().zip(g) {
            *acc += v;
        }
        for (acc, v) in dbeta.iter_mut().zip(b) {
            *acc += v;
        }
    }
}
