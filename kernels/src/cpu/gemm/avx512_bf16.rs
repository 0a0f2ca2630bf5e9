//! AVX512-BF16 micro-kernel for GEMMs with bf16 inputs: `vdpbf16ps` multiplies pairs of
//! bf16 values and adds both products to an f32 lane, so one instruction does 32
//! multiply-adds where an f32 FMA does 16.
//!
//! Its panels hold pairs along k, packed by `pairs.rs`: `kc / 2` groups (rounded up) of
//! `w` 32-bit words, word `r` of group `q` holding row `r`'s values at k = 2q (low half)
//! and 2q + 1 (high half), rounded to bf16 (an odd `kc` pairs its last value with zero). The
//! 12 x 32 tile of C lives in 24 zmm accumulators, as in the f32 kernel; each step of the
//! loop consumes two values of k: two zmm of B's pairs and twelve broadcast pairs of A.
//!
//! `vdpbf16ps` treats subnormal inputs as zero and rounds each step's sum once (the two
//! products are added exactly, then to the accumulator): within the bounds the
//! conformance suite derives for bf16 GEMMs, not bit for bit the rounded-f32 path's.

use super::avx512::store_tile;
use super::{MicroKernel, Tiles};
use seq_macro::seq;
use std::arch::x86_64::*;

pub(super) struct Avx512Bf16;

const MR: usize = 12;
const _: () = assert!(MR == 12);
const NR: usize = 32;

impl MicroKernel for Avx512Bf16 {
    const MR: usize = MR;
    const NR: usize = NR;
    // In values of k: a 12 x 512 panel of A in pairs is 12 KiB of L1, as the f32 kernel's
    // 12 x 256, and a 512 x 384 block of B 384 KiB of L2.
    const KC: usize = 512;
    const NC: usize = 384;
    const MC: usize = MR;

    // Both operands are always packed: the pairs exist only in the packing.
    const STRIDED_A: bool = false;
    const STRIDED_B: bool = false;
    const PAIRS: bool = true;

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn kernel(
        kc: usize,
        a: *const f32,
        _rs_a: usize,
        _cs_a: usize,
        b: *const f32,
        _rs_b: usize,
        c: *mut f32,
        ldc: usize,
        alpha: f32,
        beta: f32,
        bias: *const f32,
        relu: bool,
    ) {
        // SAFETY: as for `kernel`, with packed pairs (`PAIRS`).
        unsafe { body(kc, a, b, c, ldc, alpha, beta, bias, relu) }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tiles(t: &Tiles) {
        for i in 0..t.count {
            // SAFETY: each tile of `t` satisfies `kernel`'s contract.
            unsafe {
                let p = t.at(i);
                body(t.kc, p.a, p.b, p.c, t.ldc, t.alpha, t.beta, p.bias, t.relu)
            }
        }
    }
}

/// The kernel on panels of pairs: `kc` values of k, so `kc.div_ceil(2)` groups of MR
/// words of A and of NR words of B.
// Inlined into `kernel` and `tiles`, which carry the target features.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn body(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    alpha: f32,
    beta: f32,
    bias: *const f32,
    relu: bool,
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for i in 0..MR {
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.add(i * ldc + 31) as *const i8);
        }
        let (mut a, mut b) = (a.cast::<i32>(), b.cast::<i32>());
        macro_rules! step {
            () => {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * NR) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(8 * NR + 16) as *const i8);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
                seq!(I in 0..12 {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(I)));
                    acc[I][0] = _mm512_dpbf16_ps(acc[I][0], ai, b0);
                    acc[I][1] = _mm512_dpbf16_ps(acc[I][1], ai, b1);
                });
                a = a.add(MR);
                b = b.add(NR);
            };
        }
        let pairs = kc.div_ceil(2);
        for _ in 0..pairs / 4 {
            step!();
            step!();
            step!();
            step!();
        }
        for _ in 0..pairs % 4 {
            step!();
        }
        store_tile!(acc, c, ldc, alpha, beta, bias, relu);
    }
}
