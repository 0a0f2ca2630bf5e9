//! The int8 dot products on x86-64: AVX512-VNNI's `vpdpbusd` (unsigned activations times
//! signed weights, four products summed into each 32-bit lane), its 256-bit AVX-VNNI
//! form, and AVX2's `vpmaddwd` on both operands widened to 16 bits (exact: no
//! saturating `vpmaddubsw`).

use super::{Tile, BLOCK, TASK_WIDTH};
use std::arch::x86_64::*;

/// Rows a VNNI tile keeps in registers: 4 rows x 4 blocks = 16 accumulators.
const VNNI_ROWS: usize = 4;

/// Groups of 4 inputs a pass over the rows covers: 4 blocks x 64 groups x 64 bytes =
/// 16 KiB of weights, which stay in L1 while every row meets them (the whole of k, 50
/// KiB for the MNIST MLP's first layer, would stream from L2 once per 4 rows).
const K_GROUPS: usize = 64;

/// A slice of k: groups `g0..g1`, and whether it is the first (sums start from zero)
/// and the last (the unsigned-activation correction is taken off).
#[derive(Clone, Copy)]
struct KSlice {
    g0: usize,
    g1: usize,
    first: bool,
    last: bool,
}

/// # Safety
/// The CPU has AVX512F, AVX512BW and AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn vnni_tile(t: &Tile, sums: &mut [i32]) {
    let rows = t.rows();
    let mut g0 = 0;
    while g0 < t.groups {
        let g1 = (g0 + K_GROUPS).min(t.groups);
        let k = KSlice {
            g0,
            g1,
            first: g0 == 0,
            last: g1 == t.groups,
        };
        let mut r = 0;
        while r < rows {
            let mr = VNNI_ROWS.min(rows - r);
            match (mr, t.blocks) {
                (4, 4) => vnni::<4, 4>(t, r, k, sums),
                (3, 4) => vnni::<3, 4>(t, r, k, sums),
                (2, 4) => vnni::<2, 4>(t, r, k, sums),
                (1, 4) => vnni::<1, 4>(t, r, k, sums),
                (mr, blocks) => {
                    // The last task's 1-3 blocks: one at a time.
                    for b in 0..blocks {
                        let one = Tile {
                            first_block: t.first_block + b,
                            blocks: 1,
                            ..*t
                        };
                        let sums = &mut sums[b * BLOCK..];
                        match mr {
                            4 => vnni::<4, 1>(&one, r, k, sums),
                            3 => vnni::<3, 1>(&one, r, k, sums),
                            2 => vnni::<2, 1>(&one, r, k, sums),
                            _ => vnni::<1, 1>(&one, r, k, sums),
                        }
                    }
                }
            }
            r += mr;
        }
        g0 = g1;
    }
}

/// Rows `r0..r0 + MR` by blocks `first_block..first_block + NB` over the k slice,
/// accumulated in `sums[row * TASK_WIDTH + block * 16]` (relative to the tile's first
/// block).
// The tile of accumulators is walked by rows in one loop and by blocks in another;
// plain indices keep the two alike.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni<const MR: usize, const NB: usize>(t: &Tile, r0: usize, k: KSlice, sums: &mut [i32]) {
    let at = |i: usize, j: usize| (r0 + i) * TASK_WIDTH + j * BLOCK;
    let mut acc = [[_mm512_setzero_si512(); NB]; MR];
    if !k.first {
        for (i, acc) in acc.iter_mut().enumerate() {
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: each row of `sums` holds TASK_WIDTH values, 16 per block.
                *a = unsafe { _mm512_loadu_si512(sums.as_ptr().add(at(i, j)).cast()) };
            }
        }
    }
    let blocks: [&[u8]; NB] = std::array::from_fn(|j| t.block(t.first_block + j));
    let rows: [&[u8]; MR] = std::array::from_fn(|i| t.row(r0 + i));
    for g in k.g0..k.g1 {
        let mut w = [_mm512_setzero_si512(); NB];
        for j in 0..NB {
            // SAFETY: a block holds `groups * 64` bytes.
            w[j] = unsafe { _mm512_loadu_si512(blocks[j].as_ptr().add(g * 64).cast()) };
        }
        for i in 0..MR {
            // SAFETY: a row holds `groups * 4` bytes.
            let quad = unsafe { rows[i].as_ptr().add(g * 4).cast::<i32>().read_unaligned() };
            let a = _mm512_set1_epi32(quad);
            for j in 0..NB {
                acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], a, w[j]);
            }
        }
    }
    for j in 0..NB {
        let first = (t.first_block + j) * BLOCK;
        // SAFETY: `corrections` holds 16 values per block.
        let correction = unsafe { _mm512_loadu_si512(t.corrections.as_ptr().add(first).cast()) };
        for i in 0..MR {
            let v = if k.last {
                _mm512_sub_epi32(acc[i][j], correction)
            } else {
                acc[i][j]
            };
            // SAFETY: each row of `sums` holds TASK_WIDTH values, 16 per block.
            unsafe { _mm512_storeu_si512(sums.as_mut_ptr().add(at(i, j)).cast(), v) };
        }
    }
}

