//! The CPU's int8 linear layer: weights packed once into blocks of 16 output rows by 4
//! inputs (the operand shape of AVX512-VNNI's `vpdpbusd`), each activation row quantized
//! on the fly to int8 with its own scale, integer dot products, and one f32 rescale per
//! output. Every code path computes the same integer sums, so they agree bit for bit.
//!
//! Packed words (a `Vec<f32>` holding bytes, as every CPU buffer is one): for each block
//! of 16 outputs and each group of 4 inputs, 16 words of 4 int8 values (output `j`'s
//! inputs `4g..4g + 4`); then, per output, `128 * sum_k w[n, k]`, which undoes VNNI's
//! unsigned activations (`q + 128`). Rows past `n` and inputs past `k` are zeros.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::Simd;
use crate::quant::{Int8Rows, Q8Spec};
use rayon::prelude::*;
use std::cell::RefCell;

/// Outputs per block: one 512-bit register of i32 sums.
pub(super) const BLOCK: usize = 16;
/// Blocks a task (and a VNNI tile) covers.
const BLOCKS_PER_TASK: usize = 4;
/// Outputs a task covers: the row stride of its integer sums.
const TASK_WIDTH: usize = BLOCKS_PER_TASK * BLOCK;
/// Below this many multiply-adds the product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// Which integer dot product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q8Path {
    /// `vpdpbusd` on 512-bit registers: 64 multiply-adds an instruction.
    Vnni512,
    /// AVX-VNNI's `vpdpbusd` on 256-bit registers (Alder Lake and later, Zen 5): for
    /// CPUs with the VEX form and no AVX-512.
    AvxVnni,
    /// `vpmaddwd` on int8 values widened to 16 bits.
    Avx2,
    Portable,
}

impl Q8Path {
    /// The fastest path `simd` allows on this CPU.
    pub fn for_simd(simd: Simd) -> Q8Path {
        use super::Isa;
        let allowed = |path: Q8Path| match path {
            Q8Path::Vnni512 => simd.isa() == Isa::Avx512,
            Q8Path::AvxVnni | Q8Path::Avx2 => matches!(simd.isa(), Isa::Avx512 | Isa::Avx2Fma),
            Q8Path::Portable => true,
        };
        Q8Path::ALL
            .into_iter()
            .find(|&p| allowed(p) && p.is_supported())
            .unwrap_or(Q8Path::Portable)
    }

    pub const ALL: [Q8Path; 4] = [
        Q8Path::Vnni512,
        Q8Path::AvxVnni,
        Q8Path::Avx2,
        Q8Path::Portable,
    ];

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Q8Path::Vnni512 => {
                    is_x86_feature_detected!("avx512vnni")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512f")
                }
                Q8Path::AvxVnni => {
                    is_x86_feature_detected!("avxvnni") && is_x86_feature_detected!("avx2")
                }
                Q8Path::Avx2 => is_x86_feature_detected!("avx2"),
                Q8Path::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Q8Path::Portable
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Q8Path::Vnni512 => "avx512-vnni",
            Q8Path::AvxVnni => "avx-vnni",
            Q8Path::Avx2 => "avx2",
            Q8Path::Portable => "portable",
        }
    }
}

/// The geometry of a packed weight.
#[derive(Debug, Clone, Copy)]
struct Packed {
    blocks: usize,
    groups: usize,
}

impl Packed {
    fn of(n: usize, k: usize) -> Packed {
        Packed {
            blocks: n.div_ceil(BLOCK),
            groups: k.div_ceil(4),
        }
    }

    fn weight_words(self) -> usize {
        self.blocks * self.groups * BLOCK
    }

    fn words(self) -> usize {
        self.weight_words() + self.blocks * BLOCK
    }

    fn padded_k(self) -> usize {
        self.groups * 4
    }
}

/// Words a packed `[n, k]` weight takes.
pub fn packed_len(n: usize, k: usize) -> usize {
    Packed::of(n, k).words()
}

/// `w` in the layout [`linear`] reads.
pub fn pack(w: &Int8Rows) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    let p = Packed::of(n, k);
    let mut words = vec![0u32; p.words()];
    let (weights, corrections) = words.split_at_mut(p.weight_words());
    for (row, values) in w.values().chunks_exact(k).enumerate() {
        let (block, lane) = (row / BLOCK, row % BLOCK);
        for (g, quad) in values.chunks(4).enumerate() {
            let mut bytes = [0u8; 4];
            for (b, &v) in bytes.iter_mut().zip(quad) {
                *b = v as u8;
            }
            weights[(block * p.groups + g) * BLOCK + lane] = u32::from_le_bytes(bytes);
        }
        let sum: i32 = values.iter().map(|&v| i32::from(v)).sum();
        corrections[row] = (128 * sum) as u32;
    }
    words.into_iter().map(f32::from_bits).collect()
}

