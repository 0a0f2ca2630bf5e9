//! 2x2 max pooling at stride 2 without padding, the pooling of nearly every CNN, one output
//! row at a time with explicit SIMD: the compiler does not vectorise the portable loop
//! (each window reads a pair of neighbours from two rows: a stride-2 deinterleave), which
//! left this pass at about 1.8 ns per input element, a seventh of a CNN step.
//!
//! Every path compares the four taps in the same order with the same rule (the later
//! wins if larger, or if it is NaN and the earlier is not: the first maximum, NaN
//! propagating), so all give the same values and positions.

use super::{Isa, Simd};

/// The later of two candidates wins if it is larger, or NaN where the earlier is not.
#[inline(always)]
fn pick((v0, p0): (f32, f32), (v1, p1): (f32, f32)) -> (f32, f32) {
    let later = (v1 > v0) | (v1.is_nan() & !v0.is_nan());
    if later {
        (v1, p1)
    } else {
        (v0, p0)
    }
}

/// Windows `from..` of one output row, one at a time.
fn row_portable(top: &[f32], bottom: &[f32], y: &mut [f32], at: &mut [f32], from: usize) {
    for q in from..y.len() {
        let first = pick((top[2 * q], 0.0), (top[2 * q + 1], 1.0));
        let second = pick((bottom[2 * q], 2.0), (bottom[2 * q + 1], 3.0));
        (y[q], at[q]) = pick(first, second);
    }
}

/// The CPU supports AVX-512F; `top` and `bottom` hold at least `2 * y.len()` values and
/// `at` as many as `y`. Every window, the last (or only: rows are often 7 or 14 windows
/// wide) group of 16 through masked loads and stores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(top: &[f32], bottom: &[f32], y: &mut [f32], at: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let pick = |(v0, p0): (__m512, __m512), (v1, p1): (__m512, __m512)| {
        let larger = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v1, v0);
        let nan1 = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v1, v1);
        let nan0 = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v0, v0);
        let later = larger | (nan1 & !nan0);
        (
            _mm512_mask_blend_ps(later, v0, v1),
            _mm512_mask_blend_ps(later, p0, p1),
        )
    };
    let tap = |i: f32| _mm512_set1_ps(i);
    let lanes = |n: usize| -> u16 {
        if n >= 16 {
            u16::MAX
        } else {
            (1u16 << n) - 1
        }
    };
    for q in (0..y.len()).step_by(16) {
        let windows = (y.len() - q).min(16);
        let (lo_mask, hi_mask) = (lanes(2 * windows), lanes((2 * windows).saturating_sub(16)));
        // SAFETY: the masks cover only values 2q .. 2(q + windows) of each row and
        // q .. q + windows of y and at, all in bounds; masked-off lanes are not touched.
        unsafe {
            let pair = |row: &[f32]| {
                let lo = _mm512_maskz_loadu_ps(lo_mask, row.as_ptr().wrapping_add(2 * q));
                let hi = _mm512_maskz_loadu_ps(hi_mask, row.as_ptr().wrapping_add(2 * q + 16));
                (
                    _mm512_permutex2var_ps(lo, even, hi),
                    _mm512_permutex2var_ps(lo, odd, hi),
                )
            };
            let (t0, t1) = pair(top);
            let (b0, b1) = pair(bottom);
            let first = pick((t0, tap(0.0)), (t1, tap(1.0)));
            let second = pick((b0, tap(2.0)), (b1, tap(3.0)));
            let (v, p) = pick(first, second);
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(q), lanes(windows), v);
            _mm512_mask_storeu_ps(at.as_mut_ptr().add(q), lanes(windows), p);
        }
    }
    y.len()
}

/// The CPU supports AVX2; as [`row_avx512`], 8 windows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(top: &[f32], bottom: &[f32], y: &mut [f32], at: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    // Lane i of `LANES[8 - n..]` is set for i < n.
    const LANES: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
    // SAFETY (all three): 8 - n.min(8) + 8 <= 16 values of LANES.
    let lanes = |n: usize| unsafe { _mm256_loadu_si256(LANES[8 - n.min(8)..].as_ptr().cast()) };
    let pick = |(v0, p0): (__m256, __m256), (v1, p1): (__m256, __m256)| {
        let larger = _mm256_cmp_ps::<_CMP_GT_OQ>(v1, v0);
        let nan1 = _mm256_cmp_ps::<_CMP_UNORD_Q>(v1, v1);
        let nan0 = _mm256_cmp_ps::<_CMP_UNORD_Q>(v0, v0);
        let later = _mm256_or_ps(larger, _mm256_andnot_ps(nan0, nan1));
        (
            _mm256_blendv_ps(v0, v1, later),
            _mm256_blendv_ps(p0, p1, later),
        )
    };
    let tap = |i: f32| _mm256_set1_ps(i);
    for q in (0..y.len()).step_by(8) {
        let windows = (y.len() - q).min(8);
        let (lo_mask, hi_mask) = (lanes(2 * windows), lanes((2 * windows).saturating_sub(8)));
        // SAFETY: as in row_avx512, with 8 windows.
        unsafe {
            let pair = |row: &[f32]| {
                let lo = _mm256_maskload_ps(row.as_ptr().wrapping_add(2 * q), lo_mask);
                let hi = _mm256_maskload_ps(row.as_ptr().wrapping_add(2 * q + 8), hi_mask);
                // Within each 128-bit lane: [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6]; then
                // the 64-bit quarters in order 0, 2, 1, 3.
                let ev = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
                let od = _mm256_shuffle_ps::<0b11_01_11_01>(lo, hi);
                let fix = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                (fix(ev), fix(od))
            };
            let (t0, t1) = pair(top);
            let (b0, b1) = pair(bottom);
            let first = pick((t0, tap(0.0)), (t1, tap(1.0)));
            let second = pick((b0, tap(2.0)), (b1, tap(3.0)));
            let (v, p) = pick(first, second);
            let out = lanes(windows);
            _mm256_maskstore_ps(y.as_mut_ptr().add(q), out, v);
            _mm256_maskstore_ps(at.as_mut_ptr().add(q), out, p);
        }
    }
    y.len()
}

/// One plane: `src` rows of `w` values into `ys` and `args` rows of `ow`.
pub(crate) fn plane(
    simd: Simd,
    src: &[f32],
    w: usize,
    ys: &mut [f32],
    args: &mut [f32],
    ow: usize,
) {
    if ow == 0 {
        return;
    }
    for (o, (yrow, arow)) in ys.chunks_mut(ow).zip(args.chunks_mut(ow)).enumerate() {
        let top = &src[2 * o * w..][..2 * ow];
        let bottom = &src[(2 * o + 1) * w..][..2 * ow];
        let done = match simd.isa() {
            // SAFETY: a `Simd` holding this Isa exists only if the CPU supports it; each
            // row holds 2 * ow values.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { row_avx512(top, bottom, yrow, arow) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => unsafe { row_avx2(top, bottom, yrow, arow) },
            _ => 0,
        };
        row_portable(top, bottom, yrow, arow, done);
    }
}
