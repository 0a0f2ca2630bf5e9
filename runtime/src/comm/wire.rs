//! How a compressed all-reduce's values cross a link: as bf16 or f16, two to a 32-bit
//! word of the transports' f32 chunk buffers (the words only travel; nothing computes on
//! them as floats), decoded to f32 on arrival and summed there, as PyTorch DDP's
//! compression hooks send. Rounding is to nearest, ties to even, as
//! [`Precision::round`] does.

use crate::Precision;
use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

/// Words (4 bytes) a chunk of `values` values takes on the wire.
pub(crate) fn words(wire: Precision, values: usize) -> usize {
    if wire.is_reduced() {
        values.div_ceil(2)
    } else {
        values
    }
}

/// `src` in `wire`'s format, into `dst` (resized to [`words`]).
pub(crate) fn encode(wire: Precision, src: &[f32], dst: &mut Vec<f32>) {
    dst.clear();
    if !wire.is_reduced() {
        dst.extend_from_slice(src);
        return;
    }
    dst.resize(words(wire, src.len()), 0.0);
    let halves = &mut bytemuck::cast_slice_mut::<f32, u16>(dst)[..src.len()];
    match wire {
        // On the bits, a loop the compiler vectorises (`half`'s goes value by value).
        Precision::Bf16 => {
            for (h, x) in halves.iter_mut().zip(src) {
                // As `Precision::round`: to nearest even, a NaN kept quiet.
                let u = x.to_bits();
                let r = if x.is_nan() {
                    u | 0x0040_0000
                } else {
                    u.wrapping_add(0x7fff + ((u >> 16) & 1))
                };
                *h = (r >> 16) as u16;
            }
        }
        _ => {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") {
                // SAFETY: F16C (and the AVX it implies) was just detected.
                unsafe { f16c::encode(src, halves) };
                return;
            }
            halves
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(src)
        }
    }
}

/// The `dst.len()` values of `words` (as [`encode`] wrote them) into `dst`, through
/// `scratch`: added to what `dst` holds, or copied over it.
pub(crate) fn decode(
    wire: Precision,
    words: &[f32],
    dst: &mut [f32],
    add: bool,
    scratch: &mut Vec<f32>,
) {
    let n = dst.len();
    let values = if wire.is_reduced() {
        scratch.resize(n, 0.0);
        let halves = &bytemuck::cast_slice::<f32, u16>(words)[..n];
        match wire {
            Precision::Bf16 => {
                for (v, h) in scratch.iter_mut().zip(halves) {
                    *v = f32::from_bits(u32::from(*h) << 16);
                }
            }
            _ => f16_to_f32(halves, scratch),
        }
        &scratch[..]
    } else {
        &words[..n]
    };
    if add {
        for (d, x) in dst.iter_mut().zip(values) {
            *d += *x;
        }
    } else {
        dst.copy_from_slice(values);
    }
}

fn f16_to_f32(halves: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: F16C (and the AVX it implies) was just detected.
        unsafe { f16c::decode(halves, out) };
        return;
    }
    halves.reinterpret_cast::<f16>().convert_to_f32_slice(out);
}

/// f16 conversions eight at a time (`half`'s slice conversions went value by value here:
/// an f16 all-reduce of 64 MiB on 2 peers took 3.2x the f32 one, bf16's 1.3x).
#[cfg(target_arch = "x86_64")]
mod f16c {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx,f16c")]
    pub(super) fn encode(src: &[f32], dst: &mut [u16]) {
        let (mut s, mut d) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
        for (x, h) in (&mut s).zip(&mut d) {
            // SAFETY: eight values each way; AVX and F16C are enabled.
            unsafe {
                let v = _mm256_loadu_ps(x.as_ptr());
                let packed = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(h.as_mut_ptr().cast(), packed);
            }
        }
        for (x, h) in s.remainder().iter().zip(d.into_remainder()) {
            *h = half::f16::from_f32(*x).to_bits();
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) fn decode(src: &[u16], dst: &mut [f32]) {
        let (mut s, mut d) = (src.chunks_exact(8), dst.chunks_exact_mut(8));
        for (h, x) in (&mut s).zip(&mut d) {
            // SAFETY: eight values each way; AVX and F16C are enabled.
            unsafe {
                let packed = _mm_loadu_si128(h.as_ptr().cast());
                _mm256_storeu_ps(x.as_mut_ptr(), _mm256_cvtph_ps(packed));
            }
        }
        for (h, x) in s.remainder().iter().zip(d.into_remainder()) {
            *x = half::f16::from_bits(*h).to_f32();
        }
    }
}

/// Rounds `values` to `wire`'s format in place: what a segment's owner does to its
/// finished sums before sending them round, so that it keeps the bits the others get.
pub(crate) fn round(wire: Precision, values: &mut [f32]) {
    if wire.is_reduced() {
        for v in values {
            *v = wire.round(*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_survives_the_wire_as_its_rounding() {
        let src = [1.0f32, -3.3, 1e-30, 70000.0, f32::NAN, 0.1, 7.0];
        for wire in Precision::ALL {
            let mut w = Vec::new();
            encode(wire, &src, &mut w);
            assert_eq!(w.len(), words(wire, src.len()));
            let mut got = vec![0.5f32; src.len()];
            decode(wire, &w, &mut got, false, &mut Vec::new());
            for (g, s) in got.iter().zip(src) {
                let want = wire.round(s);
                assert!(g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()));
            }
            let mut sum = vec![1.0f32; 2];
            decode(wire, &w, &mut sum, true, &mut Vec::new());
            assert_eq!(sum, [2.0, 1.0 + wire.round(-3.3)]);
        }
    }
}
