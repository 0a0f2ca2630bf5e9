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

/// The fewest elements an elementwise or row-wise op shares across threads.
pub const PARALLEL_MIN_ELEMENTS: usize = 2 * PAR_CHUNK;

pub(crate) fn parallel(len: usize) -> bool {
    len >= PARALLEL_MIN_ELEMENTS && rayon::current_num_threads() > 1
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

/// The start of each row (all dims of `shape` but the last) in each of `N` operands,
/// walked like an odometer: an addition per row, where dividing each row's number into
/// its index had cost tens of cycles per dim (a quarter of the time of a head permute's
/// 16-float rows).
pub(crate) struct RowOffsets<'a, const N: usize> {
    outer: &'a [usize],
    strides: [&'a [usize]; N],
    idx: Vec<usize>,
    offsets: [usize; N],
}

impl<'a, const N: usize> RowOffsets<'a, N> {
    /// Starting at row `first`, with operand `k`'s element 0 at `bases[k]`.
    pub(crate) fn new(
        shape: &'a [usize],
        strides: [&'a [usize]; N],
        bases: [usize; N],
        first: usize,
    ) -> Self {
        let outer = &shape[..shape.len().saturating_sub(1)];
        let mut idx = vec![0; outer.len()];
        let mut offsets = bases;
        let mut rem = first;
        for d in (0..outer.len()).rev() {
            idx[d] = rem % outer[d];
            rem /= outer[d];
            for k in 0..N {
                offsets[k] += idx[d] * strides[k][d];
            }
        }
        Self {
            outer,
            strides,
            idx,
            offsets,
        }
    }

    pub(crate) fn get(&self) -> [usize; N] {
        self.offsets
    }

    pub(crate) fn advance(&mut self) {
        for d in (0..self.outer.len()).rev() {
            self.idx[d] += 1;
            for k in 0..N {
                self.offsets[k] += self.strides[k][d];
            }
            if self.idx[d] < self.outer[d] {
                return;
            }
            for k in 0..N {
                self.offsets[k] -= self.outer[d] * self.strides[k][d];
            }
            self.idx[d] = 0;
        }
    }
}

/// Runs `run(offsets, row)` over the rows of `out` (the last dim of `shape`), with each
/// row's start in every operand (see [`RowOffsets`]); rows are grouped into tasks of about
/// PAR_CHUNK elements, on rayon's pool when the whole is large. A row longer than that (a
/// contiguous op collapses to one row) is cut into pieces, each `run` with the offsets of
/// its first element: a GPT's residual add of [1024, 64] had stayed on one thread.
pub(crate) fn for_each_strided_row<const N: usize>(
    out: &mut [f32],
    shape: &[usize],
    strides: [&[usize]; N],
    bases: [usize; N],
    run: impl Fn([usize; N], &mut [f32]) + Send + Sync,
) {
    let inner = *shape.last().unwrap_or(&1);
    if inner == 0 || out.is_empty() {
        return;
    }
    if parallel(out.len()) && inner > PAR_CHUNK {
        let piece = inner.div_ceil(inner.div_ceil(PAR_CHUNK));
        let last: [usize; N] = std::array::from_fn(|k| *strides[k].last().unwrap_or(&0));
        out.par_chunks_mut(inner).enumerate().for_each(|(r, row)| {
            let start = RowOffsets::new(shape, strides, bases, r).get();
            row.par_chunks_mut(piece).enumerate().for_each(|(p, part)| {
                run(
                    std::array::from_fn(|k| start[k] + p * piece * last[k]),
                    part,
                )
            });
        });
        return;
    }
    let rows_per_task = (PAR_CHUNK / inner).max(1);
    let block = |(task, rows): (usize, &mut [f32])| {
        let mut at = RowOffsets::new(shape, strides, bases, task * rows_per_task);
        for row in rows.chunks_mut(inner) {
            run(at.get(), row);
            at.advance();
        }
    };
    if parallel(out.len()) {
        out.par_chunks_mut(rows_per_task * inner)
            .enumerate()
            .for_each(block);
    } else {
        block((0, out));
    }
}

/// `dst.copy_from_slice(src)`, inlined as copies of 8 for the short rows of a strided
/// copy (a head permute's 16 floats), where a call to `memmove` per row cost as much as
/// the copy.
#[inline(always)]
pub(crate) fn copy_row(dst: &mut [f32], src: &[f32]) {
    if dst.len() > 64 {
        dst.copy_from_slice(src);
        return;
    }
    let (d8, s8) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    let (dt, st) = (d8.into_remainder(), s8.remainder());
    for (d, s) in dt.iter_mut().zip(st) {
        *d = *s;
    }
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(8)) {
        let d: &mut [f32; 8] = d.try_into().expect("chunks of 8");
        *d = s.try_into().expect("chunks of 8");
    }
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
    let (l_step, r_step) = (*ls.last().unwrap_or(&0), *rs.last().unwrap_or(&0));
    let run = |[lo, ro]: [usize; 2], out: &mut [f32]| {
        binary_run(simd, op, &lhs[lo..], l_step, &rhs[ro..], r_step, out);
    };
    for_each_strided_row(out, &shape, [ls, rs], [0, 0], run);
}

pub(crate) fn copy_strided(src: &[f32], layout: &StridedLayout, dst: &mut [f32]) {
    if dst.is_empty() {
        return;
    }
    let (shape, strides) = collapse(&layout.shape, &[&layout.strides]);
    let s = &strides[0];
    let step = *s.last().unwrap_or(&0);
    let run = |[base]: [usize; 1], out: &mut [f32]| match step {
        1 => copy_row(out, &src[base..base + out.len()]),
        0 => out.fill(src[base]),
        _ => out
            .iter_mut()
            .enumerate()
            .for_each(|(j, o)| *o = src[base + j * step]),
    };
    for_each_strided_row(dst, &shape, [s], [layout.offset], run);
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
