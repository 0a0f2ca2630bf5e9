//! Packing copies a block of an operand into the order the micro-kernel reads it, so the
//! inner loop streams contiguous memory whatever the operand's strides (transposes
//! included). Panels past the matrix edge are zero-padded: the micro-kernel always
//! computes a full tile and never branches.
//!
//! A panel is `kc` groups of `w` values (`w` = MR for A, NR for B). Depending on the
//! operand's layout, filling it is either a copy (the `w` values of one step of k are
//! contiguous in the source) or a transpose (each of the `w` rows or columns is contiguous
//! along k). Row-major A and a transposed B (a Linear weight `[out, in]`) are the
//! transposing case; it runs through 8x8 register transposes on AVX machines.

use super::MatRef;

/// Packs rows `i0..i0+rows` x columns `p0..p0+kc` of `a` into `dst` (`kc` groups of `mr`).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_a(
    dst: &mut [f32],
    a: &MatRef,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    avx: bool,
) {
    debug_assert!(rows <= mr && dst.len() == kc * mr);
    if a.cs == 1 {
        pack_transposing(dst, a.data, a.rs, i0, rows, p0, kc, mr, avx);
    } else {
        pack_gather(dst, a.data, a.cs, a.rs, p0, kc, i0, rows, mr);
    }
}

/// Packs rows `p0..p0+kc` x columns `j0..j0+cols` of `b` into `dst` (`kc` groups of `nr`).
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
    if b.rs == 1 && b.cs != 1 {
        pack_transposing(dst, b.data, b.cs, j0, cols, p0, kc, nr, avx);
    } else {
        pack_gather(dst, b.data, b.rs, b.cs, p0, kc, j0, cols, nr);
    }
}

/// Packs rows `p0..p0+kc` x columns `j0..j0+cols` of a row-major `b` (`cs == 1`) into
/// consecutive panels of `kc` groups of `nr`, as [`pack_b`] would one panel at a time.
/// It walks B's rows eight at a time: packing panel by panel reads `kc` rows a row apart
/// for each 64 bytes, a page apart once rows are 1024 floats, and the TLB misses cost
/// 10% of a 1024^3 product on Zen 3 (`perf`: `pack_gather` at 9.7%).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_b_rows(
    dst: &mut [f32],
    b: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
    avx: bool,
) {
    debug_assert!(b.cs == 1 && dst.len() == cols.div_ceil(nr) * nr * kc);
    let block = RowBlock {
        b,
        p0,
        kc,
        j0,
        cols,
    };
    #[cfg(target_arch = "x86_64")]
    if avx && cols >= nr && matches!(nr, 16 | 32) {
        // SAFETY: the caller vouches for AVX; the slices bound every access (checked below).
        unsafe {
            if nr == 16 {
                pack_b_rows_avx::<2>(dst, &block);
            } else {
                pack_b_rows_avx::<4>(dst, &block);
            }
        }
        return;
    }
    let _ = avx;
    pack_b_rows_from(dst, &block, nr, 0);
}

/// Rows `p0..p0+kc` x columns `j0..j0+cols` of a row-major B, for [`pack_b_rows`].
struct RowBlock<'a> {
    b: &'a MatRef<'a>,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
}

/// [`pack_b_rows`] from panel `first` on, with copies of four floats.
fn pack_b_rows_from(dst: &mut [f32], block: &RowBlock, nr: usize, first: usize) {
    let (b, p0, kc, j0, cols) = (block.b, block.p0, block.kc, block.j0, block.cols);
    // Eight rows at a time, panel by panel: each panel then takes 8 contiguous groups,
    // where one row at a time writes one group to each panel in turn, panels 16 KiB
    // apart, which all fall in one set of L1 (`perf annotate`: 80% of the time on the
    // two stores).
    for pb in (0..kc).step_by(PACK_ROWS) {
        let rows = PACK_ROWS.min(kc - pb);
        for q in first..cols.div_ceil(nr) {
            let width = nr.min(cols - q * nr);
            for p in pb..pb + rows {
                let src = &b.data[(p0 + p) * b.rs + j0 + q * nr..][..width];
                let group = &mut dst[(q * kc + p) * nr..][..nr];
                copy_short(&mut group[..width], src);
                group[width..].fill(0.0);
            }
        }
    }
}

/// Rows of B that [`pack_b_rows`] walks at a time.
const PACK_ROWS: usize = 8;