/// The int8 values of a packed `[n, k]` weight, row-major (what [`pack`] was given).
pub fn unpack(packed: &[f32], n: usize, k: usize) -> Vec<i8> {
    let p = Packed::of(n, k);
    let bytes: &[u8] = bytemuck::cast_slice(packed);
    let mut out = Vec::with_capacity(n * k);
    for row in 0..n {
        let (block, lane) = (row / BLOCK, row % BLOCK);
        out.extend((0..k).map(|i| {
            let word = (block * p.groups + i / 4) * BLOCK + lane;
            bytes[word * 4 + i % 4] as i8
        }));
    }
    out
}

/// Activation rows quantized to int8, stored `q + 128` (unsigned, as `vpdpbusd` takes
/// them) with the padding to a whole group as 128 (zero), and each row's scale.
struct Activations {
    values: Vec<u8>,
    /// The same values as signed 16-bit integers, for the AVX2 path's `vpmaddwd`.
    widened: Vec<i16>,
    scales: Vec<f32>,
    padded_k: usize,
}

/// Buffers a call reuses from the last on the same thread: fresh ones each call meant
/// `mmap`s and page faults costing as much as the products of a batch.
#[derive(Default)]
struct Scratch {
    values: Vec<u8>,
    widened: Vec<i16>,
    sums: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

fn quantize_rows(
    x: &[f32],
    (m, k, padded_k): (usize, usize, usize),
    path: Q8Path,
    scratch: &mut Scratch,
) -> Activations {
    let widen = path == Q8Path::Avx2;
    let quantize_row = |row: &[f32], out: &mut [u8]| match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the VNNI path is picked only where the CPU has AVX512F and AVX512BW.
        Q8Path::Vnni512 => unsafe { x86::quantize_row_avx512(row, out) },
        _ => quantize_row(row, out),
    };
    let mut values = std::mem::take(&mut scratch.values);
    values.clear();
    values.resize(m * padded_k, 128);
    let mut scales = vec![0f32; m];
    if m * k >= PARALLEL_MIN_MACS / 16 {
        x.par_chunks_exact(k)
            .zip(values.par_chunks_exact_mut(padded_k))
            .zip(scales.par_iter_mut())
            .for_each(|((row, out), scale)| *scale = quantize_row(row, out));
    } else {
        let rows = x.chunks_exact(k).zip(values.chunks_exact_mut(padded_k));
        for ((row, out), scale) in rows.zip(&mut scales) {
            *scale = quantize_row(row, out);
        }
    }
    let mut widened = std::mem::take(&mut scratch.widened);
    widened.clear();
    if widen {
        widened.extend(values.iter().map(|&u| i16::from((u ^ 0x80) as i8)));
    }
    Activations {
        values,
        widened,
        scales,
        padded_k,
    }
}

/// One row of activations as `q + 128`, and its scale: NaN for a row holding a NaN or
/// an infinity (its outputs become NaN). The reference the SIMD versions match.
fn quantize_row(row: &[f32], out: &mut [u8]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut nan = false;
    let chunks = row.chunks_exact(16);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            let a = v.abs();
            *l = if a > *l { a } else { *l };
            nan |= v.is_nan();
        }
    }
    for &v in tail {
        let a = v.abs();
        lanes[0] = if a > lanes[0] { a } else { lanes[0] };
        nan |= v.is_nan();
    }
    let amax = lanes.iter().fold(0f32, |m, &l| if l > m { l } else { m });
    if nan || !amax.is_finite() {
        return f32::NAN;
    }
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(row) {
        *o = (round_small(v * inv) as i32 + 128) as u8;
    }
    amax / 127.0
}

/// `v` (at most 2^22 in magnitude) rounded to the nearest integer, ties to even, by
/// adding and taking away 1.5 * 2^23: no call to libm's `roundf`, which the baseline
/// x86-64 target makes of `f32::round` (SSE4.1's `roundss` not being assumed), and which
/// cost more than the integer products of a batch.
#[inline(always)]
pub(super) fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// `out = act(x w^T * scale + bias)` (see [`Q8Spec`]); `spec` is checked by the caller.
pub fn linear(
    path: Q8Path,
    spec: &Q8Spec,
    x: &[f32],
    packed: &[f32],
    scales: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => linear_with(path, spec, (x, packed, scales, bias), out, &mut scratch),
        // Re-entered on this thread (a rayon join of this call ran a task of another):
        // fresh buffers.
        Err(_) => {
            let fresh = &mut Scratch::default();
            linear_with(path, spec, (x, packed, scales, bias), out, fresh)
        }
    })
}

type Operands<'a> = (&'a [f32], &'a [f32], &'a [f32], Option<&'a [f32]>);

