//! Fused attention on the GPU: the forward kernel, then a backward pass of three (the
//! row correction `dout . out`, the query gradient, the key and value gradients), each
//! compiled for the head size at hand. Workgroups take 64 rows of one head; heads are the
//! grid's y dimension, in launches of at most the device's grid limit.

use super::params::{self, u32_of};
use super::shaders::{AttentionKernel, Shader};
use super::{GpuBackend, GpuBuffer};
use crate::{validate, AttentionSpec, Backend, Result};

/// Rows per workgroup (attention_common.wgsl's BLOCK).
const BLOCK: usize = 64;
/// The largest head the kernels keep in registers.
pub const MAX_HEAD_DIM: usize = 256;

impl GpuBackend {
    fn attention_shader(
        &self,
        op: &'static str,
        kernel: AttentionKernel,
        d: usize,
    ) -> Result<Shader> {
        if d == 0 || d > MAX_HEAD_DIM {
            return Err(validate::invalid(
                op,
                format!("the GPU kernels take head sizes 1 to {MAX_HEAD_DIM}, got {d}"),
            ));
        }
        Ok(Shader::Attention(kernel, d as u32))
    }

    /// Launches `shader` over `rows` rows of every head.
    fn per_head(
        &self,
        shader: Shader,
        mut p: params::Attention,
        batch: usize,
        rows: usize,
        buffers: &[&GpuBuffer],
    ) -> Result<()> {
        let max = self.ctx.shared.limits.max_compute_workgroups_per_dimension as usize;
        let blocks = rows.div_ceil(BLOCK);
        if blocks > max {
            return Err(validate::invalid(
                "attention",
                format!("{rows} rows need more workgroups than this device can launch"),
            ));
        }
        for head_base in (0..batch).step_by(max) {
            p.head_base = head_base as u32;
            let heads = (batch - head_base).min(max);
            self.dispatch(shader, &p, buffers, [blocks as u32, heads as u32, 1])?;
        }
        Ok(())
    }

    pub(super) fn attention_impl(
        &self,
        spec: &AttentionSpec,
        q: &GpuBuffer,
        k: &GpuBuffer,
        v: &GpuBuffer,
        out: &mut GpuBuffer,
        lse: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "attention";
        spec.validate_forward(q.len, k.len, v.len, out.len, lse.len)?;
        if spec.batch == 0 || spec.tq == 0 {
            return Ok(());
        }
        if spec.tk == 0 || spec.d == 0 {
            self.fill(out, 0.0)?;
            return self.fill(lse, if spec.tk == 0 { f32::NEG_INFINITY } else { 0.0 });
        }
        let shader = self.attention_shader(OP, AttentionKernel::Forward, spec.d)?;
        let p = params::Attention::new(OP, spec)?;
        self.per_head(shader, p, spec.batch, spec.tq, &[q, k, v, &*out, &*lse])
    }

    /// `inputs` are q, k, v, out, lse, dout.
    pub(super) fn attention_backward_impl(
        &self,
        spec: &AttentionSpec,
        inputs: [&GpuBuffer; 6],
        dq: &mut GpuBuffer,
        dk: &mut GpuBuffer,
        dv: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "attention_backward";
        let [q, k, v, out, lse, dout] = inputs;
        spec.validate_backward([
            ("q", q.len),
            ("k", k.len),
            ("v", v.len),
            ("out", out.len),
            ("lse", lse.len),
            ("dout", dout.len),
            ("dq", dq.len),
            ("dk", dk.len),
            ("dv", dv.len),
        ])?;
        if spec.batch == 0 || spec.tq == 0 || spec.tk == 0 || spec.d == 0 {
            self.fill(dq, 0.0)?;
            self.fill(dk, 0.0)?;
            return self.fill(dv, 0.0);
        }
        let p = params::Attention::new(OP, spec)?;
        u32_of(OP, "lse elements", spec.lse_len())?;
        let dsum = self.buffer(spec.lse_len())?;
        let shader = |kernel| self.attention_shader(OP, kernel, spec.d);
        self.per_head(
            shader(AttentionKernel::Dsum)?,
            p,
            spec.batch,
            spec.tq,
            &[out, dout, &dsum],
        )?;
        let reads = [q, k, v, lse, dout, &dsum];
        let bufs_dq = [reads.as_slice(), &[&*dq]].concat();
        self.per_head(
            shader(AttentionKernel::Dq)?,
            p,
            spec.batch,
            spec.tq,
            &bufs_dq,
        )?;
        let bufs_dkdv = [reads.as_slice(), &[&*dk, &*dv]].concat();
        self.per_head(
            shader(AttentionKernel::Dkdv)?,
            p,
            spec.batch,
            spec.tk,
            &bufs_dkdv,
        )
    }
}
