//! Elementwise kernels: unary functions and their derivatives, affine maps, broadcasting
//! binary ops and strided gathers. Flat loops vectorise through `simd_fn!`; large buffers
//! are split across rayon's pool (elementwise results do not depend on the split).

use super::isa::simd_fn;
use super::math;
use super::Simd;
use crate::layout::collapse;
use crate::{BinaryLayout, BinaryOp, StridedLayout, UnaryOp};
use rayon::prelude::*;

/// Elements per parallel chunk: below this a fork/join costs more than the work.
pub(crate) const PAR_CHUNK: usize = 1 << 15;

pub(crate) fn parallel(len: usize) -> bool {
    len >= 2 * PAR_CHUNK && rayon::current_num_threads() > 1
}

simd_fn! {
    fn unary_flat(op: UnaryOp, x: &[f32], y: &mut [f32]) {
        let y = &mut y[..x.len()];
        match op {
            UnaryOp::Neg => y.iter_mut().zip(x).for_each(|(y, &x)| *y = -x),
            UnaryOp::Exp => y.iter_mut().zip(x).for_each(|(y, &x)| *y = math::exp(x)),
            UnaryOp::Log => y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.ln()),
            UnaryOp::Sqr => y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * x),
            UnaryOp::Sqrt => y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.sqrt()),
            // `x < 0` rather than `x > 0`, so NaN stays NaN.
            UnaryOp::Relu => y.iter_mut().zip(x).for_each(|(y, &x)| *y = if x < 0.0 { 0.0 } else { x }),
            UnaryOp::Gelu => y.iter_mut().zip(x).for_each(|(y, &x)| *y = math::gelu(x)),
            UnaryOp::Tanh => y.iter_mut().zip(x).for_each(|(y, &x)| *y = math::tanh(x)),
            UnaryOp::Sigmoid => y.iter_mut().zip(x).for_each(|(y, &x)| *y = math::sigmoid(x)),
            UnaryOp::NonFinite => y.iter_mut().zip(x).for_each(|(y, &x)| *y = if x.is_finite() { 0.0 } else { 1.0 }),
        }
    }
}

simd_fn! {
    fn unary_backward_flat(op: UnaryOp, x: &[f32], y: &[f32], dy: &[f32], dx: &mut [f32]) {
        let n = dx.len();
        let (x, y, dy) = (&x[..n], &y[..n], &dy[..n]);
        match op {
            UnaryOp::Neg => dx.iter_mut().zip(dy).for_each(|(d, &g)| *d = -g),
            UnaryOp::Exp => zip3(dx, dy, y, |g, y| g * y),
            UnaryOp::Log => zip3(dx, dy, x, |g, x| g / x),
            UnaryOp::Sqr => zip3(dx, dy, x, |g, x| 2.0 * x * g),
            UnaryOp::Sqrt => zip3(dx, dy, y, |g, y| 0.5 * g / y),
            UnaryOp::Relu => zip3(dx, dy, x, |g, x| if x > 0.0 { g } else { 0.0 }),
            UnaryOp::Gelu => zip3(dx, dy, x, |g, x| g * math::gelu_grad(x)),
            UnaryOp::Tanh => zip3(dx, dy, y, |g, y| g * (1.0 - y * y)),
            UnaryOp::Sigmoid => zip3(dx, dy, y, |g, y| g * y * (1.0 - y)),
            UnaryOp::NonFinite => dx.fill(0.0),
        }
    }
}

#[inline(always)]
fn zip3(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        *o = f(a, b);
    }
}

simd_fn! {
    fn affine_flat(x: &[f32], y: &mut [f32], mul: f32, add: f32) {
        y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * mul + add);
    }
}

// The op is matched outside the loops, each arm defining `$f` as a plain function, so
// every loop body is one inlined, vectorisable expression.
macro_rules! for_each_op {
    ($op:expr, $f:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                #[inline(always)]
                fn $f(a: f32, b: f32) -> f32 {
                    a + b
                }
                $body
            }
            BinaryOp::Sub => {
                #[inline(always)]
                fn $f(a: f32, b: f32) -> f32 {
                    a - b
                }
                $body
            }
            BinaryOp::Mul => {
                #[inline(always)]
                fn $f(a: f32, b: f32) -> f32 {
                    a * b
                }
                $body
            }
            BinaryOp::Div => {
                #[inline(always)]
                fn $f(a: f32, b: f32) -> f32 {
                    a / b
                }
                $body
            }
        }
    };
}

