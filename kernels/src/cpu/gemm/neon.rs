//! NEON micro-kernel: an 8 x 8 tile in 16 q-register accumulators; each step of k loads
//! two 4-wide vectors of packed B and two of packed A, and multiplies by A's lanes
//! (`fmla v.4s, v.4s, v.s[lane]`), so no broadcasts are needed.

use super::MicroKernel;
use std::arch::aarch64::*;

pub(super) struct Neon;

const MR: usize = 8;
const NR: usize = 8;

impl MicroKernel for Neon {
    const MR: usize = MR;
    const NR: usize = NR;
    const KC: usize = 256;
    const NC: usize = 512;
    const MC: usize = MR;

    // A's rows are loaded as vectors, so its panel is always packed; B's rows are
    // contiguous either way.
    const STRIDED_A: bool = false;
    const STRIDED_B: bool = true;

    // The CPU support is proved by the `Simd` this kernel was chosen through.
    #[target_feature(enable = "neon")]
    unsafe fn kernel(
        kc: usize,
        a: *const f32,
        _rs_a: usize,
        _cs_a: usize,
        b: *const f32,
        rs_b: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
        bias: *const f32,
        relu: bool,
    ) {
        unsafe {
            let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
            let (mut a, mut b) = (a, b);
            for _ in 0..kc {
                let b0 = vld1q_f32(b);
                let b1 = vld1q_f32(b.add(4));
                let a_lo = vld1q_f32(a);
                let a_hi = vld1q_f32(a.add(4));
                macro_rules! row {
                    ($i:expr, $src:expr, $lane:literal) => {
                        acc[$i][0] = vfmaq_laneq_f32::<{ $lane }>(acc[$i][0], b0, $src);
                        acc[$i][1] = vfmaq_laneq_f32::<{ $lane }>(acc[$i][1], b1, $src);
                    };
                }
                row!(0, a_lo, 0);
                row!(1, a_lo, 1);
                row!(2, a_lo, 2);
                row!(3, a_lo, 3);
                row!(4, a_hi, 0);
                row!(5, a_hi, 1);
                row!(6, a_hi, 2);
                row!(7, a_hi, 3);
                a = a.add(MR);
                b = b.add(rs_b);
            }
            for (i, row) in acc.iter().enumerate() {
                let out = c.add(i * ldc);
                let (mut r0, mut r1) = (vmulq_n_f32(row[0], alpha), vmulq_n_f32(row[1], alpha));
                if beta != 0.0 {
                    r0 = vfmaq_n_f32(r0, vld1q_f32(out), beta);
                    r1 = vfmaq_n_f32(r1, vld1q_f32(out.add(4)), beta);
                }
                if !bias.is_null() {
                    r0 = vaddq_f32(r0, vld1q_f32(bias));
                    r1 = vaddq_f32(r1, vld1q_f32(bias.add(4)));
                }
                if relu {
                    // FMAX returns NaN when either operand is NaN: NaN passes.
                    r0 = vmaxq_f32(vdupq_n_f32(0.0), r0);
                    r1 = vmaxq_f32(vdupq_n_f32(0.0), r1);
                }
                vst1q_f32(out, r0);
                vst1q_f32(out.add(4), r1);
            }
        }
    }
}
