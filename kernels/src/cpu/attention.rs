//! Fused scaled dot-product attention, blocked as flash attention is: a block of queries
//! meets the keys block by block with an online softmax, so a head's `[tq, tk]` scores
//! exist only as one `BQ x BK` tile at a time. The backward pass recomputes each tile
//! from the saved row log-sum-exp. Key blocks are transposed into scratch first, so a
//! score row is a run of axpys over contiguous keys; each row-level step is one
//! `simd_fn!` kernel, so loops over a small head size vectorise without a call per key.

use super::isa::simd_fn;
use super::{gemm, math};
use super::{Isa, Simd};
use crate::{dropout_hash, AttentionSpec};
use rayon::prelude::*;

/// Queries per forward task.
const BQ: usize = 32;
/// Keys per tile.
const BK: usize = 64;
/// Query rows per backward tile: its weights and their gradients, 2 x 16 KiB, stay in L1
/// and L2 while dK and dV take their products.
const BQ_BACKWARD: usize = 64;

/// `s[c] = scale * acc[c]`; returns the largest of the first `limit`, taken over the
/// whole tile in 16 lanes with the rest masked off: constant trip counts, no scalar
/// remainder, where a running maximum is a chain of dependent steps as long as the row.
#[inline(always)]
fn scale_and_max<const W: usize>(
    acc: &[f32; W],
    scale: f32,
    limit: usize,
    s: &mut [f32; BK],
) -> f32 {
    // Comparisons, not `f32::max` (a NaN test per step): NaNs are skipped either way.
    let bigger = |m: f32, x: f32| if x > m { x } else { m };
    let mut lanes = [f32::NEG_INFINITY; 16];
    for base in (0..W).step_by(16) {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let c = base + i;
            s[c] = acc[c] * scale;
            let x = if c < limit { s[c] } else { f32::NEG_INFINITY };
            *lane = bigger(*lane, x);
        }
    }
    for width in [8, 4, 2, 1] {
        for i in 0..width {
            lanes[i] = bigger(lanes[i], lanes[i + width]);
        }
    }
    lanes[0]
}

/// `acc[c] += q[e] * kt[e * BK + c]` over the head dimension `e` for the tile's first `W`
/// keys: one row's scores before scaling, against a tile of `BK` keys transposed (`[d,
/// BK]`, zero past the block's keys). The trip counts are constants, so the sums stay in
/// registers.
#[inline(always)]
fn row_products<const W: usize>(q: &[f32], kt: &[f32], acc: &mut [f32; W]) {
    for (&qe, k) in q.iter().zip(kt.chunks_exact(BK)) {
        for c in 0..W {
            acc[c] += qe * k[c];
        }
    }
}

simd_fn! {
    /// `s[c] = scale * (q . key c)` for a tile of `BK` keys transposed in `kt`; returns
    /// the largest of the first `limit` scores.
    fn scores_row(q: &[f32], kt: &[f32], scale: f32, limit: usize, s: &mut [f32; BK]) -> f32 {
        let mut acc = [0f32; BK];
        row_products(q, kt, &mut acc);
        scale_and_max(&acc, scale, limit, s)
    }
}

/// Two rows' scores over the tile's first `W` keys, each row against its own tile, the
/// two rows' sums interleaved so that twice the adds are in flight; each sum runs over the
/// head in order, so the bits are those of two single rows. Entries of `s` from `W` on
/// are left as they were.
#[inline(always)]
fn score_pair<const W: usize>(
    q: [&[f32]; 2],
    kt: [&[f32]; 2],
    scale: [f32; 2],
    limit: [usize; 2],
    s: [&mut [f32; BK]; 2],
) -> [f32; 2] {
    let (mut a0, mut a1) = ([0f32; W], [0f32; W]);
    let rows0 = q[0].iter().zip(kt[0].chunks_exact(BK));
    let rows1 = q[1].iter().zip(kt[1].chunks_exact(BK));
    for ((&q0, k0), (&q1, k1)) in rows0.zip(rows1) {
        for c in 0..W {
            a0[c] += q0 * k0[c];
            a1[c] += q1 * k1[c];
        }
    }
    let [s0, s1] = s;
    [
        scale_and_max(&a0, scale[0], limit[0], s0),
        scale_and_max(&a1, scale[1], limit[1], s1),
    ]
}

