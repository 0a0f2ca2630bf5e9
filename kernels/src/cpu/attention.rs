//! Fused scaled dot-product attention, blocked as flash attention is: a block of queries
//! meets the keys block by block with an online softmax, so a head's `[tq, tk]` scores
//! exist only as one `BQ x BK` tile at a time. The backward pass recomputes each tile
//! from the saved row log-sum-exp. Key blocks are transposed into scratch first, so the
//! score row and its gradient are axpys over contiguous keys, which vectorise.

use super::isa::simd_fn;
use super::math;
use super::Simd;
use crate::{dropout_hash, AttentionSpec};
use rayon::prelude::*;

/// Queries per forward task.
const BQ: usize = 32;
/// Keys per tile.
const BK: usize = 64;

simd_fn! {
    /// `y += a * x`.
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
    }
}

simd_fn! {
    fn scale_in_place(y: &mut [f32], a: f32) {
        y.iter_mut().for_each(|y| *y *= a);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `kt[e * nk + c] = k[(c0 + c) * d + e]`: a key block, transposed.
fn transpose_block(k: &[f32], c0: usize, nk: usize, d: usize, kt: &mut [f32]) {
    for c in 0..nk {
        let row = &k[(c0 + c) * d..(c0 + c + 1) * d];
        for (e, &v) in row.iter().enumerate() {
            kt[e * nk + c] = v;
        }
    }
}

/// `s[c] = scale * (q . key c)` over a transposed block.
fn scores(simd: Simd, q: &[f32], kt: &[f32], nk: usize, scale: f32, s: &mut [f32]) {
    let s = &mut s[..nk];
    s.fill(0.0);
    for (e, &qe) in q.iter().enumerate() {
        axpy(simd, s, qe, &kt[e * nk..(e + 1) * nk]);
    }
    scale_in_place(simd, s, scale);
}

/// Whether dropout keeps weight `(head, i, j)`.
#[inline]
fn kept(spec: &AttentionSpec, threshold: u32, head: usize, i: usize, j: usize) -> bool {
    let counter = ((head * spec.tq + i) * spec.tk + j) as u32;
    dropout_hash(spec.seed, counter) >= threshold
}

pub(crate) fn forward(
    simd: Simd,
    spec: &AttentionSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let AttentionSpec { tq, tk, d, .. } = *spec;
    if tq == 0 || tk == 0 || d == 0 {
        out.fill(0.0);
        lse.fill(if tk == 0 { f32::NEG_INFINITY } else { 0.0 });
        return;
    }
    let blocks = tq.div_ceil(BQ);
    let threshold = spec.drop_threshold();
    let inv_keep = 1.0 / (1.0 - spec.dropout);
    let task = |(t, (out, lse)): (usize, (&mut [f32], &mut [f32]))| {
        let (head, qb) = (t / blocks, t % blocks);
        let i0 = qb * BQ;
        let rows = lse.len();
        let q = &q[(head * tq + i0) * d..(head * tq + i0 + rows) * d];
        let (k, v) = (
            &k[head * tk * d..(head + 1) * tk * d],
            &v[head * tk * d..(head + 1) * tk * d],
        );
        let mut kt = vec![0f32; d * BK];
        let mut s = [0f32; BK];
        let mut m = [f32::NEG_INFINITY; BQ];
        let mut l = [0f32; BQ];
        out.fill(0.0);
        let end = spec.key_end(i0 + rows - 1);
        for c0 in (0..end).step_by(BK) {
            let nk = BK.min(end - c0);
            transpose_block(k, c0, nk, d, &mut kt);
            for r in 0..rows {
                let i = i0 + r;
                let limit = spec.key_end(i).saturating_sub(c0).min(nk);
                if limit == 0 {
                    continue;
                }
                scores(simd, &q[r * d..(r + 1) * d], &kt, nk, spec.scale, &mut s);
                let block_max = s[..limit].iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let m_new = m[r].max(block_max);
                let correction = math::exp(m[r] - m_new);
                let acc = &mut out[r * d..(r + 1) * d];
                scale_in_place(simd, acc, correction);
                let mut row_sum = 0f32;
                for c in 0..limit {
                    let p = math::exp(s[c] - m_new);
                    row_sum += p;
                    let w = if spec.dropout > 0.0 {
                        if kept(spec, threshold, head, i, c0 + c) {
                            p * inv_keep
                        } else {
                            continue;
                        }
                    } else {
                        p
                    };
                    axpy(simd, acc, w, &v[(c0 + c) * d..(c0 + c + 1) * d]);
                }
                l[r] = l[r] * correction + row_sum;
                m[r] = m_new;
            }
        }
        for r in 0..rows {
            let acc = &mut out[r * d..(r + 1) * d];
            if l[r] > 0.0 {
                scale_in_place(simd, acc, 1.0 / l[r]);
                lse[r] = m[r] + l[r].ln();
            } else {
                acc.fill(0.0);
                lse[r] = f32::NEG_INFINITY;
            }
        }
    };
    // Chunks must not straddle heads, so split per head first, then per query block.
    out.par_chunks_mut(tq * d)
        .zip(lse.par_chunks_mut(tq))
        .enumerate()
        .for_each(|(head, (out, lse))| {
            out.par_chunks_mut(BQ * d)
                .zip(lse.par_chunks_mut(BQ))
                .enumerate()
                .for_each(|(qb, x)| task((head * blocks + qb, x)));
        });
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    simd: Simd,
    spec: &AttentionSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let AttentionSpec { tq, tk, d, .. } = *spec;
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    if tq == 0 || tk == 0 || d == 0 {
        return;
    }
    let threshold = spec.drop_threshold();
    let inv_keep = 1.0 / (1.0 - spec.dropout);
    // One task per head, walking its tiles in a fixed order: sums do not depend on the
    // thread count.
    type Grads<'a> = ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]);
    let head_task = |(head, ((dq, dk), dv)): (usize, Grads<'_>)| {
        let (qs, ks) = (
            head * tq * d..(head + 1) * tq * d,
            head * tk * d..(head + 1) * tk * d,
        );
        let (q, o, go) = (&q[qs.clone()], &out[qs.clone()], &dout[qs]);
        let (k, v) = (&k[ks.clone()], &v[ks]);
        let lse = &lse[head * tq..(head + 1) * tq];
        let dsum: Vec<f32> = (0..tq)
            .map(|i| dot(&go[i * d..(i + 1) * d], &o[i * d..(i + 1) * d]))
            .collect();
        let mut kt = vec![0f32; d * BK];
        let mut vt = vec![0f32; d * BK];
        let mut s = [0f32; BK];
        let mut dp = [0f32; BK];
        for c0 in (0..tk).step_by(BK) {
            let nk = BK.min(tk - c0);
            transpose_block(k, c0, nk, d, &mut kt);
            transpose_block(v, c0, nk, d, &mut vt);
            for i in 0..tq {
                let limit = spec.key_end(i).saturating_sub(c0).min(nk);
                if limit == 0 || !lse[i].is_finite() {
                    continue;
                }
                let (qi, gi) = (&q[i * d..(i + 1) * d], &go[i * d..(i + 1) * d]);
                scores(simd, qi, &kt, nk, spec.scale, &mut s);
                scores(simd, gi, &vt, nk, 1.0, &mut dp);
                for c in 0..limit {
                    let j = c0 + c;
                    let p = math::exp(s[c] - lse[i]);
                    let (pd, dpc) = if spec.dropout > 0.0 {
                        if kept(spec, threshold, head, i, j) {
                            (p * inv_keep, dp[c] * inv_keep)
                        } else {
                            (0.0, 0.0)
                        }
                    } else {
                        (p, dp[c])
                    };
                    if pd != 0.0 {
                        axpy(simd, &mut dv[j * d..(j + 1) * d], pd, gi);
                    }
                    let ds = p * (dpc - dsum[i]) * spec.scale;
                    axpy(
                        simd,
                        &mut dq[i * d..(i + 1) * d],
                        ds,
                        &k[j * d..(j + 1) * d],
                    );
                    axpy(simd, &mut dk[j * d..(j + 1) * d], ds, qi);
                }
            }
        }
    };
    dq.par_chunks_mut(tq * d)
        .zip(dk.par_chunks_mut(tk * d))
        .zip(dv.par_chunks_mut(tk * d))
        .enumerate()
        .for_each(head_task);
}