/// Rows an AVX-VNNI tile keeps in registers: 2 rows x 2 blocks x 2 halves = 8 of the 16
/// ymm registers.
const AVX_VNNI_ROWS: usize = 2;

/// # Safety
/// The CPU has AVX-VNNI and AVX2.
#[target_feature(enable = "avx2,avxvnni")]
pub(super) unsafe fn avx_vnni_tile(t: &Tile, sums: &mut [i32]) {
    let rows = t.rows();
    let mut r = 0;
    while r < rows {
        let mr = AVX_VNNI_ROWS.min(rows - r);
        let mut b = 0;
        while b < t.blocks {
            let nb = 2.min(t.blocks - b);
            let sums = &mut sums[b * BLOCK..];
            match (mr, nb) {
                (2, 2) => avx_vnni::<2, 2>(t, t.first_block + b, r, sums),
                (2, _) => avx_vnni::<2, 1>(t, t.first_block + b, r, sums),
                (_, 2) => avx_vnni::<1, 2>(t, t.first_block + b, r, sums),
                _ => avx_vnni::<1, 1>(t, t.first_block + b, r, sums),
            }
            b += nb;
        }
        r += mr;
    }
}

/// Rows `r0..r0 + MR` by blocks `block..block + NB`, each block two ymm halves (outputs
/// 0-7 and 8-15), written at `sums[row * TASK_WIDTH + j * 16]`.
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avx_vnni<const MR: usize, const NB: usize>(
    t: &Tile,
    block: usize,
    r0: usize,
    sums: &mut [i32],
) {
    let mut acc = [[[_mm256_setzero_si256(); 2]; NB]; MR];
    let blocks: [&[u8]; NB] = std::array::from_fn(|j| t.block(block + j));
    let rows: [&[u8]; MR] = std::array::from_fn(|i| t.row(r0 + i));
    for g in 0..t.groups {
        let mut w = [[_mm256_setzero_si256(); 2]; NB];
        for j in 0..NB {
            for h in 0..2 {
                // SAFETY: a block holds `groups * 64` bytes.
                w[j][h] =
                    unsafe { _mm256_loadu_si256(blocks[j].as_ptr().add(g * 64 + h * 32).cast()) };
            }
        }
        for i in 0..MR {
            // SAFETY: a row holds `groups * 4` bytes.
            let quad = unsafe { rows[i].as_ptr().add(g * 4).cast::<i32>().read_unaligned() };
            let a = _mm256_set1_epi32(quad);
            for j in 0..NB {
                for h in 0..2 {
                    acc[i][j][h] = _mm256_dpbusd_avx_epi32(acc[i][j][h], a, w[j][h]);
                }
            }
        }
    }
    for j in 0..NB {
        for h in 0..2 {
            let first = (block + j) * BLOCK + h * 8;
            // SAFETY: `corrections` holds 16 values per block.
            let correction =
                unsafe { _mm256_loadu_si256(t.corrections.as_ptr().add(first).cast()) };
            for i in 0..MR {
                let out = &mut sums[(r0 + i) * TASK_WIDTH + j * BLOCK + h * 8..][..8];
                let exact = _mm256_sub_epi32(acc[i][j][h], correction);
                // SAFETY: `out` holds 8 values.
                unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), exact) };
            }
        }
    }
}