simd_fn! {
    /// [`score_pair`] over the whole tile, as AVX-512 takes rows: one row keeps four adds
    /// in flight, two keep eight, which two FMA ports at four cycles' latency want.
    fn scores_row_pair(
        q: [&[f32]; 2],
        kt: [&[f32]; 2],
        scale: [f32; 2],
        limit: [usize; 2],
        s: [&mut [f32; BK]; 2],
    ) -> [f32; 2] {
        score_pair::<BK>(q, kt, scale, limit, s)
    }
}

simd_fn! {
    /// [`score_pair`] over the tile's first 32 keys: AVX2's 16 registers hold both rows'
    /// sums, eight adds in flight where one row of 64 keeps eight for twice the work.
    fn scores_row_pair_32(
        q: [&[f32]; 2],
        kt: [&[f32]; 2],
        scale: [f32; 2],
        limit: [usize; 2],
        s: [&mut [f32; BK]; 2],
    ) -> [f32; 2] {
        score_pair::<32>(q, kt, scale, limit, s)
    }
}

simd_fn! {
    /// [`score_pair`] over the tile's first 48 keys: twelve of AVX2's registers for sums.
    fn scores_row_pair_48(
        q: [&[f32]; 2],
        kt: [&[f32]; 2],
        scale: [f32; 2],
        limit: [usize; 2],
        s: [&mut [f32; BK]; 2],
    ) -> [f32; 2] {
        score_pair::<48>(q, kt, scale, limit, s)
    }
}

/// Two rows of scores with their maxima (of the first `limit` of each), at least the
/// first `width` of each computed: together where the registers hold both (AVX-512's 32
/// hold two rows of 64 sums, AVX2's 16 two rows of up to 48), one after the other elsewhere.
/// All give the same bits.
#[allow(clippy::too_many_arguments)]
fn two_score_rows(
    simd: Simd,
    q: [&[f32]; 2],
    kt: [&[f32]; 2],
    scale: [f32; 2],
    limit: [usize; 2],
    width: usize,
    s: [&mut [f32; BK]; 2],
) -> [f32; 2] {
    debug_assert!(limit[0] <= width && limit[1] <= width);
    if simd.isa() == Isa::Avx512 {
        return scores_row_pair(simd, q, kt, scale, limit, s);
    }
    if width <= 32 {
        return scores_row_pair_32(simd, q, kt, scale, limit, s);
    }
    if width <= 48 {
        return scores_row_pair_48(simd, q, kt, scale, limit, s);
    }
    let [s0, s1] = s;
    [
        scores_row(simd, q[0], kt[0], scale[0], limit[0], s0),
        scores_row(simd, q[1], kt[1], scale[1], limit[1], s1),
    ]
}

simd_fn! {
    /// `p[c] = exp(s[c] - shift)` for the first `limit` keys; returns their sum. (Whole
    /// chunks of 16 with the keys past `limit` masked off measured 2-3% slower at a
    /// causal tile's lengths than this loop's vector body and remainder, and a pair of
    /// rows in one loop no faster.)
    fn exp_row(s: &[f32; BK], limit: usize, shift: f32, p: &mut [f32; BK]) -> f32 {
        let (s, p) = (&s[..limit], &mut p[..limit]);
        for (p, &x) in p.iter_mut().zip(s) {
            *p = math::exp(x - shift);
        }
        let mut acc = [0f32; 16];
        let chunks = p.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        acc.iter().sum::<f32>() + tail
    }
}

