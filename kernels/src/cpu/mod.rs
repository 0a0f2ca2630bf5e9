//! The CPU backend: explicit FMA/SIMD kernels (AVX-512, AVX2+FMA, NEON, portable) picked
//! at run time, multi-threaded on rayon's pool for large shapes.

mod elementwise;
pub mod gemm;
mod isa;
pub mod math;
mod optim;
mod reduce;
mod softmax;

pub use isa::{Isa, Simd};

use crate::error::check_len;
use crate::{
    AdamWParams, Backend, BinaryLayout, BinaryOp, GemmSpec, KernelError, Result, SgdParams,
    StridedLayout, UnaryOp,
};
use gemm::MatRef;

/// Runs every op on this CPU with the kernels of one instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBackend {
    simd: Simd,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The best instruction set of this CPU (see [`Simd::detect`]).
    pub fn new() -> Self {
        Self {
            simd: Simd::detect(),
        }
    }

    pub fn with_simd(simd: Simd) -> Self {
        Self { simd }
    }

    pub fn simd(&self) -> Simd {
        self.simd
    }
}

fn invalid(op: &'static str, reason: impl Into<String>) -> KernelError {
    KernelError::InvalidArgument {
        op,
        reason: reason.into(),
    }
}

fn check_labels(op: &'static str, labels: &[u32], rows: usize, cols: usize) -> Result<()> {
    check_len(op, "labels", rows, labels.len())?;
    match labels.iter().position(|&l| l as usize >= cols) {
        Some(i) => Err(invalid(
            op,
            format!(
                "label {} at row {i} is not below the {cols} classes",
                labels[i]
            ),
        )),
        None => Ok(()),
    }
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;

    fn name(&self) -> String {
        format!(
            "cpu ({}, {} threads)",
            self.simd.isa(),
            rayon::current_num_threads()
        )
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| {
            KernelError::Device(format!("cannot allocate {len} floats of host memory"))
        })?;
        buf.resize(len, 0.0);
        Ok(buf)
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn fill(&self, buf: &mut Vec<f32>, value: f32) -> Result<()> {
        buf.fill(value);
        Ok(())
    }

    fn gemm(&self, spec: &GemmSpec, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>) -> Result<()> {
        let (la, lb, lc) = spec.buffer_lens();
        if a.len() < la || b.len() < lb {
            return Err(invalid(
                "gemm",
                format!(
                    "operands hold {} and {} elements, the spec reads {la} and {lb}",
                    a.len(),
                    b.len()
                ),
            ));
        }
        check_len("gemm", "c", lc, c.len())?;
        let (m, n, k) = (spec.m, spec.n, spec.k);
        for i in 0..spec.batch {
            let a = MatRef::row_major(&a[i * spec.stride_a..], m, k, spec.trans_a);
            let b = MatRef::row_major(&b[i * spec.stride_b..], k, n, spec.trans_b);
            let c = &mut c[i * m * n..(i + 1) * m * n];
            gemm::sgemm(self.simd, m, n, k, spec.alpha, a, b, spec.beta, c, n)?;
        }
        Ok(())
    }

    fn unary(&self, op: UnaryOp, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        check_len("unary", "y", x.len(), y.len())?;
        elementwise::unary(self.simd, op, x, y);
        Ok(())
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        check_len("unary_backward", "y", x.len(), y.len())?;
        check_len("unary_backward", "dy", x.len(), dy.len())?;
        check_len("unary_backward", "dx", x.len(), dx.len())?;
        elementwise::unary_backward(self.simd, op, x, y, dy, dx);
        Ok(())
    }

    fn affine(&self, x: &Vec<f32>, y: &mut Vec<f32>, mul: f32, add: f32) -> Result<()> {
        check_len("affine", "y", x.len(), y.len())?;
        elementwise::affine(self.simd, x, y, mul, add);
        Ok(())
    }

    fn binary(
        &self,
        op: BinaryOp,
        layout: &BinaryLayout,
        lhs: &Vec<f32>,
        rhs: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let rank = layout.shape.len();
        if layout.lhs_strides.len() != rank || layout.rhs_strides.len() != rank {
            return Err(invalid("binary", "strides and shape differ in rank"));
        }
        check_len("binary", "out", layout.elem_count(), out.len())?;
        let span = |strides: &[usize]| {
            StridedLayout {
                shape: layout.shape.clone(),
                strides: strides.to_vec(),
                offset: 0,
            }
            .span()
        };
        if span(&layout.lhs_strides) > lhs.len() || span(&layout.rhs_strides) > rhs.len() {
            return Err(invalid(
                "binary",
                "an operand's strides run past its buffer",
            ));
        }
        elementwise::binary(self.simd, op, layout, lhs, rhs, out);
        Ok(())
    }

    fn copy_strided(
        &self,
        src: &Vec<f32>,
        layout: &StridedLayout,
        dst: &mut Vec<f32>,
    ) -> Result<()> {
        if layout.strides.len() != layout.shape.len() {
            return Err(invalid("copy_strided", "strides and shape differ in rank"));
        }
        check_len("copy_strided", "dst", layout.elem_count(), dst.len())?;
        if layout.span() > src.len() {
            return Err(invalid(
                "copy_strided",
                "the view runs past the source buffer",
            ));
        }
        elementwise::copy_strided(src, layout, dst);
        Ok(())
    }

    fn sum_axis(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()> {
        check_len("sum_axis", "x", outer * axis * inner, x.len())?;
        check_len("sum_axis", "out", outer * inner, out.len())?;
        reduce::sum_axis(self.simd, x, out, outer, axis, inner);
        Ok(())
    }

    fn log_softmax(&self, x: &Vec<f32>, y: &mut Vec<f32>, rows: usize, cols: usize) -> Result<()> {
        check_len("log_softmax", "x", rows * cols, x.len())?;
        check_len("log_softmax", "y", rows * cols, y.len())?;
        softmax::log_softmax(self.simd, x, y, cols);
        Ok(())
    }

    fn log_softmax_backward(
        &self,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        for (name, len) in [("y", y.len()), ("dy", dy.len()), ("dx", dx.len())] {
            check_len("log_softmax_backward", name, rows * cols, len)?;
        }
        softmax::log_softmax_backward(self.simd, y, dy, dx, cols);
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        logits: &Vec<f32>,
        labels: &[u32],
        probs: &mut Vec<f32>,
        loss: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "softmax_cross_entropy";
        check_len(OP, "logits", rows * cols, logits.len())?;
        check_len(OP, "probs", rows * cols, probs.len())?;
        check_len(OP, "loss", 1, loss.len())?;
        check_labels(OP, labels, rows, cols)?;
        loss[0] = softmax::softmax_cross_entropy(self.simd, logits, labels, probs, cols);
        Ok(())
    }

    fn softmax_cross_entropy_backward(
        &self,
        probs: &Vec<f32>,
        labels: &[u32],
        dloss: &Vec<f32>,
        dlogits: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        const OP: &str = "softmax_cross_entropy_backward";
        check_len(OP, "probs", rows * cols, probs.len())?;
        check_len(OP, "dlogits", rows * cols, dlogits.len())?;
        check_len(OP, "dloss", 1, dloss.len())?;
        check_labels(OP, labels, rows, cols)?;
        softmax::softmax_cross_entropy_backward(self.simd, probs, labels, dloss[0], dlogits, cols);
        Ok(())
    }

    fn sgd_step(
        &self,
        p: &SgdParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        momentum: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        check_len("sgd_step", "grad", param.len(), grad.len())?;
        match (&momentum, p.momentum != 0.0) {
            (Some(buf), true) => check_len("sgd_step", "momentum", param.len(), buf.len())?,
            (None, true) => {
                return Err(invalid("sgd_step", "momentum > 0 needs a momentum buffer"))
            }
            _ => {}
        }
        let momentum = momentum
            .filter(|_| p.momentum != 0.0)
            .map(|b| b.as_mut_slice());
        optim::sgd(self.simd, p, param, grad, momentum);
        Ok(())
    }

    fn adamw_step(
        &self,
        p: &AdamWParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        for (name, len) in [("grad", grad.len()), ("m", m.len()), ("v", v.len())] {
            check_len("adamw_step", name, param.len(), len)?;
        }
        if p.step == 0 {
            return Err(invalid("adamw_step", "step counts from 1"));
        }
        optim::adamw(self.simd, p, param, grad, m, v);
        Ok(())
    }
}