/// Rows an AVX2 tile keeps in registers: 2 rows x 4 registers of a block's sums.
const AVX2_ROWS: usize = 2;

/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn avx2_tile(t: &Tile, sums: &mut [i32]) {
    let rows = t.rows();
    let mut r = 0;
    while r < rows {
        let mr = AVX2_ROWS.min(rows - r);
        for b in 0..t.blocks {
            let block = t.block(t.first_block + b);
            let out = &mut sums[b * BLOCK..];
            match mr {
                2 => avx2::<2>(t, block, r, out),
                _ => avx2::<1>(t, block, r, out),
            }
        }
        r += mr;
    }
}

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn avx2<const MR: usize>(t: &Tile, block: &[u8], r0: usize, sums: &mut [i32]) {
    let rows: [&[i16]; MR] = std::array::from_fn(|i| t.widened_row(r0 + i));
    // acc[i][q]: outputs 4q..4q + 4 of row i, as pairs of partial sums.
    let mut acc = [[_mm256_setzero_si256(); 4]; MR];
    for g in 0..t.groups {
        let mut w = [_mm256_setzero_si256(); 4];
        for (q, w) in w.iter_mut().enumerate() {
            // SAFETY: a block holds `groups * 64` bytes.
            let bytes = unsafe { _mm_loadu_si128(block.as_ptr().add(g * 64 + q * 16).cast()) };
            *w = _mm256_cvtepi8_epi16(bytes);
        }
        for (row, acc) in rows.iter().zip(acc.iter_mut()) {
            // SAFETY: each row holds `groups * 4` values.
            let quad = unsafe { row.as_ptr().add(g * 4).cast::<i64>().read_unaligned() };
            let a = _mm256_set1_epi64x(quad);
            for q in 0..4 {
                acc[q] = _mm256_add_epi32(acc[q], _mm256_madd_epi16(w[q], a));
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let out = &mut sums[(r0 + i) * TASK_WIDTH..][..BLOCK];
        for (q, v) in acc.iter().enumerate() {
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` holds 8 values.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), *v) };
            for p in 0..4 {
                out[q * 4 + p] = lanes[2 * p] + lanes[2 * p + 1];
            }
        }
    }
}

/// `quantize_row` on AVX-512: the largest magnitude and a NaN check in one pass, then
/// `cvtps2dq` (round to nearest even under the default rounding mode, as
/// `round_small`) and a narrowing store. The same bytes and scale as the portable code.
///
/// # Safety
/// The CPU has AVX512F and AVX512BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_row_avx512(row: &[f32], out: &mut [u8]) -> f32 {
    let k = row.len();
    let p = row.as_ptr();
    let tail: __mmask16 = ((1u32 << (k % 16)) - 1) as __mmask16;
    let full = k - k % 16;
    let mut amax = _mm512_setzero_ps();
    let mut nan: __mmask16 = 0;
    let mut i = 0;
    while i < k {
        let mask = if i < full { 0xffff } else { tail };
        // SAFETY: the masked lanes stay below k.
        let v = unsafe { _mm512_maskz_loadu_ps(mask, p.add(i)) };
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        i += 16;
    }
    let amax = _mm512_reduce_max_ps(amax);
    if nan != 0 || !amax.is_finite() {
        return f32::NAN;
    }
    let inv = _mm512_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let offset = _mm512_set1_epi32(128);
    let o = out.as_mut_ptr();
    let mut i = 0;
    while i < k {
        let mask = if i < full { 0xffff } else { tail };
        // SAFETY: the masked lanes stay below k, and `out` holds at least k bytes.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, p.add(i));
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), offset);
            _mm512_mask_cvtepi32_storeu_epi8(o.add(i).cast(), mask, q);
        }
        i += 16;
    }
    amax / 127.0
}