/// `acc = acc * keep + sum_c w[c] * rows[c]` over rows of `D` values, in `G` partial
/// sums (key `c` into sum `c % G`, added pairwise at the end) so that `G * D` values are
/// in flight: with one accumulator a 16-wide head is one chain of dependent adds, one
/// per key.
#[inline(always)]
fn weighted_rows_n<const D: usize, const G: usize>(
    acc: &mut [f32],
    keep: f32,
    w: &[f32],
    rows: &[f32],
) {
    let out: &mut [f32; D] = (&mut acc[..D]).try_into().expect("D values");
    let row = |c: usize| -> &[f32; D] { rows[c * D..(c + 1) * D].try_into().expect("D values") };
    let mut part = [[0f32; D]; G];
    let groups = w.len() / G;
    for g in 0..groups {
        for (j, p) in part.iter_mut().enumerate() {
            let (wc, x) = (w[g * G + j], row(g * G + j));
            for e in 0..D {
                p[e] += wc * x[e];
            }
        }
    }
    for (j, p) in part.iter_mut().enumerate().take(w.len() - groups * G) {
        let (wc, x) = (w[groups * G + j], row(groups * G + j));
        for e in 0..D {
            p[e] += wc * x[e];
        }
    }
    let mut width = G / 2;
    while width > 0 {
        let (low, high) = part.split_at_mut(width);
        for (p, q) in low.iter_mut().zip(&high[..width]) {
            for (a, b) in p.iter_mut().zip(q) {
                *a += b;
            }
        }
        width /= 2;
    }
    for e in 0..D {
        out[e] = out[e] * keep + part[0][e];
    }
}

simd_fn! {
    /// `acc = acc * keep + sum_c w[c] * rows[c]` over rows of `d` values.
    fn weighted_rows(acc: &mut [f32], keep: f32, w: &[f32], rows: &[f32], d: usize) {
        match d {
            16 => weighted_rows_n::<16, 4>(acc, keep, w, rows),
            32 => weighted_rows_n::<32, 2>(acc, keep, w, rows),
            64 => weighted_rows_n::<64, 1>(acc, keep, w, rows),
            _ => {
                let acc = &mut acc[..d];
                acc.iter_mut().for_each(|a| *a *= keep);
                for (c, &wc) in w.iter().enumerate() {
                    for (a, &x) in acc.iter_mut().zip(&rows[c * d..(c + 1) * d]) {
                        *a += wc * x;
                    }
                }
            }
        }
    }
}

