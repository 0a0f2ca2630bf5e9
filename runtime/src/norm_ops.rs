//! Layer normalisation as one fused, differentiable op.

use crate::backprop::Op;
use crate::device::{buf, on_device, wrap};
use crate::ops::{record, same_device};
use crate::{Error, Result, Shape, Tensor};
use ringtrain_kernels::{Backend, DType};

impl Tensor {
    /// Layer norm over the last dimension: each row scaled to zero mean and unit (biased)
    /// variance, then by `weight` and shifted by `bias` (both `[features]`), as PyTorch's
    /// `F.layer_norm`. One kernel forward and one backward.
    pub fn layer_norm(&self, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        const OP: &str = "layer_norm";
        same_device(OP, self, weight)?;
        same_device(OP, self, bias)?;
        for t in [self, weight, bias] {
            t.expect_dtype(DType::F32, OP)?;
        }
        let cols = *self.dims().last().unwrap_or(&0);
        if self.rank() == 0 || weight.dims() != [cols] || bias.dims() != [cols] {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: weight.shape().clone(),
                hint: " (inputs [.., features], weight and bias [features])",
            });
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::InvalidArgument(format!(
                "{OP}: eps must be finite and > 0, got {eps}"
            )));
        }
        let rows = self.elem_count() / cols.max(1);
        let (y, stats) = {
            let (guards, at) = Tensor::read_all(&[self, weight, bias]);
            let s = |i: usize| &*guards[at[i]];
            on_device!(self.device(), b => {
                let mut y = b.alloc(self.elem_count())?;
                let mut stats = b.alloc(2 * rows)?;
                b.layer_norm(buf(b, s(0))?, buf(b, s(1))?, buf(b, s(2))?, &mut y, &mut stats, rows, cols, eps)?;
                (wrap(b, y), wrap(b, stats))
            })
        };
        let stats = Tensor::from_storage(stats, Shape::from(2 * rows), self.device().clone(), None);
        let rec = record(&[self, weight, bias], || Op::LayerNorm {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            stats,
        });
        Ok(self.derived(y, self.shape().clone(), rec))
    }

    /// The gradients of a layer norm's input, weight and bias.
    pub(crate) fn layer_norm_grads(
        x: &Tensor,
        weight: &Tensor,
        stats: &Tensor,
        g: &Tensor,
    ) -> Result<[Tensor; 3]> {
        let cols = weight.elem_count();
        let rows = x.elem_count() / cols.max(1);
        let (guards, at) = Tensor::read_all(&[x, weight, stats, g]);
        let s = |i: usize| &*guards[at[i]];
        let (dx, dw, db) = on_device!(x.device(), b => {
            let mut dx = b.alloc(x.elem_count())?;
            let mut dw = b.alloc(cols)?;
            let mut db = b.alloc(cols)?;
            b.layer_norm_backward(buf(b, s(0))?, buf(b, s(1))?, buf(b, s(2))?, buf(b, s(3))?, &mut dx, &mut dw, &mut db, rows, cols)?;
            (wrap(b, dx), wrap(b, dw), wrap(b, db))
        });
        let make = |st, like: &Tensor| {
            Tensor::from_storage(st, like.shape().clone(), like.device().clone(), None)
        };
        Ok([make(dx, x), make(dw, weight), make(db, weight)])
    }
}
