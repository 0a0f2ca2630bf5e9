//! Sums. Floating-point addition is not associative, so the compiler will not vectorise a
//! running sum by itself: the kernels keep 16 explicit partial sums instead. The order of
//! additions is fixed by the code, so results are the same on every instruction set and
//! thread count.

use super::elementwise::{parallel, PAR_CHUNK};
use super::isa::simd_fn;
use super::Simd;
use rayon::prelude::*;

const LANES: usize = 16;

simd_fn! {
    /// Sum of a contiguous slice.
    pub(crate) fn sum(x: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        // Pairwise fold of the lanes, then the tail, in a fixed order.
        let mut width = LANES / 2;
        while width > 0 {
            for i in 0..width {
                acc[i] += acc[i + width];
            }
            width /= 2;
        }
        tail.iter().fold(acc[0], |s, &v| s + v)
    }
}

simd_fn! {
    /// `out[i] += x[i]`.
    pub(crate) fn add_assign(out: &mut [f32], x: &[f32]) {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o += v);
    }
}

simd_fn! {
    fn count_nonfinite_flat(x: &[f32]) -> usize {
        // By the exponent bits, in u32 lanes (16 to an AVX-512 register); a chunk's count
        // fits a u32.
        x.chunks(1 << 30)
            .map(|c| {
                c.iter()
                    .map(|v| u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000))
                    .sum::<u32>() as usize
            })
            .sum()
    }
}

/// Infinite and NaN elements of `x`, in one pass without a mask. One thread: a pass
/// this light is bound by memory, and a fork per gradient cost more than it saved.
pub(crate) fn count_nonfinite(simd: Simd, x: &[f32]) -> usize {
    count_nonfinite_flat(simd, x)
}

/// `out[o, i] = sum_a x[o, a, i]` for `x` viewed as `[outer, axis, inner]`.
pub(crate) fn sum_axis(
    simd: Simd,
    x: &[f32],
    out: &mut [f32],
    outer: usize,
    axis: usize,
    inner: usize,
) {
    debug_assert_eq!(out.len(), outer * inner);
    if out.is_empty() {
        return;
    }
    if inner == 1 {
        let row_sum = |(o, r): (usize, &mut f32)| *r = sum(simd, &x[o * axis..(o + 1) * axis]);
        if parallel(x.len()) {
            out.par_iter_mut()
                .enumerate()
                .with_min_len((PAR_CHUNK / axis.max(1)).max(1))
                .for_each(row_sum);
        } else {
            out.iter_mut().enumerate().for_each(row_sum);
        }
        return;
    }
    // A narrow `inner` over a long axis: whole rows accumulated in blocks of the axis,
    // each block's sum a task, then the blocks added in order. The blocks depend on the
    // shape alone, so the bits do not depend on the thread count. Splitting such rows
    // across `inner` read each a piece of 64 floats at a time and ran slower on 2 threads
    // than on 1 (a GPT step's bias gradients, [1024, 64..256]: 1.5x the time, Zen 3).
    let rows = (PAR_CHUNK / inner).max(MIN_BLOCK_ROWS);
    if x.len() >= 2 * PAR_CHUNK && inner < BLOCK_ROWS_MAX_INNER && axis > rows {
        sum_axis_by_row_blocks(simd, x, out, axis, inner, rows);
        return;
    }
    // Otherwise each column is summed over the whole axis in order, across pieces of the
    // columns (contiguous runs of at least 1024 floats of each row) when in parallel.
    let columns = |(start, dst): (usize, &mut [f32])| {
        let (o, i0) = (start / inner, start % inner);
        dst.fill(0.0);
        for a in 0..axis {
            let at = (o * axis + a) * inner + i0;
            add_assign(simd, dst, &x[at..at + dst.len()]);
        }
    };
    let piece = if parallel(x.len()) {
        (PAR_CHUNK / axis.max(1)).max(1024).min(inner)
    } else {
        inner
    };
    let pieces: Vec<(usize, &mut [f32])> = out
        .chunks_mut(inner)
        .enumerate()
        .flat_map(|(o, row)| {
            row.chunks_mut(piece)
                .enumerate()
                .map(move |(p, c)| (o * inner + p * piece, c))
        })
        .collect();
    if parallel(x.len()) {
        pieces.into_par_iter().for_each(columns);
    } else {
        pieces.into_iter().for_each(columns);
    }
}

/// Rows of the axis that one block of [`sum_axis_by_row_blocks`] takes at the least.
const MIN_BLOCK_ROWS: usize = 16;
/// The widest `inner` summed by blocks of rows: a block's sums (16 KiB) stay in L1.
const BLOCK_ROWS_MAX_INNER: usize = 4096;

/// [`sum_axis`] by blocks of `rows` whole rows of the axis, one task each.
fn sum_axis_by_row_blocks(
    simd: Simd,
    x: &[f32],
    out: &mut [f32],
    axis: usize,
    inner: usize,
    rows: usize,
) {
    let blocks = axis.div_ceil(rows);
    let outer = out.len() / inner;
    let mut partials = vec![0f32; outer * blocks * inner];
    let block_sum = |(t, dst): (usize, &mut [f32])| {
        let (o, b) = (t / blocks, t % blocks);
        let a0 = o * axis + b * rows;
        let a1 = o * axis + ((b + 1) * rows).min(axis);
        // Summed into a buffer of the task's own: the blocks' partial sums share cache
        // lines at their edges, and adding each row into them in place ran 3x slower on
        // 2 threads than on 1 ([8192, 10]), the lines bouncing between the cores.
        let mut acc = vec![0f32; inner];
        column_sums(simd, &x[a0 * inner..a1 * inner], &mut acc);
        dst.copy_from_slice(&acc);
    };
    // Twice the elementwise threshold: a sum is one add per value, and [1024, 64] (5 us)
    // ran 4-14% slower on 2 threads than on 1 (Zen 4, `op_threads`), its halves too
    // short to pay for the hand-off; [2048, 64] ran 2.7-3.8x faster.
    if parallel(x.len() / 2) {
        partials
            .par_chunks_mut(inner)
            .enumerate()
            .for_each(block_sum);
    } else {
        partials.chunks_mut(inner).enumerate().for_each(block_sum);
    }
    for (dst, block) in out.chunks_mut(inner).zip(partials.chunks(blocks * inner)) {
        dst.fill(0.0);
        for part in block.chunks(inner) {
            add_assign(simd, dst, part);
        }
    }
}

/// `dst[i] = sum_r x[r * dst.len() + i]`, rows in order.
fn column_sums(simd: Simd, x: &[f32], dst: &mut [f32]) {
    dst.fill(0.0);
    for row in x.chunks_exact(dst.len()) {
        add_assign(simd, dst, row);
    }
}
