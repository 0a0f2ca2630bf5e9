//! Packing for the AVX512-BF16 kernel (`avx512_bf16.rs`): panels of bf16 pairs along k,
//! converted from the f32 operand as they are packed. A panel of `w` lanes (rows of A,
//! columns of B) over `kc` values of k is `kc.div_ceil(2)` groups of `w` 32-bit words,
//! word `l` of group `q` holding lane `l`'s values at k = 2q (low half) and 2q + 1 (high
//! half; zero past `kc`), lanes past the operand's edge zero.
//!
//! Two layouts cover the products a network runs, each with its own path:
//! - k contiguous (row-major A, a transposed B such as a `Linear` weight): a lane's
//!   values convert to bf16 in place order, which is already the pairs' order, into a
//!   scratch of `lanes x kc/2` words; the GEMM's 8 x 8 register transpose then moves the
//!   words into the panel.
//! - lanes contiguous (row-major B, a transposed A): two rows of k convert together
//!   (`vcvtne2ps2bf16`) and one permute interleaves them into sixteen words.
//!
//! Other strides take a scalar loop. Converting while packing, rather than packing f32
//! and converting the panel after, reads and writes each panel once: at 512^3 on Zen 4
//! that pass had been 3% of the product.
//!
//! Every value is rounded by `vcvtne(2)ps2bf16`: to nearest even, subnormal inputs as zero.

use super::pack::pack_transposing;
use super::MatRef;
use std::arch::x86_64::*;

/// Packs rows `i0..i0 + rows` of `a` over k `p0..p0 + kc` (see the module).
///
/// # Safety
/// The CPU has AVX512F, AVX512BW, AVX512VL and AVX512-BF16.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_a(
    dst: &mut [f32],
    a: &MatRef,
    i0: usize,
    rows: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    scratch: &mut Vec<f32>,
) {
    // A's lanes are its rows.
    let panel = Panel::new(a.data, (a.rs, a.cs), (i0, rows), (p0, kc), mr);
    // SAFETY: as the caller guarantees.
    unsafe { panel.pack(dst, scratch) }
}

/// Packs columns `j0..j0 + cols` of `b` over k `p0..p0 + kc` (see the module).
///
/// # Safety
/// As for [`pack_a`].
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_b(
    dst: &mut [f32],
    b: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
    scratch: &mut Vec<f32>,
) {
    // B's lanes are its columns.
    let panel = Panel::new(b.data, (b.cs, b.rs), (j0, cols), (p0, kc), nr);
    // SAFETY: as the caller guarantees.
    unsafe { panel.pack(dst, scratch) }
}

/// Packs columns `j0..j0 + cols` of a row-major `b` (`cs == 1`) over k `p0..p0 + kc`
/// into consecutive panels of `nr` columns, each `nr * kc` values apart in `dst` (the
/// driver's panel spacing), as [`pack_b`] would panel by panel. It walks B two rows at a
/// time across every panel, as the f32 `pack::pack_b_rows` does: panel by panel, each
/// pair of rows came from another page once rows are 4 KiB apart, and packing A and B
/// took 10.2% of a 1024^3 product on Zen 4 (`perf`), 8.8% this way.
///
/// # Safety
/// As for [`pack_a`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_b_rows(
    dst: &mut [f32],
    b: &MatRef,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    nr: usize,
) {
    let groups = kc.div_ceil(2);
    let panels = cols.div_ceil(nr);
    assert!(b.cs == 1 && nr.is_multiple_of(16) && kc > 0 && cols > 0);
    assert!(dst.len() >= (panels - 1) * nr * kc + groups * nr);
    assert!((p0 + kc - 1) * b.rs + j0 + cols <= b.data.len());
    let out = dst.as_mut_ptr();
    for q in 0..groups {
        let p = p0 + 2 * q;
        let row0 = b.data[p * b.rs + j0..].as_ptr();
        let row1 = (2 * q + 1 < kc).then(|| b.data[(p + 1) * b.rs + j0..].as_ptr());
        for c in (0..panels * nr).step_by(16) {
            let load = lane_mask(cols.saturating_sub(c));
            let at = (c / nr) * nr * kc + q * nr + c % nr;
            // SAFETY: loads under `load` lie in B's columns (asserted above); the 16
            // words land in group `q` of panel `c / nr`, inside `dst` (asserted).
            unsafe {
                let x = _mm512_maskz_loadu_ps(load, row0.add(c));
                let y = match row1 {
                    Some(r) => _mm512_maskz_loadu_ps(load, r.add(c)),
                    None => _mm512_setzero_ps(),
                };
                _mm512_storeu_si512(out.add(at).cast(), interleaved_pairs(x, y));
            }
        }
    }
}

/// Sixteen words `[x0 y0] [x1 y1] ...` of bf16 pairs from two rows of sixteen values.
///
/// # Safety
/// The CPU has AVX512BW and AVX512-BF16 (the callers' target features).
#[inline(always)]
unsafe fn interleaved_pairs(x: __m512, y: __m512) -> __m512i {
    // Words [x0 y0 x1 y1 ...] from [x0..x15 | y0..y15].
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    // SAFETY: as the caller guarantees.
    unsafe {
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(y, x));
        _mm512_permutexvar_epi16(interleave, both)
    }
}

