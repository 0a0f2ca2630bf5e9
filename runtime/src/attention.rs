//! Fused scaled dot-product attention as one differentiable op: the backends' blocked
//! (CPU) and flash-style (GPU) kernels, which never hold a head's `[tq, tk]` scores.

use crate::backprop::Op;
use crate::device::{buf, on_device, wrap};
use crate::ops::{record, same_device};
use crate::{compute_precision, with_precision, Error, Precision, Result, Shape, Tensor};
use ringtrain_kernels::{AttentionSpec, Backend, DType};

/// Dropout of the attention weights: each is kept with probability `1 - p` (and scaled
/// by `1 / (1 - p)`), decided by a hash of `seed` and its position, so the backward
/// pass, and every backend, drop the same ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionDropout {
    pub p: f32,
    pub seed: u32,
}

impl Tensor {
    /// `softmax(q k^T / sqrt(d) + mask) v` for `q` of shape `[.., tq, d]` and `k`, `v` of
    /// shape `[.., tk, d]` (the same leading dimensions: batch, heads). With `causal`,
    /// query `i` attends to keys `j <= i + tk - tq`. One op with its own backward.
    pub fn scaled_dot_product_attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        dropout: Option<AttentionDropout>,
    ) -> Result<Tensor> {
        let precision = compute_precision();
        if precision.is_reduced() {
            let [q, k, v] = [q, k, v].map(|t| t.round_to(precision));
            return with_precision(Precision::F32, || {
                Self::attention_in(&q?, &k?, &v?, causal, dropout, precision)
            });
        }
        Self::attention_in(q, k, v, causal, dropout, Precision::F32)
    }

    /// [`Tensor::scaled_dot_product_attention`] on inputs already rounded to
    /// `precision`.
    fn attention_in(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        causal: bool,
        dropout: Option<AttentionDropout>,
        precision: Precision,
    ) -> Result<Tensor> {
        const OP: &str = "scaled_dot_product_attention";
        same_device(OP, q, k)?;
        same_device(OP, q, v)?;
        for t in [q, k, v] {
            t.expect_dtype(DType::F32, OP)?;
        }
        let r = q.rank();
        let fits = r >= 2
            && k.rank() == r
            && v.shape() == k.shape()
            && q.dims()[..r - 2] == k.dims()[..r - 2]
            && q.dims()[r - 1] == k.dims()[r - 1];
        if !fits {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: q.shape().clone(),
                rhs: k.shape().clone(),
                hint: " (q [.., tq, d] and k, v [.., tk, d] with the same leading dimensions)",
            });
        }
        let (tq, tk, d) = (q.dims()[r - 2], k.dims()[r - 2], q.dims()[r - 1]);
        if causal && tq > tk {
            return Err(Error::InvalidArgument(format!(
                "{OP}: a causal mask needs at most as many queries ({tq}) as keys ({tk})"
            )));
        }
        let (p, seed) = dropout.map_or((0.0, 0), |d| (d.p, d.seed));
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!(
                "{OP}: dropout must be in [0, 1), got {p}"
            )));
        }
        let spec = AttentionSpec {
            batch: q.dims()[..r - 2].iter().product(),
            tq,
            tk,
            d,
            scale: 1.0 / (d.max(1) as f32).sqrt(),
            causal,
            dropout: p,
            seed,
        };
        let (out, lse) = {
            let (guards, at) = Tensor::read_all(&[q, k, v]);
            let s = |i: usize| &*guards[at[i]];
            on_device!(q.device(), b => {
                let mut out = b.alloc(spec.q_len())?;
                let mut lse = b.alloc(spec.lse_len())?;
                b.attention(&spec, buf(b, s(0))?, buf(b, s(1))?, buf(b, s(2))?, &mut out, &mut lse)?;
                (wrap(b, out), wrap(b, lse))
            })
        };
        let lse = Tensor::from_storage(lse, Shape::from(spec.lse_len()), q.device().clone(), None);
        let rec = record(&[q, k, v], || Op::Attention {
            q: q.clone(),
            k: k.clone(),
            v: v.clone(),
            lse,
            spec,
            precision,
        });
        Ok(q.typed(out, q.shape().clone(), DType::F32, None, rec))
    }

    /// The gradients of `q`, `k` and `v` of an attention whose output is `out`.
    pub(crate) fn attention_grads(
        spec: &AttentionSpec,
        [q, k, v, out, lse, g]: [&Tensor; 6],
    ) -> Result<[Tensor; 3]> {
        let (guards, at) = Tensor::read_all(&[q, k, v, out, lse, g]);
        let s = |i: usize| &*guards[at[i]];
        let (dq, dk, dv) = on_device!(q.device(), b => {
            let mut dq = b.alloc(spec.q_len())?;
            let mut dk = b.alloc(spec.kv_len())?;
            let mut dv = b.alloc(spec.kv_len())?;
            b.attention_backward(
                spec,
                buf(b, s(0))?,
                buf(b, s(1))?,
                buf(b, s(2))?,
                buf(b, s(3))?,
                buf(b, s(4))?,
                buf(b, s(5))?,
                &mut dq,
                &mut dk,
                &mut dv,
            )?;
            (wrap(b, dq), wrap(b, dk), wrap(b, dv))
        });
        let make = |s, like: &Tensor| {
            Tensor::from_storage(s, like.shape().clone(), like.device().clone(), None)
        };
        Ok([make(dq, q), make(dk, k), make(dv, v)])
    }
}