/// [`pack_b_rows`] for panels of `VECS` x 8 floats, its full panels with 8-wide moves
/// (where copies of four were 6% of a 256^3 product on Zen 3), the partial last panel by
/// [`pack_b_rows_from`]. The width is a constant so the moves unroll: a loop over a
/// run-time width is a copy that LLVM turns into a call of `memcpy`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn pack_b_rows_avx<const VECS: usize>(dst: &mut [f32], block: &RowBlock) {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_storeu_ps};
    let (b, p0, kc, j0, cols) = (block.b, block.p0, block.kc, block.j0, block.cols);
    let nr = 8 * VECS;
    let full = cols / nr;
    // Every row's first element and a full panel's last: then each group's reads lie in
    // `b.data` and each panel's writes in `dst`.
    let last_read = (p0 + kc - 1) * b.rs + j0 + full * nr;
    assert!(kc > 0 && last_read <= b.data.len() && full * nr * kc <= dst.len());
    let (src, out) = (b.data.as_ptr(), dst.as_mut_ptr());
    for pb in (0..kc).step_by(PACK_ROWS) {
        for q in 0..full {
            for p in pb..(pb + PACK_ROWS).min(kc) {
                // SAFETY: in bounds by the assertion above; AVX by the caller.
                unsafe {
                    let from = src.add((p0 + p) * b.rs + j0 + q * nr);
                    let to = out.add((q * kc + p) * nr);
                    for v in 0..VECS {
                        _mm256_storeu_ps(to.add(8 * v), _mm256_loadu_ps(from.add(8 * v)));
                    }
                }
            }
        }
    }
    if full * nr < cols {
        pack_b_rows_from(dst, block, nr, full);
    }
}

/// `dst[p*w + r] = data[(p0+p)*step_stride + (r0+r)*lane_stride]`: one group per step of
/// k; a copy when `lane_stride == 1`, any strides otherwise.
#[allow(clippy::too_many_arguments)]
fn pack_gather(
    dst: &mut [f32],
    data: &[f32],
    step_stride: usize,
    lane_stride: usize,
    p0: usize,
    kc: usize,
    r0: usize,
    lanes: usize,
    w: usize,
) {
    for (p, group) in dst.chunks_exact_mut(w).take(kc).enumerate() {
        let base = (p0 + p) * step_stride + r0 * lane_stride;
        if lane_stride == 1 {
            copy_short(&mut group[..lanes], &data[base..base + lanes]);
        } else {
            for (r, v) in group[..lanes].iter_mut().enumerate() {
                *v = data[base + r * lane_stride];
            }
        }
        group[lanes..].fill(0.0);
    }
}

/// `dst.copy_from_slice(src)` for a panel's row (a micro-kernel's width, 4 to 32
/// floats) as copies of four: each is inlined, where one copy of a whole row (up to 128
/// bytes, past what the compiler inlines) called `memmove`, which cost a tenth of a small
/// transformer's step.
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let (d4, s4) = (dst.chunks_exact_mut(4), src.chunks_exact(4));
    let (dt, st) = (d4.into_remainder(), s4.remainder());
    dt.copy_from_slice(st);
    for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
        let d: &mut [f32; 4] = d.try_into().expect("chunks of 4");
        *d = s.try_into().expect("chunks of 4");
    }
}

/// `dst[p*w + r] = data[(r0+r)*stride + p0 + p]`: each of the `rows` source rows is
/// contiguous along k and lands strided in the panel. `avx` allows the AVX path; the
/// caller vouches that the CPU has AVX.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_transposing(
    dst: &mut [f32],
    data: &[f32],
    stride: usize,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    w: usize,
    avx: bool,
) {
    if rows < w {
        dst.fill(0.0);
    }
    if rows == 0 || kc == 0 {
        return;
    }
    // Every read below is at most this index; checking it once lets the AVX path skip
    // per-element checks.
    let last = (r0 + rows - 1)
        .checked_mul(stride)
        .and_then(|s| s.checked_add(p0 + kc));
    assert!(last.is_some_and(|l| l <= data.len()) && dst.len() >= kc * w);
    #[cfg(target_arch = "x86_64")]
    if avx {
        // SAFETY: bounds asserted above; the caller vouches for AVX.
        unsafe { transpose_avx(dst, data, stride, r0, rows, p0, kc, w) };
        return;
    }
    let _ = avx;
    for r in 0..rows {
        let src = &data[(r0 + r) * stride + p0..][..kc];
        for (p, &v) in src.iter().enumerate() {
            dst[p * w + r] = v;
        }
    }
}