/// Lanes `lane0..lane0 + lanes` x k `p0..p0 + kc` of `data`, element `(l, p)` at
/// `data[l * lane_stride + p * k_stride]`, for a panel `w` lanes wide.
struct Panel<'a> {
    data: &'a [f32],
    lane_stride: usize,
    k_stride: usize,
    lane0: usize,
    lanes: usize,
    p0: usize,
    kc: usize,
    w: usize,
}

impl<'a> Panel<'a> {
    /// `(lane_stride, k_stride)`, lanes `(lane0, lanes)`, k `(p0, kc)`, `w` wide.
    fn new(
        data: &'a [f32],
        (lane_stride, k_stride): (usize, usize),
        (lane0, lanes): (usize, usize),
        (p0, kc): (usize, usize),
        w: usize,
    ) -> Self {
        Self {
            data,
            lane_stride,
            k_stride,
            lane0,
            lanes,
            p0,
            kc,
            w,
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack(&self, dst: &mut [f32], scratch: &mut Vec<f32>) {
        let groups = self.kc.div_ceil(2);
        assert!(self.lanes <= self.w && dst.len() >= groups * self.w);
        if self.lanes == 0 || self.kc == 0 {
            dst[..groups * self.w].fill(0.0);
            return;
        }
        // The last element read: every access below is at most this index.
        let last = (self.lane0 + self.lanes - 1) * self.lane_stride
            + (self.p0 + self.kc - 1) * self.k_stride;
        assert!(last < self.data.len());
        // SAFETY: bounds asserted above; the features are enabled.
        unsafe {
            if self.k_stride == 1 {
                self.k_contiguous(dst, scratch);
            } else if self.lane_stride == 1 {
                self.lanes_contiguous(dst);
            } else {
                self.strided(dst);
            }
        }
    }

    /// Each lane's k values to bf16 in order (pairs already), then a transpose of words.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn k_contiguous(&self, dst: &mut [f32], scratch: &mut Vec<f32>) {
        let groups = self.kc.div_ceil(2);
        // Every half below `kc` of each lane is written by the loop; only an odd `kc`'s
        // spare half needs a zero, so the scratch is not cleared (it had been a write of
        // the whole panel, once more, per panel).
        if scratch.len() < self.lanes * groups {
            scratch.resize(self.lanes * groups, 0.0);
        }
        let halves = scratch.as_mut_ptr().cast::<u16>();
        for l in 0..self.lanes {
            let src = self.data[(self.lane0 + l) * self.lane_stride + self.p0..].as_ptr();
            for c in (0..self.kc).step_by(16) {
                let mask = lane_mask(self.kc - c);
                // SAFETY: the caller's bounds cover the `kc` values of the lane; the
                // scratch holds `2 * groups >= kc` halves per lane.
                unsafe {
                    let x = _mm512_maskz_loadu_ps(mask, src.add(c));
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(x));
                    _mm256_mask_storeu_epi16(halves.add(2 * l * groups + c).cast(), mask, h);
                }
            }
            if self.kc % 2 == 1 {
                // SAFETY: half `kc < 2 * groups` of the lane, inside the scratch.
                unsafe { *halves.add(2 * l * groups + self.kc) = 0 };
            }
        }
        pack_transposing(dst, scratch, groups, 0, self.lanes, 0, groups, self.w, true);
    }

    /// Two rows of k at a time, interleaved into words by one permute.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn lanes_contiguous(&self, dst: &mut [f32]) {
        let out = dst.as_mut_ptr();
        for q in 0..self.kc.div_ceil(2) {
            let p = self.p0 + 2 * q;
            let row0 = self.data[p * self.k_stride + self.lane0..].as_ptr();
            let row1 = (2 * q + 1 < self.kc)
                .then(|| self.data[(p + 1) * self.k_stride + self.lane0..].as_ptr());
            for c in (0..self.w).step_by(16) {
                let load = lane_mask(self.lanes.saturating_sub(c));
                let store = lane_mask(self.w - c);
                // SAFETY: loads under `load` lie in the lanes' values (bounds asserted
                // by `pack`); stores under `store` in group `q` of the panel.
                unsafe {
                    let x = _mm512_maskz_loadu_ps(load, row0.add(c));
                    let y = match row1 {
                        Some(r) => _mm512_maskz_loadu_ps(load, r.add(c)),
                        None => _mm512_setzero_ps(),
                    };
                    let words = interleaved_pairs(x, y);
                    _mm512_mask_storeu_epi32(out.add(q * self.w + c).cast(), store, words);
                }
            }
        }
    }

    /// Any strides, value by value (rounded as `vcvtneps2bf16` rounds).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn strided(&self, dst: &mut [f32]) {
        let bf16 = |l: usize, p: usize| -> u32 {
            if p >= self.kc {
                return 0;
            }
            let x = self.data[(self.lane0 + l) * self.lane_stride + (self.p0 + p) * self.k_stride];
            // SAFETY: the features are enabled.
            let h: __m128i = unsafe { std::mem::transmute(_mm_cvtneps_pbh(_mm_set1_ps(x))) };
            (_mm_cvtsi128_si32(h) as u32) & 0xffff
        };
        for q in 0..self.kc.div_ceil(2) {
            for l in 0..self.w {
                let word = if l < self.lanes {
                    bf16(l, 2 * q) | (bf16(l, 2 * q + 1) << 16)
                } else {
                    0
                };
                dst[q * self.w + l] = f32::from_bits(word);
            }
        }
    }
}

/// The first `n` (at most 16) lanes.
fn lane_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}
