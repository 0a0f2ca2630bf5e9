//! Packing copies a block of an operand into the order the micro-kernel reads it, so the
//! inner loop streams contiguous memory whatever the operand's strides (transposes
//! included). Panels past the matrix edge are zero-padded: the micro-kernel always
//! computes a full tile and never branches.

use super::MatRef;

/// Packs rows `i0..i0+rows` x columns `p0..p0+kc` of `a` as `kc` groups of `mr` values
/// (column `p` of the panel is `dst[p*mr..(p+1)*mr]`).
pub(super) fn pack_a(
    dst: &mut [f32],
    a: &MatRef,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    mr: usize,
) {
    debug_assert!(rows <= mr && dst.len() == kc * mr);
    if a.cs == 1 {
        // Rows are contiguous: read along them, scatter into the panel.
        for i in 0..rows {
            let row = &a.data[(i0 + i) * a.rs + p0..][..kc];
            for (p, &v) in row.iter().enumerate() {
                dst[p * mr + i] = v;
            }
        }
        if rows < mr {
            for col in dst.chunks_exact_mut(mr) {
                col[rows..].fill(0.0);
            }
        }
    } else {
        for (p, col) in dst.chunks_exact_mut(mr).enumerate() {
            let base = (p0 + p) * a.cs + i0 * a.rs;
            for (i, v) in col[..rows].iter_mut().enumerate() {
                *v = a.data[base + i * a.rs];
            }
            col[rows..].fill(0.0);
        }
    }
}

/// Packs rows `p0..p0+kc` x columns `j0..j0+cols` of `b` as `kc` groups of `nr` values
/// (row `p` of the panel is `dst[p*nr..(p+1)*nr]`). `avx` allows the AVX transposing
/// path; the caller vouches that the CPU has AVX.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b(
    dst: &mut [f32],
    b: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
    avx: bool,
) {
    debug_assert!(cols <= nr && dst.len() == kc * nr);
    if b.cs == 1 {
        for (p, row) in dst.chunks_exact_mut(nr).enumerate() {
            row[..cols].copy_from_slice(&b.data[(p0 + p) * b.rs + j0..][..cols]);
            row[cols..].fill(0.0);
        }
    } else {
        // Columns are contiguous (a transposed operand, e.g. a Linear weight [out, in]).
        #[cfg(target_arch = "x86_64")]
        if avx && b.rs == 1 && nr % 8 == 0 {
            // SAFETY: the caller vouches for AVX; bounds are checked inside.
            unsafe { transpose_pack_avx(dst, b, p0, kc, j0, cols, nr) };
            return;
        }
        let _ = avx;
        for j in 0..cols {
            let base = j0 * b.cs + j * b.cs + p0 * b.rs;
            for p in 0..kc {
                dst[p * nr + j] = b.data[base + p * b.rs];
            }
        }
        if cols < nr {
            for row in dst.chunks_exact_mut(nr) {
                row[cols..].fill(0.0);
            }
        }
    }
}

/// `dst[p*nr + j] = b[(p0+p), (j0+j)]` for a B whose columns are contiguous (`rs == 1`),
/// eight columns by eight rows at a time through an in-register 8x8 transpose: eight
/// contiguous loads and eight contiguous stores per 64 values instead of 64 scattered
/// stores. Edges (a partial group of columns or rows) take the scalar path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_pack_avx(dst: &mut [f32], b: &MatRef, p0: usize, kc: usize, j0: usize, cols: usize, nr: usize) {
    use std::arch::x86_64::*;
    debug_assert_eq!(b.rs, 1);
    let full_cols = cols / 8 * 8;
    let full_rows = kc / 8 * 8;
    // The farthest element any 8x8 block touches, checked once so the blocks need not be.
    if full_cols > 0 && full_rows > 0 {
        let last = (j0 + full_cols - 1) * b.cs + p0 + full_rows - 1;
        assert!(last < b.data.len() && dst.len() >= kc * nr && full_cols <= nr);
    }
    let src = b.data.as_ptr();
    let out = dst.as_mut_ptr();
    for j in (0..full_cols).step_by(8) {
        for p in (0..full_rows).step_by(8) {
            // SAFETY: bounds asserted above; AVX vouched for by the caller.
            unsafe {
                let row = |q: usize| _mm256_loadu_ps(src.add((j0 + j + q) * b.cs + p0 + p));
                let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
                let t0 = _mm256_unpacklo_ps(r0, r1);
                let t1 = _mm256_unpackhi_ps(r0, r1);
                let t2 = _mm256_unpacklo_ps(r2, r3);
                let t3 = _mm256_unpackhi_ps(r2, r3);
                let t4 = _mm256_unpacklo_ps(r4, r5);
                let t5 = _mm256_unpackhi_ps(r4, r5);
                let t6 = _mm256_unpacklo_ps(r6, r7);
                let t7 = _mm256_unpackhi_ps(r6, r7);
                let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let store = |t: usize, v: __m256| _mm256_storeu_ps(out.add((p + t) * nr + j), v);
                store(0, _mm256_permute2f128_ps::<0x20>(s0, s4));
                store(1, _mm256_permute2f128_ps::<0x20>(s1, s5));
                store(2, _mm256_permute2f128_ps::<0x20>(s2, s6));
                store(3, _mm256_permute2f128_ps::<0x20>(s3, s7));
                store(4, _mm256_permute2f128_ps::<0x31>(s0, s4));
                store(5, _mm256_permute2f128_ps::<0x31>(s1, s5));
                store(6, _mm256_permute2f128_ps::<0x31>(s2, s6));
                store(7, _mm256_permute2f128_ps::<0x31>(s3, s7));
            }
        }
        for p in full_rows..kc {
            for q in 0..8 {
                dst[p * nr + j + q] = b.data[(j0 + j + q) * b.cs + p0 + p];
            }
        }
    }
    for j in full_cols..cols {
        for p in 0..kc {
            dst[p * nr + j] = b.data[(j0 + j) * b.cs + p0 + p];
        }
    }
    if cols < nr {
        for row in dst.chunks_exact_mut(nr) {
            row[cols..].fill(0.0);
        }
    }
}
