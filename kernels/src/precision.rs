//! The precision a matrix product takes its inputs in: f32, or rounded to a 16-bit
//! format (bfloat16 or IEEE half) with the products summed in f32, as mixed-precision
//! training computes (PyTorch's autocast, NVIDIA's tensor cores).
//!
//! Tensors stay f32 in memory; a GEMM asked for [`Precision::Bf16`] or [`Precision::F16`]
//! rounds each operand value to that format (round to nearest, ties to even) on its way
//! into the kernel. A product of two such values is exact in f32 (8 x 8 or 11 x 11
//! significant bits), so the result is what a GEMM over 16-bit storage with f32
//! accumulation computes; on a CPU with AVX512-BF16 the bf16 products run on
//! `vdpbf16ps`, two multiply-adds per lane per instruction.

use std::fmt;
use std::str::FromStr;

/// The format of a matrix product's inputs; accumulation is always f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    #[default]
    F32,
    /// bfloat16: f32's exponent range, 8 significant bits. No overflow beyond f32's.
    Bf16,
    /// IEEE 754 binary16: 11 significant bits, finite up to 65504 (larger values become
    /// infinite, which is what dynamic loss scaling watches for).
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    /// The unit roundoff of the input format: half the gap between 1 and the next
    /// value (2^-24 for f32, 2^-9 for bf16, 2^-11 for f16).
    pub fn unit_roundoff(self) -> f32 {
        match self {
            Precision::F32 => f32::EPSILON / 2.0,
            Precision::Bf16 => 1.0 / 512.0,
            Precision::F16 => 1.0 / 2048.0,
        }
    }

    /// Whether values are rounded on their way into a product.
    pub fn is_reduced(self) -> bool {
        self != Precision::F32
    }

    /// `x` rounded to the format and back to f32 (nearest, ties to even; NaN stays NaN,
    /// f16 overflows to infinity). The reference every kernel's rounding matches.
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => round_bf16(x),
            Precision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }
}

/// `x` rounded to bfloat16, as f32 bits with the low half zero. NaN stays a (quiet) NaN:
/// rounding the bits of a NaN whose payload lies in the low half could carry it into
/// infinity.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    let rounded = if x.is_nan() {
        u | 0x0040_0000
    } else {
        u.wrapping_add(0x7fff + ((u >> 16) & 1))
    };
    f32::from_bits(rounded & 0xffff_0000)
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown precision {s:?}: expected f32, bf16 or f16"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even, 1.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 1.0 / 64.0);
        assert_eq!(round_bf16(1.0 + 1.5 / 256.0), 1.0 + 1.0 / 128.0);
        assert_eq!(round_bf16(-3.0), -3.0);
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
        assert_eq!(round_bf16(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(round_bf16(f32::from_bits(0x7f80_0001)).is_nan());
        for x in [0.1f32, 1e-30, 3.3e20, -7.77] {
            let r = round_bf16(x);
            assert_eq!(r.to_bits() & 0xffff, 0);
            assert!((r - x).abs() <= x.abs() * Precision::Bf16.unit_roundoff());
        }
    }

    #[test]
    fn f16_overflows_and_keeps_subnormals() {
        assert_eq!(Precision::F16.round(65504.0), 65504.0);
        assert_eq!(Precision::F16.round(65520.0), f32::INFINITY);
        assert_eq!(Precision::F16.round(2.0f32.powi(-24)), 2.0f32.powi(-24));
        assert_eq!(Precision::F16.round(2.0f32.powi(-26)), 0.0);
        assert_eq!(Precision::F32.round(0.1), 0.1);
    }

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("fp8".parse::<Precision>().is_err());
    }
}
