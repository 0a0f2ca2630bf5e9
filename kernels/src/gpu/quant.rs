//! Int8 weights on the GPU: rows of `ceil(k / 4)` words, four values to a word, read by
//! linear_q8.wgsl, which dequantizes them in its tile loads.

use super::params::u32_of;
use super::shaders::Shader;
use super::{GpuBackend, GpuBuffer, WG};
use crate::{Backend, Int8Rows, KernelError, Q8Spec, Result};
use bytemuck::{Pod, Zeroable};

/// linear_q8.wgsl's output tile.
const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct LinearParams {
    m: u32,
    n: u32,
    k: u32,
    kw: u32,
    has_bias: u32,
    relu: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DequantizeParams {
    n: u32,
    k: u32,
    kw: u32,
    _pad: u32,
}

/// Words per row of a weight with `k` inputs.
fn row_words(k: usize) -> usize {
    k.div_ceil(4)
}

impl GpuBackend {
    pub(super) fn pack_q8_impl(&self, w: &Int8Rows) -> Result<(GpuBuffer, GpuBuffer)> {
        let kw = row_words(w.cols());
        let mut words = vec![0u32; w.rows() * kw];
        for (row, values) in words
            .chunks_exact_mut(kw)
            .zip(w.values().chunks_exact(w.cols()))
        {
            for (word, quad) in row.iter_mut().zip(values.chunks(4)) {
                let mut bytes = [0u8; 4];
                for (b, &v) in bytes.iter_mut().zip(quad) {
                    *b = v as u8;
                }
                *word = u32::from_le_bytes(bytes);
            }
        }
        Ok((self.upload_u32(&words)?, self.upload(w.scales())?))
    }

    pub(super) fn unpack_q8_impl(&self, packed: &GpuBuffer, n: usize, k: usize) -> Result<Vec<i8>> {
        let kw = row_words(k);
        crate::error::check_len("unpack_q8", "packed", n * kw, packed.len)?;
        let words = self.download_u32(packed)?;
        Ok(words
            .chunks_exact(kw)
            .flat_map(|row| {
                row.iter()
                    .flat_map(|w| w.to_le_bytes())
                    .take(k)
                    .map(|b| b as i8)
            })
            .collect())
    }

    pub(super) fn linear_q8_impl(
        &self,
        spec: &Q8Spec,
        x: &GpuBuffer,
        packed: &GpuBuffer,
        scales: &GpuBuffer,
        bias: Option<&GpuBuffer>,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "linear_q8";
        spec.check(x.len, bias.map(|b| b.len), out.len)?;
        let Q8Spec { m, n, k, relu } = *spec;
        crate::error::check_len(OP, "packed", n * row_words(k), packed.len)?;
        crate::error::check_len(OP, "scales", n, scales.len)?;
        if m == 0 {
            return Ok(());
        }
        let p = LinearParams {
            m: u32_of(OP, "m", m)?,
            n: u32_of(OP, "n", n)?,
            k: u32_of(OP, "k", k)?,
            kw: u32_of(OP, "k", row_words(k))?,
            has_bias: u32::from(bias.is_some()),
            relu: u32::from(relu),
            _pad: [0; 2],
        };
        let max = self.ctx.shared.limits.max_compute_workgroups_per_dimension as usize;
        let groups = [n.div_ceil(TILE), m.div_ceil(TILE)];
        if groups.iter().any(|&g| g > max) {
            return Err(KernelError::InvalidArgument {
                op: OP,
                reason: format!("{m}x{n} outputs need more than {max} workgroups a side"),
            });
        }
        // Without a bias, the scales stand in for it (the kernel does not read it).
        let bias = bias.unwrap_or(scales);
        self.dispatch(
            Shader::LinearQ8,
            &p,
            &[x, packed, scales, bias, &*out],
            [groups[0] as u32, groups[1] as u32, 1],
        )
    }

    pub(super) fn dequantize_q8_impl(
        &self,
        n: usize,
        k: usize,
        packed: &GpuBuffer,
        scales: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "dequantize_q8";
        crate::error::check_len(OP, "packed", n * row_words(k), packed.len)?;
        crate::error::check_len(OP, "scales", n, scales.len)?;
        crate::error::check_len(OP, "out", n * k, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let p = DequantizeParams {
            n: u32_of(OP, "n", n)?,
            k: u32_of(OP, "k", k)?,
            kw: u32_of(OP, "k", row_words(k))?,
            _pad: 0,
        };
        self.dispatch(
            Shader::DequantizeQ8,
            &p,
            &[packed, scales, &*out],
            self.grid(n * k, WG)?,
        )
    }
}