/// `out[c] += sum_r w[r * BK + c] * x[r]` over rows of `D` values, `G` keys' sums held in
/// registers while the rows stream past (the keys left over, one at a time). Row `r`'s
/// weights are zero from key `limits[r]` on, and `limits` never decreases (`key_end`):
/// each group of keys skips the rows before the first that sees it, half a causal tile.
#[inline(always)]
fn transposed_rows_n<const D: usize, const G: usize>(
    out: &mut [f32],
    w: &[f32],
    x: &[f32],
    limits: &[usize],
    nk: usize,
) {
    let rows = limits.len();
    let row = |r: usize| -> &[f32; D] { x[r * D..(r + 1) * D].try_into().expect("D values") };
    let mut c = 0;
    while c + G <= nk {
        let mut acc = [[0f32; D]; G];
        for (j, a) in acc.iter_mut().enumerate() {
            *a = out[(c + j) * D..(c + j + 1) * D]
                .try_into()
                .expect("D values");
        }
        for r in first_row_seeing(limits, c)..rows {
            let (xr, wr): (&[f32; D], &[f32; G]) = (
                row(r),
                w[r * BK + c..r * BK + c + G].try_into().expect("G weights"),
            );
            for j in 0..G {
                for e in 0..D {
                    acc[j][e] += wr[j] * xr[e];
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            out[(c + j) * D..(c + j + 1) * D].copy_from_slice(a);
        }
        c += G;
    }
    for c in c..nk {
        let mut acc: [f32; D] = out[c * D..(c + 1) * D].try_into().expect("D values");
        for r in first_row_seeing(limits, c)..rows {
            let (xr, wc) = (row(r), w[r * BK + c]);
            for e in 0..D {
                acc[e] += wc * xr[e];
            }
        }
        out[c * D..(c + 1) * D].copy_from_slice(&acc);
    }
}

/// The first row whose weights reach key `c` (see [`transposed_rows_n`]).
#[inline(always)]
fn first_row_seeing(limits: &[usize], c: usize) -> usize {
    limits.partition_point(|&limit| limit <= c)
}

simd_fn! {
    /// `out[c] += sum_r w[r * BK + c] * x[r]` for the block's `nk` keys, with `w` a tile
    /// of `limits.len()` rows of BK weights, row `r`'s zero from key `limits[r]` on, and
    /// `x` rows of `d` values: a tile's transposed products (`P^T dO` into dV, `dS^T Q`
    /// into dK). Register-blocked over keys, where a rank-1 update per query loaded and
    /// stored every key's row once per query.
    fn transposed_rows(out: &mut [f32], w: &[f32], x: &[f32], limits: &[usize], nk: usize, d: usize) {
        match d {
            16 => transposed_rows_n::<16, 4>(out, w, x, limits, nk),
            32 => transposed_rows_n::<32, 2>(out, w, x, limits, nk),
            64 => transposed_rows_n::<64, 1>(out, w, x, limits, nk),
            _ => {
                for c in 0..nk {
                    let acc = &mut out[c * d..(c + 1) * d];
                    for r in first_row_seeing(limits, c)..limits.len() {
                        let wc = w[r * BK + c];
                        for (a, &xv) in acc.iter_mut().zip(&x[r * d..(r + 1) * d]) {
                            *a += wc * xv;
                        }
                    }
                }
            }
        }
    }
}

simd_fn! {
    /// `ds[c] = p[c] * (dp[c] - dsum) * scale`.
    fn softmax_grad_row(p: &[f32], dp: &[f32], dsum: f32, scale: f32, ds: &mut [f32]) {
        for ((o, &p), &g) in ds.iter_mut().zip(p).zip(dp) {
            *o = p * (g - dsum) * scale;
        }
    }
}

/// `a . b` in 8 partial sums (element `e` into sum `e % 8`) added pairwise: one running
/// sum was a chain of dependent adds as long as the head, once per query row.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut part = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for e in 0..8 {
            part[e] += x[e] * y[e];
        }
    }
    for width in [4, 2, 1] {
        for e in 0..width {
            part[e] += part[e + width];
        }
    }
    part[0] + tail
}

/// `kt[e * BK + c] = k[(c0 + c) * d + e]` for the block's `nk` keys, zero after: a key
/// block, transposed (by the GEMM's packing copy: a scalar loop here was 11% of a small
/// head's backward pass).
fn transpose_block(simd: Simd, k: &[f32], c0: usize, nk: usize, d: usize, kt: &mut [f32]) {
    gemm::transpose_rows(simd, kt, k, d, c0, nk, 0, d, BK);
}

