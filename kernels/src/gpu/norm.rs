//! Fused layer norm on the GPU: one workgroup per row forward and for the input
//! gradient, one invocation per column for the parameter gradients (rows summed in
//! order, no atomics).

use super::params::{self, u32_of};
use super::shaders::Shader;
use super::{GpuBackend, GpuBuffer};
use crate::{validate, Backend, Result};

impl GpuBackend {
    fn norm_params(
        op: &'static str,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<params::LayerNorm> {
        u32_of(op, "rows * cols", rows.saturating_mul(cols))?;
        Ok(params::LayerNorm {
            rows: u32_of(op, "rows", rows)?,
            cols: u32_of(op, "cols", cols)?,
            eps,
            _pad: 0,
        })
    }

    pub(super) fn layer_norm_impl(
        &self,
        [x, gamma, beta]: [&GpuBuffer; 3],
        y: &mut GpuBuffer,
        stats: &mut GpuBuffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "layer_norm";
        validate::layer_norm(
            OP,
            &[("x", x.len), ("y", y.len)],
            &[("gamma", gamma.len), ("beta", beta.len)],
            stats.len,
            rows,
            cols,
        )?;
        if rows * cols == 0 {
            return Ok(());
        }
        let p = Self::norm_params(OP, rows, cols, eps)?;
        let bufs = [x, gamma, beta, &*y, &*stats];
        self.dispatch(Shader::LayerNorm, &p, &bufs, self.grid(rows, 1)?)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_norm_backward_impl(
        &self,
        [x, gamma, stats, dy]: [&GpuBuffer; 4],
        dx: &mut GpuBuffer,
        dgamma: &mut GpuBuffer,
        dbeta: &mut GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "layer_norm_backward";
        validate::layer_norm(
            OP,
            &[("x", x.len), ("dy", dy.len), ("dx", dx.len)],
            &[
                ("gamma", gamma.len),
                ("dgamma", dgamma.len),
                ("dbeta", dbeta.len),
            ],
            stats.len,
            rows,
            cols,
        )?;
        if cols == 0 {
            return Ok(());
        }
        if rows == 0 {
            self.fill(dgamma, 0.0)?;
            return self.fill(dbeta, 0.0);
        }
        let p = Self::norm_params(OP, rows, cols, 0.0)?;
        let bufs = [x, gamma, stats, dy, &*dx];
        self.dispatch(Shader::LayerNormBackward, &p, &bufs, self.grid(rows, 1)?)?;
        let bufs = [x, stats, dy, &*dgamma, &*dbeta];
        self.dispatch(Shader::LayerNormParamsGrad, &p, &bufs, self.grid(cols, 64)?)
    }
}
