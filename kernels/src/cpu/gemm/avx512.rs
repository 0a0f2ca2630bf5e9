//! AVX-512F micro-kernel: a 12 x 32 tile of C lives in 24 zmm accumulators; each step of
//! k loads one 32-wide row of packed B (two zmm) and broadcasts 12 values of packed A,
//! which the compiler folds into the FMAs as embedded broadcasts.

use super::{tiles_of_body, with_packed_strides, MicroKernel, Tiles};
use seq_macro::seq;
use std::arch::x86_64::*;

pub(super) struct Avx512;

const MR: usize = 12;
// `seq!` below unrolls the loops over a tile's rows with this count written out.
const _: () = assert!(MR == 12);
const NR: usize = 32;

/// The epilogue of a 12 x 32 tile held in `acc` (`[[__m512; 2]; 12]`): `alpha * acc + beta
/// * C`, plus `bias` (32 values, unless null), clamped at zero when `relu`, stored to C at
/// row stride `ldc`. A macro, not a function, so each accumulator keeps a constant index
/// in its caller's registers (see the module's `seq!`); shared with the bf16 kernel.
macro_rules! store_tile {
    ($acc:ident, $c:ident, $ldc:ident, $alpha:ident, $beta:ident, $bias:ident, $relu:ident) => {
        let (acc, c, ldc, beta, relu) = (&$acc, $c, $ldc, $beta, $relu);
        let alpha = _mm512_set1_ps($alpha);
        let (beta_v, zero) = (_mm512_set1_ps(beta), _mm512_setzero_ps());
        let bias =
            (!$bias.is_null()).then(|| (_mm512_loadu_ps($bias), _mm512_loadu_ps($bias.add(16))));
        seq!(I in 0..12 {{
            let (i, row) = (I, &acc[I]);
            let out = c.add(i * ldc);
            let (mut r0, mut r1) = if beta == 0.0 {
                (_mm512_mul_ps(alpha, row[0]), _mm512_mul_ps(alpha, row[1]))
            } else {
                let c0 = _mm512_mul_ps(beta_v, _mm512_loadu_ps(out));
                let c1 = _mm512_mul_ps(beta_v, _mm512_loadu_ps(out.add(16)));
                (
                    _mm512_fmadd_ps(alpha, row[0], c0),
                    _mm512_fmadd_ps(alpha, row[1], c1),
                )
            };
            if let Some((b0, b1)) = bias {
                r0 = _mm512_add_ps(r0, b0);
                r1 = _mm512_add_ps(r1, b1);
            }
            if relu {
                // max(0, x) returns its second operand when one is NaN: NaN passes.
                r0 = _mm512_max_ps(zero, r0);
                r1 = _mm512_max_ps(zero, r1);
            }
            _mm512_storeu_ps(out, r0);
            _mm512_storeu_ps(out.add(16), r1);
        }});
    };
}
pub(super) use store_tile;

impl MicroKernel for Avx512 {
    const MR: usize = MR;
    const NR: usize = NR;
    // A 12 x 256 panel of A (12 KiB) stays in L1 while 32-wide panels of a 256 x 384 block
    // of B (384 KiB: inside the 1 MiB L2 of Skylake-SP and Zen 4, most of Ice Lake
    // client's 512 KiB) stream from L2.
    const KC: usize = 256;
    const NC: usize = 384;
    // Not BLIS's order: a 256 x 32 panel of B is 32 KiB, all of Zen 4's L1.
    const MC: usize = MR;

    const STRIDED_A: bool = true;
    const STRIDED_B: bool = true;

    // The CPU support is proved by the `Simd` this kernel was chosen through.
    #[target_feature(enable = "avx512f")]
    unsafe fn kernel(
        kc: usize,
        a: *const f32,
        rs_a: usize,
        cs_a: usize,
        b: *const f32,
        rs_b: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
        bias: *const f32,
        relu: bool,
    ) {
        // SAFETY: as for `kernel`.
        unsafe {
            with_packed_strides!(body(
                kc, a, rs_a, cs_a, b, rs_b, c, ldc, alpha, beta, bias, relu
            ))
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tiles(t: &Tiles) {
        // SAFETY: as for `tiles`.
        unsafe { with_packed_strides!(tile_run(t)) }
    }
}

tiles_of_body!();

/// The kernel, with A's element `(i, p)` at `a[i * rs_a + p * cs_a]`, B's row `p` at
/// `b[p * rs_b..]`, and the epilogue (`bias`, `relu`) of `MicroKernel::kernel`; the
/// strides of an operand whose flag is set are its packed ones, as constants.
// Inlined into `kernel` and `tile_run`, which are compiled for avx512f.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body<const PACKED_A: bool, const PACKED_B: bool>(
    kc: usize,
    a: *const f32,
    rs_a: usize,
    cs_a: usize,
    b: *const f32,
    rs_b: usize,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
    relu: bool,
) {
    let (rs_a, cs_a) = if PACKED_A { (1, MR) } else { (rs_a, cs_a) };
    let rs_b = if PACKED_B { NR } else { rs_b };
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        // C is touched only after the loop: start fetching its rows now, so the misses
        // overlap the FMAs instead of stalling the stores.
        for i in 0..MR {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 31) as *const i8);
        }
        let (mut a, mut b) = (a, b);
        // One step of k: a 32-wide row of packed B (two zmm), twelve broadcasts of
        // packed A. Packed B streams from L2 (two cache lines per step): prefetch a few
        // steps ahead (wrapping: past the panel's end it is only a hint).
        macro_rules! step {
            () => {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * rs_b) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * rs_b + 16) as *const i8);
                let b0 = _mm512_loadu_ps(b);
                let b1 = _mm512_loadu_ps(b.add(16));
                seq!(I in 0..12 {
                    let ai = _mm512_set1_ps(*a.add(I * rs_a));
                    acc[I][0] = _mm512_fmadd_ps(ai, b0, acc[I][0]);
                    acc[I][1] = _mm512_fmadd_ps(ai, b1, acc[I][1]);
                });
                a = a.add(cs_a);
                b = b.add(rs_b);
            };
        }
        // Unrolled by four, as the AVX2 kernel (where it measured 7-12% faster).
        for _ in 0..kc / 4 {
            step!();
            step!();
            step!();
            step!();
        }
        for _ in 0..kc % 4 {
            step!();
        }
        store_tile!(acc, c, ldc, alpha, beta, bias, relu);
    }
}