/// Multiplies each weight `(head, i, c0 + c)` by its dropout factor: 0 when dropped,
/// `1 / (1 - p)` when kept.
fn apply_dropout(spec: &AttentionSpec, head: usize, i: usize, c0: usize, w: &mut [f32]) {
    let threshold = spec.drop_threshold();
    let inv_keep = 1.0 / (1.0 - spec.dropout);
    for (c, w) in w.iter_mut().enumerate() {
        let counter = ((head * spec.tq + i) * spec.tk + c0 + c) as u32;
        *w *= if dropout_hash(spec.seed, counter) >= threshold {
            inv_keep
        } else {
            0.0
        };
    }
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
    let block = |head: usize, qb: usize, out: &mut [f32], lse: &mut [f32]| {
        let i0 = qb * BQ;
        let rows = lse.len();
        let q = &q[(head * tq + i0) * d..(head * tq + i0 + rows) * d];
        let kv = head * tk * d..(head + 1) * tk * d;
        let (k, v) = (&k[kv.clone()], &v[kv]);
        let mut kt = vec![0f32; d * BK];
        let (mut s0, mut s1, mut p) = ([0f32; BK], [0f32; BK], [0f32; BK]);
        let mut m = [f32::NEG_INFINITY; BQ];
        let mut l = [0f32; BQ];
        out.fill(0.0);
        let end = spec.key_end(i0 + rows - 1);
        for c0 in (0..end).step_by(BK) {
            let nk = BK.min(end - c0);
            transpose_block(simd, k, c0, nk, d, &mut kt);
            // Rows in pairs, whose scores are taken together (`two_score_rows`).
            for r0 in (0..rows).step_by(2) {
                let pair = [r0, (r0 + 1).min(rows - 1)];
                let limit = pair.map(|r| spec.key_end(i0 + r).saturating_sub(c0).min(nk));
                if limit == [0, 0] {
                    continue;
                }
                let q_rows = pair.map(|r| &q[r * d..(r + 1) * d]);
                let (kts, scale) = ([&kt[..]; 2], [spec.scale; 2]);
                let width = limit[0].max(limit[1]);
                let pair_s = [&mut s0, &mut s1];
                let block_max = two_score_rows(simd, q_rows, kts, scale, limit, width, pair_s);
                let rows_of_pair = if pair[0] == pair[1] { 1 } else { 2 };
                for (j, s) in [&s0, &s1].into_iter().enumerate().take(rows_of_pair) {
                    let (r, limit) = (pair[j], limit[j]);
                    if limit == 0 {
                        continue;
                    }
                    let m_new = m[r].max(block_max[j]);
                    let correction = math::exp(m[r] - m_new);
                    let row_sum = exp_row(simd, s, limit, m_new, &mut p);
                    if spec.dropout > 0.0 {
                        apply_dropout(spec, head, i0 + r, c0, &mut p[..limit]);
                    }
                    let acc = &mut out[r * d..(r + 1) * d];
                    weighted_rows(simd, acc, correction, &p[..limit], &v[c0 * d..], d);
                    l[r] = l[r] * correction + row_sum;
                    m[r] = m_new;
                }
            }
        }
        for r in 0..rows {
            let acc = &mut out[r * d..(r + 1) * d];
            if l[r] > 0.0 {
                let inv = 1.0 / l[r];
                acc.iter_mut().for_each(|a| *a *= inv);
                lse[r] = m[r] + l[r].ln();
            } else {
                acc.fill(0.0);
                lse[r] = f32::NEG_INFINITY;
            }
        }
    };
    // Tasks are (head, query block); chunks never straddle heads.
    out.par_chunks_mut(tq * d)
        .zip(lse.par_chunks_mut(tq))
        .enumerate()
        .for_each(|(head, (out, lse))| {
            out.par_chunks_mut(BQ * d)
                .zip(lse.par_chunks_mut(BQ))
                .enumerate()
                .for_each(|(qb, (out, lse))| block(head, qb, out, lse));
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
    // One task per head, walking its tiles in a fixed order: sums do not depend on the
    // thread count.
    type Grads<'a> = ((&'a mut [f32], &'a mut [f32]), &'a mut [f32]);
    let head_task = |scratch: &mut BackwardScratch, (head, ((dq, dk), dv)): (usize, Grads<'_>)| {
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
        let BackwardScratch {
            kt,
            vt,
            p_tile,
            ds_tile,
        } = scratch;
        let (mut s, mut dp, mut keep) = ([0f32; BK], [0f32; BK], [0f32; BK]);
        for c0 in (0..tk).step_by(BK) {
            let nk = BK.min(tk - c0);
            transpose_block(simd, k, c0, nk, d, kt);
            transpose_block(simd, v, c0, nk, d, vt);
            let keys = c0 * d..(c0 + nk) * d;
            // Queries before `first` see none of these keys (causal).
            let first = (0..tq).find(|&i| spec.key_end(i) > c0).unwrap_or(tq);
            for r0 in (first..tq).step_by(BQ_BACKWARD) {
                let rows = BQ_BACKWARD.min(tq - r0);
                let mut limits = [0; BQ_BACKWARD];
                for r in 0..rows {
                    let i = r0 + r;
                    let p: &mut [f32; BK] = (&mut p_tile[r * BK..(r + 1) * BK])
                        .try_into()
                        .expect("a row of BK");
                    let ds = &mut ds_tile[r * BK..(r + 1) * BK];
                    let limit = spec.key_end(i).saturating_sub(c0).min(nk);
                    limits[r] = limit;
                    p[limit..].fill(0.0);
                    ds[limit..].fill(0.0);
                    if limit == 0 || !lse[i].is_finite() {
                        p[..limit].fill(0.0);
                        ds[..limit].fill(0.0);
                        continue;
                    }
                    let (qi, gi) = (&q[i * d..(i + 1) * d], &go[i * d..(i + 1) * d]);
                    let (kts, scale) = ([&kt[..], &vt[..]], [spec.scale, 1.0]);
                    let pair_s = [&mut s, &mut dp];
                    two_score_rows(simd, [qi, gi], kts, scale, [limit, 0], limit, pair_s);
                    exp_row(simd, &s, limit, lse[i], p);
                    let f = &mut keep[..limit];
                    if spec.dropout > 0.0 {
                        // The same factor scales the weight and its gradient.
                        f.fill(1.0);
                        apply_dropout(spec, head, i, c0, f);
                        for c in 0..limit {
                            dp[c] *= f[c];
                        }
                    }
                    softmax_grad_row(
                        simd,
                        &p[..limit],
                        &dp[..limit],
                        dsum[i],
                        spec.scale,
                        &mut ds[..limit],
                    );
                    if spec.dropout > 0.0 {
                        for c in 0..limit {
                            p[c] *= f[c];
                        }
                    }
                    weighted_rows(
                        simd,
                        &mut dq[i * d..(i + 1) * d],
                        1.0,
                        &ds[..limit],
                        &k[keys.clone()],
                        d,
                    );
                }
                let (g_rows, q_rows) = (&go[r0 * d..], &q[r0 * d..]);
                let limits = &limits[..rows];
                transposed_rows(simd, &mut dv[keys.clone()], p_tile, g_rows, limits, nk, d);
                transposed_rows(simd, &mut dk[keys.clone()], ds_tile, q_rows, limits, nk, d);
            }
        }
    };
    // Scratch per rayon job, not per head: zeroing fresh tiles for each head was 1% of a
    // small transformer's step.
    dq.par_chunks_mut(tq * d)
        .zip(dk.par_chunks_mut(tk * d))
        .zip(dv.par_chunks_mut(tk * d))
        .enumerate()
        .for_each_init(|| BackwardScratch::new(d), head_task);
}

/// A head's working tiles in the backward pass: its key and value blocks transposed, and
/// a tile of up to BQ_BACKWARD query rows x BK keys of the weights (dropped out, as dV
/// needs them) and of the score gradients. Every value is written before it is read.
struct BackwardScratch {
    kt: Vec<f32>,
    vt: Vec<f32>,
    p_tile: Vec<f32>,
    ds_tile: Vec<f32>,
}

impl BackwardScratch {
    fn new(d: usize) -> Self {
        Self {
            kt: vec![0.0; d * BK],
            vt: vec![0.0; d * BK],
            p_tile: vec![0.0; BQ_BACKWARD * BK],
            ds_tile: vec![0.0; BQ_BACKWARD * BK],
        }
    }
}
