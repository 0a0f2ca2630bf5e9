//! One row times a matrix whose columns are contiguous (`x W^T` for a weight stored
//! `[n, k]`, a linear layer on one input): n dot products that read W once. Packing W
//! into panels, as the blocked GEMM does, would cost more than the product itself.
//! Each output is one task's dot product, summed in a fixed order per instruction set,
//! so the bits do not depend on the thread count.

use super::{Epilogue, Simd, PARALLEL_MIN_MACS};
use crate::cpu::Isa;
use rayon::prelude::*;

/// Columns per task when the product is split across threads.
const COLUMNS_PER_TASK: usize = 64;

/// `c[j] = epilogue(alpha * dot(x, w[j]) + beta * c[j])` for the `n` columns `w[j] =
/// b[j * ldb..][..k]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn row_times_columns(
    simd: Simd,
    n: usize,
    k: usize,
    alpha: f32,
    x: &[f32],
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    epilogue: Epilogue,
) {
    let x = &x[..k];
    let chunk = |first: usize, c: &mut [f32]| {
        for (i, out) in c.iter_mut().enumerate() {
            let j = first + i;
            let d = dot(simd, x, &b[j * ldb..][..k]);
            let z = if beta == 0.0 {
                alpha * d
            } else {
                alpha * d + beta * *out
            };
            *out = epilogue.apply(z, j);
        }
    };
    let c = &mut c[..n];
    if n * k >= PARALLEL_MIN_MACS && n > COLUMNS_PER_TASK && rayon::current_num_threads() > 1 {
        c.par_chunks_mut(COLUMNS_PER_TASK)
            .enumerate()
            .for_each(|(t, c)| chunk(t * COLUMNS_PER_TASK, c));
    } else {
        chunk(0, c);
    }
}

fn dot(simd: Simd, x: &[f32], w: &[f32]) -> f32 {
    match simd.isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an AVX-512 `Simd` exists only where the CPU has AVX512F.
        Isa::Avx512 => unsafe { x86::dot_avx512(x, w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an AVX2 `Simd` exists only where the CPU has AVX2 and FMA.
        Isa::Avx2Fma => unsafe { x86::dot_avx2(x, w) },
        _ => dot_portable(x, w),
    }
}

/// Eight interleaved partial sums (which the compiler vectorizes), then their sum.
fn dot_portable(x: &[f32], w: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (a, b) in xc.zip(wc) {
        for i in 0..8 {
            acc[i] = a[i].mul_add(b[i], acc[i]);
        }
    }
    let mut tail = 0f32;
    for (a, b) in xr.iter().zip(wr) {
        tail = a.mul_add(*b, tail);
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX512F; `x` and `w` have the same length.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot_avx512(x: &[f32], w: &[f32]) -> f32 {
        let k = x.len();
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= k {
            for (q, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 16q + 16 <= k.
                let (xv, wv) = unsafe {
                    (
                        _mm512_loadu_ps(xp.add(i + 16 * q)),
                        _mm512_loadu_ps(wp.add(i + 16 * q)),
                    )
                };
                *a = _mm512_fmadd_ps(xv, wv, *a);
            }
            i += 64;
        }
        while i + 16 <= k {
            // SAFETY: i + 16 <= k.
            let (xv, wv) = unsafe { (_mm512_loadu_ps(xp.add(i)), _mm512_loadu_ps(wp.add(i))) };
            acc[0] = _mm512_fmadd_ps(xv, wv, acc[0]);
            i += 16;
        }
        if i < k {
            let mask: __mmask16 = (1u32 << (k - i)).wrapping_sub(1) as __mmask16;
            // SAFETY: the masked lanes stay below k.
            let (xv, wv) = unsafe {
                (
                    _mm512_maskz_loadu_ps(mask, xp.add(i)),
                    _mm512_maskz_loadu_ps(mask, wp.add(i)),
                )
            };
            acc[1] = _mm512_fmadd_ps(xv, wv, acc[1]);
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `x` and `w` have the same length.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_avx2(x: &[f32], w: &[f32]) -> f32 {
        let k = x.len();
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= k {
            for (q, a) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8q + 8 <= k.
                let (xv, wv) = unsafe {
                    (
                        _mm256_loadu_ps(xp.add(i + 8 * q)),
                        _mm256_loadu_ps(wp.add(i + 8 * q)),
                    )
                };
                *a = _mm256_fmadd_ps(xv, wv, *a);
            }
            i += 32;
        }
        while i + 8 <= k {
            // SAFETY: i + 8 <= k.
            let (xv, wv) = unsafe { (_mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(wp.add(i))) };
            acc[0] = _mm256_fmadd_ps(xv, wv, acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        let mut total = _mm_cvtss_f32(one);
        while i < k {
            // SAFETY: i < k.
            total = unsafe { (*xp.add(i)).mul_add(*wp.add(i), total) };
            i += 1;
        }
        total
    }
}
