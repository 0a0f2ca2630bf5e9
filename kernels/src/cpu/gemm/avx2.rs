//! AVX2+FMA micro-kernel: the classic 6 x 16 tile, 12 ymm accumulators, two 8-wide loads
//! of packed B and six broadcasts of packed A per step of k.

use super::{with_packed_strides, MicroKernel, Tiles};
use seq_macro::seq;
use std::arch::x86_64::*;

pub(super) struct Avx2Fma;

const MR: usize = 6;
// `seq!` below unrolls the loops over a tile's rows with this count written out.
const _: () = assert!(MR == 6);
const NR: usize = 16;

impl MicroKernel for Avx2Fma {
    const MR: usize = MR;
    const NR: usize = NR;
    // A 256 x 16 panel of B (16 KiB) stays in L1 while 6-row panels of a 192 x 256 block of
    // A (192 KiB, in the 256-512 KiB L2 of Haswell-to-Comet-Lake clients and of Zen 2/3)
    // stream from L2: 6 KiB of L2 traffic per call of the kernel, where streaming B's
    // panels past one panel of A moves 16 KiB. Measured on Zen 3, the two orders
    // alternated call by call in one process (MC = 6 against 192): 1024^3 3-12% faster,
    // 2048^3 2-9%, the MLP's 512 x 784 x 128 weight gradient 6%, its other products within
    // 4% either way; MC = 144 and 240 within the noise of 192.
    const KC: usize = 256;
    const NC: usize = 256;
    const MC: usize = 192;

    const STRIDED_A: bool = true;
    const STRIDED_B: bool = true;
    const READS_C_APART: bool = true;

    // The CPU support is proved by the `Simd` this kernel was chosen through.
    #[target_feature(enable = "avx2,fma")]
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
                kc, a, rs_a, cs_a, b, rs_b, c, ldc, c, ldc, alpha, beta, bias, relu
            ))
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tiles(t: &Tiles) {
        // SAFETY: as for `tiles`.
        unsafe { with_packed_strides!(tile_run(t)) }
    }
}

/// `tiles`' loop, inlined once per pair of packed-stride flags (`with_packed_strides`):
/// as `tiles_of_body!`'s, with C read from the run's `c_in`.
#[inline(always)]
unsafe fn tile_run<const PACKED_A: bool, const PACKED_B: bool>(t: &Tiles) {
    for i in 0..t.count {
        // SAFETY: each tile of `t` satisfies `kernel`'s contract (`tiles`'s), its C read
        // at `c_in` with `ldc_in`.
        unsafe {
            let p = t.at(i);
            body::<PACKED_A, PACKED_B>(
                t.kc, p.a, t.rs_a, t.cs_a, p.b, t.rs_b, p.c, t.ldc, p.c_in, t.ldc_in, t.alpha,
                t.beta, p.bias, t.relu,
            )
        }
    }
}

/// The kernel, with A's element `(i, p)` at `a[i * rs_a + p * cs_a]`, B's row `p` at
/// `b[p * rs_b..]`, C read (when `beta != 0`) at `c_in` with row stride `ldc_in` and
/// written at `c` with `ldc`, and the epilogue (`bias`, `relu`) of `MicroKernel::kernel`;
/// the strides of an operand whose flag is set are its packed ones, as constants.
// Inlined into `kernel` and `tile_run`, which are compiled for avx2 and fma.
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
    c_in: *const f32,
    ldc_in: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
    relu: bool,
) {
    let (rs_a, cs_a) = if PACKED_A { (1, MR) } else { (rs_a, cs_a) };
    let rs_b = if PACKED_B { NR } else { rs_b };
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        // C is touched only after the loop: start fetching its rows now, so the misses
        // overlap the FMAs instead of stalling the stores.
        for i in 0..MR {
            _mm_prefetch::<_MM_HINT_T0>(c_in.add(i * ldc_in) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c_in.add(i * ldc_in + 15) as *const i8);
        }
        if !std::ptr::eq(c_in, c) {
            for i in 0..MR {
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 15) as *const i8);
            }
        }
        let (mut a, mut b) = (a, b);
        // One step of k: two 8-wide rows of packed B, six broadcasts of packed A. Packed
        // B streams from L2 (one cache line per step): prefetch a few steps ahead
        // (wrapping: past the panel's end it is only a hint).
        macro_rules! step {
            () => {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * rs_b) as *const i8);
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                seq!(I in 0..6 {
                    let ai = _mm256_broadcast_ss(&*a.add(I * rs_a));
                    acc[I][0] = _mm256_fmadd_ps(ai, b0, acc[I][0]);
                    acc[I][1] = _mm256_fmadd_ps(ai, b1, acc[I][1]);
                });
                a = a.add(cs_a);
                b = b.add(rs_b);
            };
        }
        // Unrolled by four: measured 7-12% faster than one step per iteration on Zen 3
        // (paired runs in one process), from the loop overhead it removes.
        for _ in 0..kc / 4 {
            step!();
            step!();
            step!();
            step!();
        }
        for _ in 0..kc % 4 {
            step!();
        }
        let alpha = _mm256_set1_ps(alpha);
        let (beta_v, zero) = (_mm256_set1_ps(beta), _mm256_setzero_ps());
        let bias = (!bias.is_null()).then(|| (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8))));
        seq!(I in 0..6 {{
            let (i, row) = (I, &acc[I]);
            let out = c.add(i * ldc);
            let (mut r0, mut r1) = if beta == 0.0 {
                (_mm256_mul_ps(alpha, row[0]), _mm256_mul_ps(alpha, row[1]))
            } else {
                let prior = c_in.add(i * ldc_in);
                let c0 = _mm256_mul_ps(beta_v, _mm256_loadu_ps(prior));
                let c1 = _mm256_mul_ps(beta_v, _mm256_loadu_ps(prior.add(8)));
                (
                    _mm256_fmadd_ps(alpha, row[0], c0),
                    _mm256_fmadd_ps(alpha, row[1], c1),
                )
            };
            if let Some((b0, b1)) = bias {
                r0 = _mm256_add_ps(r0, b0);
                r1 = _mm256_add_ps(r1, b1);
            }
            if relu {
                // max(0, x) returns its second operand when one is NaN: NaN passes.
                r0 = _mm256_max_ps(zero, r0);
                r1 = _mm256_max_ps(zero, r1);
            }
            _mm256_storeu_ps(out, r0);
            _mm256_storeu_ps(out.add(8), r1);
        }});
    }
}
