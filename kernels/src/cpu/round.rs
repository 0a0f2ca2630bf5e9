//! Rounding f32 values to a 16-bit format and back, in place: how a GEMM with
//! [`Precision::Bf16`] or [`Precision::F16`] inputs treats its packed panels, and the
//! backend's `round_to` op. Every path rounds as [`Precision::round`] does.

use super::isa::simd_fn;
use super::Simd;
use crate::precision::round_bf16;
use crate::Precision;

/// Rounds every value of `xs` to `precision` (nothing to do for f32).
pub(crate) fn round_in_place(simd: Simd, precision: Precision, xs: &mut [f32]) {
    match precision {
        Precision::F32 => {}
        Precision::Bf16 => bf16(simd, xs),
        Precision::F16 => f16(xs),
    }
}

/// `y[i] = precision.round(x[i])`, in parallel tasks of whole chunks for long slices.
pub(crate) fn round_slice(simd: Simd, precision: Precision, x: &[f32], y: &mut [f32]) {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 15;
    let one = |(x, y): (&[f32], &mut [f32])| {
        y.copy_from_slice(x);
        round_in_place(simd, precision, y);
    };
    if x.len() >= super::PARALLEL_MIN_ELEMENTS && rayon::current_num_threads() > 1 {
        x.par_chunks(CHUNK)
            .zip(y.par_chunks_mut(CHUNK))
            .for_each(one);
    } else {
        x.chunks(CHUNK).zip(y.chunks_mut(CHUNK)).for_each(one);
    }
}

simd_fn! {
    // Integer operations on the bits, which the compiler vectorises at full width.
    fn bf16(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            *x = round_bf16(*x);
        }
    }
}

/// Through F16C's conversions where the CPU has them (every AVX2 CPU we know of), else
/// through `half`'s, which round the same way.
fn f16(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: F16C (and the AVX it implies) was just detected.
        unsafe { f16_f16c(xs) };
        return;
    }
    for x in xs.iter_mut() {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
fn f16_f16c(xs: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = xs.chunks_exact_mut(8);
    for chunk in &mut chunks {
        // SAFETY: the chunk holds 8 floats; AVX and F16C are enabled.
        unsafe {
            let v = _mm256_loadu_ps(chunk.as_ptr());
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
    }
    for x in chunks.into_remainder() {
        *x = half::f16::from_f32(*x).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values around every interesting boundary: ties, overflow, subnormals, NaN.
    fn probes() -> Vec<f32> {
        let mut xs = vec![
            0.0, -0.0, 1.0, 65504.0, 65519.0, 65520.0, -1e6, 1e-8, 6e-8, 3e-5,
        ];
        xs.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MAX,
            f32::MIN_POSITIVE,
        ]);
        let mut state = 0x9e37_79b9u32;
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            xs.push(f32::from_bits(state));
            // Ties of both formats: the bits just past a kept bit, exactly half.
            xs.push(f32::from_bits((state & 0xffff_0000) | 0x8000));
            xs.push(f32::from_bits((state & 0xffff_e000) | 0x1000));
        }
        xs
    }

    #[test]
    fn every_path_rounds_as_the_reference() {
        for simd in Simd::available() {
            for precision in Precision::ALL {
                let mut xs = probes();
                round_in_place(simd, precision, &mut xs);
                for (x, r) in probes().into_iter().zip(xs) {
                    let want = precision.round(x);
                    assert!(
                        r.to_bits() == want.to_bits() || (r.is_nan() && want.is_nan()),
                        "{precision} on {simd:?}: {x:e} ({:#x}) -> {r:e}, want {want:e}",
                        x.to_bits()
                    );
                }
            }
        }
    }
}