fn linear_with(
    path: Q8Path,
    spec: &Q8Spec,
    (x, packed, scales, bias): Operands,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let Q8Spec { m, n, k, relu } = *spec;
    let p = Packed::of(n, k);
    let acts = quantize_rows(x, (m, k, p.padded_k()), path, scratch);
    let (weights, corrections) = packed.split_at(p.weight_words());
    let weights: &[u8] = bytemuck::cast_slice(weights);
    let corrections: &[i32] = bytemuck::cast_slice(corrections);
    // Integer sums, one `[m, TASK_WIDTH]` run per task (BLOCKS_PER_TASK blocks of
    // outputs), so that tasks write disjoint slices.
    let tasks = p.blocks.div_ceil(BLOCKS_PER_TASK);
    let mut sums = std::mem::take(&mut scratch.sums);
    sums.clear();
    sums.resize(tasks * m * TASK_WIDTH, 0);
    let task = |t: usize, sums: &mut [i32]| {
        let first_block = t * BLOCKS_PER_TASK;
        let tile = Tile {
            acts: &acts,
            weights,
            corrections,
            groups: p.groups,
            first_block,
            blocks: BLOCKS_PER_TASK.min(p.blocks - first_block),
        };
        tile.run(path, sums);
    };
    let chunk = (m * TASK_WIDTH).max(1);
    let parallel = m * n * k >= PARALLEL_MIN_MACS;
    if tasks > 1 && parallel {
        sums.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, s)| task(t, s));
    } else {
        sums.chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, s)| task(t, s));
    }
    finish(
        &sums,
        &acts.scales,
        scales,
        bias,
        relu,
        n,
        out,
        parallel && m > 1,
    );
    scratch.sums = sums;
    scratch.values = acts.values;
    scratch.widened = acts.widened;
}

/// The f32 outputs from the integer sums: the same scalar arithmetic on every path, a
/// row at a time (rows in parallel for a large product).
#[allow(clippy::too_many_arguments)]
fn finish(
    sums: &[i32],
    row_scales: &[f32],
    scales: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    n: usize,
    out: &mut [f32],
    parallel: bool,
) {
    let m = row_scales.len();
    let row = |r: usize, out: &mut [f32]| {
        let sx = row_scales[r];
        for (t, out) in out.chunks_mut(TASK_WIDTH).enumerate() {
            let first = t * TASK_WIDTH;
            let sums = &sums[(t * m + r) * TASK_WIDTH..][..out.len()];
            let scales = &scales[first..first + out.len()];
            for (j, (o, (&sum, &s))) in out.iter_mut().zip(sums.iter().zip(scales)).enumerate() {
                let mut y = sum as f32 * (sx * s);
                if let Some(b) = bias {
                    y += b[first + j];
                }
                *o = if relu && y < 0.0 { 0.0 } else { y };
            }
        }
    };
    if parallel {
        out.par_chunks_mut(n)
            .enumerate()
            .for_each(|(r, o)| row(r, o));
    } else {
        out.chunks_mut(n).enumerate().for_each(|(r, o)| row(r, o));
    }
}

/// The blocks `first_block..first_block + blocks` of every row.
struct Tile<'a> {
    acts: &'a Activations,
    weights: &'a [u8],
    corrections: &'a [i32],
    groups: usize,
    first_block: usize,
    blocks: usize,
}

impl Tile<'_> {
    /// Fills `sums`, `[rows, TASK_WIDTH]`: row `r`'s sums of block `first_block + i` at
    /// `r * TASK_WIDTH + i * 16`.
    fn run(&self, path: Q8Path, sums: &mut [i32]) {
        match path {
            #[cfg(target_arch = "x86_64")]
            Q8Path::Vnni512 => {
                // SAFETY: `Q8Path::for_simd` picks this path only where the CPU has
                // AVX512-VNNI and AVX512-BW.
                unsafe { x86::vnni_tile(self, sums) }
            }
            #[cfg(target_arch = "x86_64")]
            Q8Path::AvxVnni => {
                // SAFETY: picked only where the CPU has AVX-VNNI and AVX2.
                unsafe { x86::avx_vnni_tile(self, sums) }
            }
            #[cfg(target_arch = "x86_64")]
            Q8Path::Avx2 => {
                // SAFETY: picked only where the CPU has AVX2.
                unsafe { x86::avx2_tile(self, sums) }
            }
            _ => portable::tile(self, sums),
        }
    }

    /// Activation row `r`'s bytes.
    fn row(&self, r: usize) -> &[u8] {
        let k = self.acts.padded_k;
        &self.acts.values[r * k..(r + 1) * k]
    }

    /// Block `b`'s packed bytes: `groups` runs of 16 outputs x 4 inputs.
    fn block(&self, b: usize) -> &[u8] {
        let len = self.groups * BLOCK * 4;
        &self.weights[b * len..(b + 1) * len]
    }

    fn rows(&self) -> usize {
        self.acts.scales.len()
    }

    /// Activation row `r` as signed 16-bit values (the AVX2 path).
    fn widened_row(&self, r: usize) -> &[i16] {
        let k = self.acts.padded_k;
        &self.acts.widened[r * k..(r + 1) * k]
    }
}

#[cfg(test)]
mod tests;
