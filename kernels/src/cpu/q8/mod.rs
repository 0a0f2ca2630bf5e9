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
    /// `vpmaddwd` on int8 values widened to 16 bits.
    Avx2,
    Portable,
}

impl Q8Path {
    /// The fastest path `simd` allows on this CPU.
    pub fn for_simd(simd: Simd) -> Q8Path {
        #[cfg(target_arch = "x86_64")]
        {
            use super::Isa;
            let isa = simd.isa();
            if isa == Isa::Avx512
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512bw")
            {
                return Q8Path::Vnni512;
            }
            if matches!(isa, Isa::Avx512 | Isa::Avx2Fma) {
                return Q8Path::Avx2;
            }
        }
        let _ = simd;
        Q8Path::Portable
    }

    pub fn name(self) -> &'static str {
        match self {
            Q8Path::Vnni512 => "avx512-vnni",
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

fn quantize_rows(x: &[f32], m: usize, k: usize, padded_k: usize, widen: bool) -> Activations {
    let mut values = vec![128u8; m * padded_k];
    let mut scales = vec![0f32; m];
    for ((row, out), scale) in x
        .chunks_exact(k)
        .zip(values.chunks_exact_mut(padded_k))
        .zip(&mut scales)
    {
        let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        if !amax.is_finite() {
            // NaN (max ignores it) or infinite: the row's outputs become NaN.
            *scale = f32::NAN;
            continue;
        }
        if row.iter().any(|v| v.is_nan()) {
            *scale = f32::NAN;
            continue;
        }
        *scale = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (o, &v) in out.iter_mut().zip(row) {
            *o = (round_small(v * inv) as i32 + 128) as u8;
        }
    }
    let widened = if widen {
        values
            .iter()
            .map(|&u| i16::from((u ^ 0x80) as i8))
            .collect()
    } else {
        Vec::new()
    };
    Activations {
        values,
        widened,
        scales,
        padded_k,
    }
}

/// `v` (at most 2^22 in magnitude) rounded to the nearest integer, ties to even, by
/// adding and taking away 1.5 * 2^23: no call to libm's `roundf`, which the baseline
/// x86-64 target makes of `f32::round` (SSE4.1's `roundss` not being assumed), and which
/// cost more than the integer products of a batch.
#[inline(always)]
fn round_small(v: f32) -> f32 {
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
    let Q8Spec { m, n, k, relu } = *spec;
    let p = Packed::of(n, k);
    let acts = quantize_rows(x, m, k, p.padded_k(), path == Q8Path::Avx2);
    let (weights, corrections) = packed.split_at(p.weight_words());
    let weights: &[u8] = bytemuck::cast_slice(weights);
    let corrections: &[i32] = bytemuck::cast_slice(corrections);
    // Integer sums, one `[m, TASK_WIDTH]` run per task (BLOCKS_PER_TASK blocks of
    // outputs), so that tasks write disjoint slices.
    let tasks = p.blocks.div_ceil(BLOCKS_PER_TASK);
    let mut sums = vec![0i32; tasks * m * TASK_WIDTH];
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
    if tasks > 1 && m * n * k >= PARALLEL_MIN_MACS {
        sums.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, s)| task(t, s));
    } else {
        sums.chunks_mut(chunk)
            .enumerate()
            .for_each(|(t, s)| task(t, s));
    }
    finish(&sums, &acts.scales, scales, bias, relu, n, out);
}

/// The f32 outputs from the integer sums: the same scalar arithmetic on every path.
fn finish(
    sums: &[i32],
    row_scales: &[f32],
    scales: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    n: usize,
    out: &mut [f32],
) {
    let m = row_scales.len();
    for (r, (&sx, out)) in row_scales.iter().zip(out.chunks_exact_mut(n)).enumerate() {
        for (j, o) in out.iter_mut().enumerate() {
            let (t, col) = (j / TASK_WIDTH, j % TASK_WIDTH);
            let sum = sums[(t * m + r) * TASK_WIDTH + col];
            let mut y = sum as f32 * (sx * scales[j]);
            if let Some(b) = bias {
                y += b[j];
            }
            *o = if relu && y < 0.0 { 0.0 } else { y };
        }
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
