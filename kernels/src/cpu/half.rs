//! f32 to and from 16-bit storage (two values to a word), rounding to nearest, ties to
//! even, as [`crate::Precision::round`] does: NaN stays a quiet NaN, values beyond the
//! format's range become infinities. `half`'s slice conversions use F16C where the CPU
//! has it.

use crate::DType;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

/// Values per parallel task (a multiple of 2: tasks own whole words).
const CHUNK: usize = 1 << 16;

/// `x` (f32) into `out` (`to`, half as many words, rounded up).
pub(crate) fn pack(x: &[f32], to: DType, out: &mut [f32]) {
    let halves: &mut [u16] = bytemuck::cast_slice_mut(out);
    if x.len() < halves.len() {
        halves[x.len()] = 0; // an odd count's spare high half
    }
    let halves = &mut halves[..x.len()];
    let one = |(x, h): (&[f32], &mut [u16])| match to {
        DType::F16 => bytemuck::cast_slice_mut::<u16, f16>(h).convert_from_f32_slice(x),
        DType::Bf16 => bytemuck::cast_slice_mut::<u16, bf16>(h).convert_from_f32_slice(x),
        _ => unreachable!("pack to a 16-bit type"),
    };
    if x.len() >= super::PARALLEL_MIN_ELEMENTS && rayon::current_num_threads() > 1 {
        x.par_chunks(CHUNK)
            .zip(halves.par_chunks_mut(CHUNK))
            .for_each(one);
    } else {
        one((x, halves));
    }
}

/// `x` (`from`, two values to a word) into `out` (f32, `out.len()` values).
pub(crate) fn unpack(x: &[f32], from: DType, out: &mut [f32]) {
    let halves: &[u16] = &bytemuck::cast_slice(x)[..out.len()];
    let one = |(h, y): (&[u16], &mut [f32])| match from {
        DType::F16 => bytemuck::cast_slice::<u16, f16>(h).convert_to_f32_slice(y),
        DType::Bf16 => bytemuck::cast_slice::<u16, bf16>(h).convert_to_f32_slice(y),
        _ => unreachable!("unpack from a 16-bit type"),
    };
    if out.len() >= super::PARALLEL_MIN_ELEMENTS && rayon::current_num_threads() > 1 {
        halves
            .par_chunks(CHUNK)
            .zip(out.par_chunks_mut(CHUNK))
            .for_each(one);
    } else {
        one((halves, out));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Precision;

    #[test]
    fn packs_as_precision_rounds_and_unpacks_exactly() {
        let x: Vec<f32> = vec![
            1.0,
            -2.5,
            1.0 + 1.0 / 256.0,
            1e-7,
            70000.0,
            f32::NAN,
            f32::NEG_INFINITY,
            3.3e-39,
            0.1,
        ];
        for (dtype, p) in [(DType::Bf16, Precision::Bf16), (DType::F16, Precision::F16)] {
            let mut packed = vec![f32::NAN; dtype.words(x.len())];
            pack(&x, dtype, &mut packed);
            let words: &[u32] = bytemuck::cast_slice(&packed);
            assert_eq!(words[4] >> 16, 0, "{dtype}: the spare half");
            let mut back = vec![0.0; x.len()];
            unpack(&packed, dtype, &mut back);
            for (&v, &b) in x.iter().zip(&back) {
                let want = p.round(v);
                assert!(
                    want.to_bits() == b.to_bits() || (want.is_nan() && b.is_nan()),
                    "{dtype}: {v} -> {b}, expected {want}"
                );
            }
        }
    }
}