simd_fn! {
    /// One contiguous run of the output; each operand is either contiguous (stride 1) or
    /// a single repeated value (stride 0).
    fn binary_run(op: BinaryOp, lhs: &[f32], lhs_step: usize, rhs: &[f32], rhs_step: usize, out: &mut [f32]) {
        let n = out.len();
        match (lhs_step, rhs_step) {
            (1, 1) => {
                let (l, r) = (&lhs[..n], &rhs[..n]);
                for_each_op!(op, f => out.iter_mut().zip(l).zip(r).for_each(|((o, &a), &b)| *o = f(a, b)))
            }
            (1, 0) => {
                let (l, b) = (&lhs[..n], rhs[0]);
                for_each_op!(op, f => out.iter_mut().zip(l).for_each(|(o, &a)| *o = f(a, b)))
            }
            (0, 1) => {
                let (a, r) = (lhs[0], &rhs[..n]);
                for_each_op!(op, f => out.iter_mut().zip(r).for_each(|(o, &b)| *o = f(a, b)))
            }
            _ => {
                for_each_op!(op, f => out.iter_mut().enumerate().for_each(|(j, o)| *o = f(lhs[j * lhs_step], rhs[j * rhs_step])))
            }
        }
    }
}

/// Runs `run((index, row))` over the `inner`-long rows of `out`, on rayon's pool when the
/// whole is large; short rows are grouped so each task still has about PAR_CHUNK elements.
pub(crate) fn for_each_row(
    out: &mut [f32],
    inner: usize,
    run: impl Fn((usize, &mut [f32])) + Send + Sync,
) {
    if parallel(out.len()) {
        out.par_chunks_mut(inner)
            .enumerate()
            .with_min_len((PAR_CHUNK / inner).max(1))
            .for_each(run);
    } else {
        out.chunks_mut(inner).enumerate().for_each(run);
    }
}

/// Offset of the start of outer row `row` (all dims but the last) for one operand.
pub(crate) fn row_offset(row: usize, shape: &[usize], strides: &[usize]) -> usize {
    let mut rem = row;
    let mut off = 0;
    for d in (0..shape.len() - 1).rev() {
        off += (rem % shape[d]) * strides[d];
        rem /= shape[d];
    }
    off
}

pub(crate) fn binary(
    simd: Simd,
    op: BinaryOp,
    layout: &BinaryLayout,
    lhs: &[f32],
    rhs: &[f32],
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    let (shape, strides) = collapse(&layout.shape, &[&layout.lhs_strides, &layout.rhs_strides]);
    let (ls, rs) = (&strides[0], &strides[1]);
    let inner = *shape.last().unwrap_or(&1);
    let (l_step, r_step) = (*ls.last().unwrap_or(&0), *rs.last().unwrap_or(&0));
    let run = |(row, out): (usize, &mut [f32])| {
        let (lo, ro) = (row_offset(row, &shape, ls), row_offset(row, &shape, rs));
        binary_run(simd, op, &lhs[lo..], l_step, &rhs[ro..], r_step, out);
    };
    for_each_row(out, inner, run);
}

pub(crate) fn copy_strided(src: &[f32], layout: &StridedLayout, dst: &mut [f32]) {
    if dst.is_empty() {
        return;
    }
    let (shape, strides) = collapse(&layout.shape, &[&layout.strides]);
    let s = &strides[0];
    let inner = *shape.last().unwrap_or(&1);
    let step = *s.last().unwrap_or(&0);
    let run = |(row, out): (usize, &mut [f32])| {
        let base = layout.offset + row_offset(row, &shape, s);
        match step {
            1 => out.copy_from_slice(&src[base..base + inner]),
            0 => out.fill(src[base]),
            _ => out
                .iter_mut()
                .enumerate()
                .for_each(|(j, o)| *o = src[base + j * step]),
        }
    };
    for_each_row(dst, inner, run);
}

/// Runs `f` over matching chunks of `x` and `y`, in parallel when large.
pub(crate) fn map_chunks(x: &[f32], y: &mut [f32], f: impl Fn(&[f32], &mut [f32]) + Sync) {
    if parallel(y.len()) {
        y.par_chunks_mut(PAR_CHUNK)
            .zip(x.par_chunks(PAR_CHUNK))
            .for_each(|(y, x)| f(x, y));
    } else {
        f(x, y);
    }
}

pub(crate) fn unary(simd: Simd, op: UnaryOp, x: &[f32], y: &mut [f32]) {
    map_chunks(x, y, |x, y| unary_flat(simd, op, x, y));
}

pub(crate) fn affine(simd: Simd, x: &[f32], y: &mut [f32], mul: f32, add: f32) {
    map_chunks(x, y, |x, y| affine_flat(simd, x, y, mul, add));
}

pub(crate) fn unary_backward(
    simd: Simd,
    op: UnaryOp,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) {
    if parallel(dx.len()) {
        dx.par_chunks_mut(PAR_CHUNK)
            .enumerate()
            .for_each(|(i, dx)| {
                let at = i * PAR_CHUNK;
                unary_backward_flat(simd, op, &x[at..], &y[at..], &dy[at..], dx)
            });
    } else {
        unary_backward_flat(simd, op, x, y, dy, dx);
    }
}