/// The AVX body of [`pack_transposing`]: blocks of 8 source rows x 8 steps of k go
/// through an in-register 8x8 transpose, so 64 values cost 8 contiguous loads and 8
/// contiguous stores instead of 64 scattered stores.
///
/// # Safety
/// The CPU supports AVX; every index up to `(r0+rows-1)*stride + p0 + kc` is in `data`;
/// `dst` holds `kc * w` values, already zeroed past `rows` when `rows < w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[allow(clippy::too_many_arguments)]
unsafe fn transpose_avx(
    dst: &mut [f32],
    data: &[f32],
    stride: usize,
    r0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    w: usize,
) {
    use std::arch::x86_64::*;
    let src = data.as_ptr();
    let out = dst.as_mut_ptr();
    let full_k = kc / 8 * 8;
    // Lane i of `LANES[8 - width..]` is set for i < width.
    const LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    for rb in (0..rows).step_by(8) {
        let block_rows = (rows - rb).min(8);
        let width = (w - rb).min(8);
        // SAFETY: 8 - width + 8 <= 16 values of LANES.
        let mask = unsafe { _mm256_loadu_si256(LANES[8 - width..].as_ptr().cast()) };
        for p in (0..full_k).step_by(8) {
            // The rows of the next panel (the caller's next call), a line of each per two
            // blocks: A's rows are read a slice of k at a time, too short a stream for the
            // hardware's prefetchers, and the loads missed to memory at 1024^3. Only a
            // hint: past the operand's end it does nothing.
            if p % 16 == 0 {
                for q in 0..block_rows {
                    let next = src.wrapping_add((r0 + rows + rb + q) * stride + p0 + p);
                    _mm_prefetch::<_MM_HINT_T0>(next.cast());
                }
            }
            // SAFETY: see the function's contract; rows past `block_rows` read as zero.
            unsafe {
                let row = |q: usize| {
                    if q < block_rows {
                        _mm256_loadu_ps(src.add((r0 + rb + q) * stride + p0 + p))
                    } else {
                        _mm256_setzero_ps()
                    }
                };
                let (r0v, r1v, r2v, r3v) = (row(0), row(1), row(2), row(3));
                let (r4v, r5v, r6v, r7v) = (row(4), row(5), row(6), row(7));
                let t0 = _mm256_unpacklo_ps(r0v, r1v);
                let t1 = _mm256_unpackhi_ps(r0v, r1v);
                let t2 = _mm256_unpacklo_ps(r2v, r3v);
                let t3 = _mm256_unpackhi_ps(r2v, r3v);
                let t4 = _mm256_unpacklo_ps(r4v, r5v);
                let t5 = _mm256_unpackhi_ps(r4v, r5v);
                let t6 = _mm256_unpacklo_ps(r6v, r7v);
                let t7 = _mm256_unpackhi_ps(r6v, r7v);
                let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let cols = [
                    _mm256_permute2f128_ps::<0x20>(s0, s4),
                    _mm256_permute2f128_ps::<0x20>(s1, s5),
                    _mm256_permute2f128_ps::<0x20>(s2, s6),
                    _mm256_permute2f128_ps::<0x20>(s3, s7),
                    _mm256_permute2f128_ps::<0x31>(s0, s4),
                    _mm256_permute2f128_ps::<0x31>(s1, s5),
                    _mm256_permute2f128_ps::<0x31>(s2, s6),
                    _mm256_permute2f128_ps::<0x31>(s3, s7),
                ];
                for (t, v) in cols.into_iter().enumerate() {
                    let at = out.add((p + t) * w + rb);
                    if width == 8 {
                        _mm256_storeu_ps(at, v);
                    } else if width == 4 {
                        // The last 4 rows of an MR = 12 panel: one 128-bit store (a copy
                        // of a variable length here was a call to memcpy per column).
                        _mm_storeu_ps(at, _mm256_castps256_ps128(v));
                    } else if width == 6 {
                        // MR = 6 (AVX2): 4 lanes and 2, as plain stores; a masked store
                        // is slow on AMD (microcoded on Zen 2 and 3).
                        _mm_storeu_ps(at, _mm256_castps256_ps128(v));
                        let hi = _mm256_extractf128_ps::<1>(v);
                        _mm_storel_pd(at.add(4).cast(), _mm_castps_pd(hi));
                    } else {
                        // Any other width under 8: a masked store, where a copy of the
                        // first `width` lanes was a call to memcpy per column.
                        _mm256_maskstore_ps(at, mask, v);
                    }
                }
            }
        }
        for q in 0..block_rows {
            for p in full_k..kc {
                dst[p * w + rb + q] = data[(r0 + rb + q) * stride + p0 + p];
            }
        }
    }
}
