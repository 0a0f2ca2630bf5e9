//! Fused optimizer updates: one pass over parameter, gradient and state per step, instead
//! of the five or six elementwise passes the same update takes as separate ops.

use super::elementwise::{parallel, PAR_CHUNK};
use super::isa::simd_fn;
use super::Simd;
use crate::{AdamWParams, SgdParams};
use rayon::prelude::*;

simd_fn! {
    fn sgd_plain(p: &mut [f32], g: &[f32], lr: f32, wd: f32) {
        p.iter_mut().zip(g).for_each(|(p, &g)| *p -= lr * (g + wd * *p));
    }
}

simd_fn! {
    fn sgd_momentum(p: &mut [f32], g: &[f32], buf: &mut [f32], lr: f32, wd: f32, momentum: f32, nesterov: bool) {
        let it = p.iter_mut().zip(g).zip(buf.iter_mut());
        if nesterov {
            it.for_each(|((p, &g), b)| {
                let g = g + wd * *p;
                *b = momentum * *b + g;
                *p -= lr * (g + momentum * *b);
            });
        } else {
            it.for_each(|((p, &g), b)| {
                *b = momentum * *b + (g + wd * *p);
                *p -= lr * *b;
            });
        }
    }
}

pub(crate) fn sgd(
    simd: Simd,
    hp: &SgdParams,
    param: &mut [f32],
    grad: &[f32],
    momentum: Option<&mut [f32]>,
) {
    let (lr, wd) = (hp.lr, hp.weight_decay);
    match momentum {
        Some(buf) if parallel(param.len()) => param
            .par_chunks_mut(PAR_CHUNK)
            .zip(grad.par_chunks(PAR_CHUNK))
            .zip(buf.par_chunks_mut(PAR_CHUNK))
            .for_each(|((p, g), b)| sgd_momentum(simd, p, g, b, lr, wd, hp.momentum, hp.nesterov)),
        Some(buf) => sgd_momentum(simd, param, grad, buf, lr, wd, hp.momentum, hp.nesterov),
        None if parallel(param.len()) => param
            .par_chunks_mut(PAR_CHUNK)
            .zip(grad.par_chunks(PAR_CHUNK))
            .for_each(|(p, g)| sgd_plain(simd, p, g, lr, wd)),
        None => sgd_plain(simd, param, grad, lr, wd),
    }
}

simd_fn! {
    #[allow(clippy::too_many_arguments)]
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], decay: f32, step_size: f32, b1: f32, b2: f32, inv_sqrt_bc2: f32, eps: f32) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p = *p * decay - step_size * *m / (v.sqrt() * inv_sqrt_bc2 + eps);
        }
    }
}

pub(crate) fn adamw(
    simd: Simd,
    hp: &AdamWParams,
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let (decay, step_size, inv_sqrt_bc2) = hp.folded();
    let run = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
        adamw_chunk(
            simd,
            p,
            g,
            m,
            v,
            decay,
            step_size,
            hp.beta1,
            hp.beta2,
            inv_sqrt_bc2,
            hp.eps,
        )
    };
    if parallel(param.len()) {
        param
            .par_chunks_mut(PAR_CHUNK)
            .zip(grad.par_chunks(PAR_CHUNK))
            .zip(m.par_chunks_mut(PAR_CHUNK))
            .zip(v.par_chunks_mut(PAR_CHUNK))
            .for_each(|(((p, g), m), v)| run(p, g, m, v));
    } else {
        run(param, grad, m, v);
    }
}
