//! Sliding-window ops on NCHW tensors: im2col and its adjoint for convolution, max and
//! average pooling with their gradients.
//!
//! Work is split by channel planes (one image channel per task) when it is large enough
//! to pay, and within a plane every loop runs in a fixed order, so results do not depend
//! on the thread count. The adjoints (col2im, max-pool backward) scatter-add within their
//! plane, which costs one pass over the windows; the GPU kernels gather instead (one
//! invocation per input element, no atomics), so where windows overlap the two sum in a
//! different order and agree to rounding.

use super::elementwise::PAR_CHUNK;
use super::{max_pool_2x2, Simd};
use crate::Window2d;
use rayon::prelude::*;

/// Runs `f(plane, out_plane)` over consecutive `plane_len`-element chunks of `out`, in
/// parallel when `out` is large.
fn by_plane(out: &mut [f32], plane_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if plane_len == 0 {
        return;
    }
    if out.len() >= 2 * PAR_CHUNK && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(plane_len)
            .with_min_len((PAR_CHUNK / plane_len).max(1))
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    } else {
        out.chunks_mut(plane_len)
            .enumerate()
            .for_each(|(i, o)| f(i, o));
    }
}

/// The output positions whose window covers input row (or column) `h` at kernel offset
/// `k`: `o` with `o * stride + k - pad == h`, if `0 <= o < out`.
#[inline]
fn covering(h: usize, k: usize, stride: usize, pad: usize, out: usize) -> Option<usize> {
    let hp = h + pad;
    if hp < k || !(hp - k).is_multiple_of(stride) {
        return None;
    }
    let o = (hp - k) / stride;
    (o < out).then_some(o)
}

/// The input row (or column) a window at output position `o` reads at kernel offset `k`,
/// or `None` inside the padding.
#[inline]
fn source(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let hp = o * stride + k;
    (hp >= pad && hp - pad < size).then(|| hp - pad)
}

/// The window positions `q` in `0..out` whose tap at kernel offset `k` reads inside
/// `0..size`: `q * stride + k - pad` in range. Returns `lo..hi` (possibly empty).
fn inside(k: usize, stride: usize, pad: usize, size: usize, out: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(k).div_ceil(stride);
    // Largest q with q * stride + k - pad <= size - 1.
    let hi = if size + pad > k {
        ((size + pad - k - 1) / stride + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

pub(crate) fn im2col(x: &[f32], cols: &mut [f32], g: &Window2d) {
    let plane = g.height * g.width;
    // One task per (image, channel): its kernel_h * kernel_w rows of the column matrix.
    by_plane(
        cols,
        g.kernel_h * g.kernel_w * g.out_h() * g.out_w(),
        |nc, out| im2col_plane(&x[nc * plane..(nc + 1) * plane], out, g),
    );
}

/// Unfolds one channel plane `src` into its `kernel_h * kernel_w` rows of columns.
pub(crate) fn im2col_plane(src: &[f32], out: &mut [f32], g: &Window2d) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.height, g.width);
    for ki in 0..g.kernel_h {
        for kj in 0..g.kernel_w {
            let row = &mut out[(ki * g.kernel_w + kj) * oh * ow..][..oh * ow];
            let (lo, hi) = inside(kj, g.stride_w, g.pad_w, w, ow);
            for (o, dst) in row.chunks_mut(ow).enumerate() {
                let Some(r) = source(o, ki, g.stride_h, g.pad_h, h) else {
                    dst.fill(0.0);
                    continue;
                };
                dst[..lo].fill(0.0);
                dst[hi..].fill(0.0);
                if lo < hi {
                    let first = r * w + lo * g.stride_w + kj - g.pad_w;
                    if g.stride_w == 1 {
                        dst[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                    } else {
                        for (d, s) in dst[lo..hi]
                            .iter_mut()
                            .zip(src[first..].iter().step_by(g.stride_w))
                        {
                            *d = *s;
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn col2im(cols: &[f32], x: &mut [f32], g: &Window2d) {
    let per_plane = g.kernel_h * g.kernel_w * g.out_h() * g.out_w();
    by_plane(x, g.height * g.width, |nc, out| {
        col2im_plane(&cols[nc * per_plane..(nc + 1) * per_plane], out, g)
    });
}

/// Folds one channel's `kernel_h * kernel_w` rows of columns back onto its plane `out`
/// (overwritten): each element gets the sum of the entries it was copied to.
pub(crate) fn col2im_plane(src: &[f32], out: &mut [f32], g: &Window2d) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.height, g.width);
    out.fill(0.0);
    for ki in 0..g.kernel_h {
        for kj in 0..g.kernel_w {
            let row = &src[(ki * g.kernel_w + kj) * oh * ow..][..oh * ow];
            let (lo, hi) = inside(kj, g.stride_w, g.pad_w, w, ow);
            if lo >= hi {
                continue;
            }
            for (o, vals) in row.chunks(ow).enumerate() {
                let Some(r) = source(o, ki, g.stride_h, g.pad_h, h) else {
                    continue;
                };
                let first = r * w + lo * g.stride_w + kj - g.pad_w;
                let span = &mut out[first..];
                if g.stride_w == 1 {
                    // Contiguous: a loop the compiler vectorises.
                    for (d, v) in span[..hi - lo].iter_mut().zip(&vals[lo..hi]) {
                        *d += *v;
                    }
                } else {
                    for (d, v) in span.iter_mut().step_by(g.stride_w).zip(&vals[lo..hi]) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

/// 2x2 windows at stride 2 without padding, which have kernels of their own.
fn halves(g: &Window2d) -> bool {
    (
        g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w,
    ) == (2, 2, 2, 2, 0, 0)
}

pub(crate) fn max_pool2d(simd: Simd, x: &[f32], y: &mut [f32], argmax: &mut [f32], g: &Window2d) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.height, g.width);
    let plane_out = oh * ow;
    let halving = halves(g);
    let run = |nc: usize, (ys, args): (&mut [f32], &mut [f32])| {
        let src = &x[nc * h * w..(nc + 1) * h * w];
        if halving {
            return max_pool_2x2::plane(simd, src, w, ys, args, ow);
        }
        for (o, (yrow, arow)) in ys.chunks_mut(ow).zip(args.chunks_mut(ow)).enumerate() {
            // The kernel rows and columns that land inside the input: once per window
            // row and column, so the taps themselves need no checks.
            let r0 = o * g.stride_h;
            let ki_lo = g.pad_h.saturating_sub(r0);
            let ki_hi = (h + g.pad_h).saturating_sub(r0).min(g.kernel_h);
            for (q, (yv, av)) in yrow.iter_mut().zip(arow.iter_mut()).enumerate() {
                let c0 = q * g.stride_w;
                let kj_lo = g.pad_w.saturating_sub(c0);
                let kj_hi = (w + g.pad_w).saturating_sub(c0).min(g.kernel_w);
                // Every window holds at least one real element (pooling keeps padding
                // under half the kernel): start from the first, then select without
                // branches, since which tap wins is data-dependent and unpredictable.
                let (mut best, mut at) = (
                    src[(r0 + ki_lo - g.pad_h) * w + c0 + kj_lo - g.pad_w],
                    ki_lo * g.kernel_w + kj_lo,
                );
                for ki in ki_lo..ki_hi {
                    let row = &src[(r0 + ki - g.pad_h) * w..][..w];
                    for kj in kj_lo..kj_hi {
                        let v = row[c0 + kj - g.pad_w];
                        // The first maximum wins; NaN propagates, as in PyTorch.
                        let better = (v > best) | (v.is_nan() & !best.is_nan());
                        best = if better { v } else { best };
                        at = if better { ki * g.kernel_w + kj } else { at };
                    }
                }
                *yv = best;
                *av = at as f32;
            }
        }
    };
    if plane_out == 0 {
        return;
    }
    if y.len() >= 2 * PAR_CHUNK && rayon::current_num_threads() > 1 {
        y.par_chunks_mut(plane_out)
            .zip(argmax.par_chunks_mut(plane_out))
            .enumerate()
            .for_each(|(nc, pair)| run(nc, pair));
    } else {
        y.chunks_mut(plane_out)
            .zip(argmax.chunks_mut(plane_out))
            .enumerate()
            .for_each(|(nc, pair)| run(nc, pair));
    }
}

/// Calls `f(window_index, kernel_position)` for every window covering input element
/// (`r`, `c`) of a plane.
#[inline]
fn for_covering_windows(g: &Window2d, r: usize, c: usize, mut f: impl FnMut(usize, usize)) {
    let (oh, ow) = (g.out_h(), g.out_w());
    for ki in 0..g.kernel_h {
        let Some(o) = covering(r, ki, g.stride_h, g.pad_h, oh) else {
            continue;
        };
        for kj in 0..g.kernel_w {
            if let Some(q) = covering(c, kj, g.stride_w, g.pad_w, ow) {
                f(o * ow + q, ki * g.kernel_w + kj);
            }
        }
    }
}

/// The gradient of [`max_pool_2x2`] for one plane: each window's gradient goes to the tap
/// that won, zeros to the other three, written in place (no zero fill, no scatter); rows
/// and columns past the last whole window get zeros.
fn max_pool_2x2_backward(dy: &[f32], argmax: &[f32], out: &mut [f32], w: usize, ow: usize) {
    let pick = |d: f32, pos: f32, tap: f32| if pos == tap { d } else { 0.0 };
    if ow == 0 {
        return out.fill(0.0);
    }
    let (mut rows, tail) = out.split_at_mut(2 * (dy.len() / ow.max(1)) * w);
    tail.fill(0.0);
    for (dys, args) in dy.chunks_exact(ow).zip(argmax.chunks_exact(ow)) {
        let (pair, rest) = rows.split_at_mut(2 * w);
        rows = rest;
        let (top, bottom) = pair.split_at_mut(w);
        for (((t, b), &d), &pos) in top
            .chunks_exact_mut(2)
            .zip(bottom.chunks_exact_mut(2))
            .zip(dys)
            .zip(args)
        {
            t[0] = pick(d, pos, 0.0);
            t[1] = pick(d, pos, 1.0);
            b[0] = pick(d, pos, 2.0);
            b[1] = pick(d, pos, 3.0);
        }
        top[2 * ow..].fill(0.0);
        bottom[2 * ow..].fill(0.0);
    }
}

pub(crate) fn max_pool2d_backward(dy: &[f32], argmax: &[f32], dx: &mut [f32], g: &Window2d) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let w = g.width;
    let halving = halves(g);
    by_plane(dx, g.height * w, |nc, out| {
        let at = nc * oh * ow;
        if halving {
            let (d, a) = (&dy[at..at + oh * ow], &argmax[at..at + oh * ow]);
            return max_pool_2x2_backward(d, a, out, w, ow);
        }
        out.fill(0.0);
        for (win, (&d, &pos)) in dy[at..at + oh * ow]
            .iter()
            .zip(&argmax[at..at + oh * ow])
            .enumerate()
        {
            let (o, q) = (win / ow, win % ow);
            let pos = pos as usize;
            let (ki, kj) = (pos / g.kernel_w, pos % g.kernel_w);
            // The forward pass only ever recorded positions inside the input.
            if let (Some(r), Some(c)) = (
                source(o, ki, g.stride_h, g.pad_h, g.height),
                source(q, kj, g.stride_w, g.pad_w, w),
            ) {
                out[r * w + c] += d;
            }
        }
    });
}

pub(crate) fn avg_pool2d(x: &[f32], y: &mut [f32], g: &Window2d) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.height, g.width);
    let scale = 1.0 / (g.kernel_h * g.kernel_w) as f32;
    by_plane(y, oh * ow, |nc, out| {
        let src = &x[nc * h * w..(nc + 1) * h * w];
        for (i, d) in out.iter_mut().enumerate() {
            let (o, q) = (i / ow, i % ow);
            let mut sum = 0.0f32;
            for ki in 0..g.kernel_h {
                let Some(r) = source(o, ki, g.stride_h, g.pad_h, h) else {
                    continue;
                };
                for kj in 0..g.kernel_w {
                    if let Some(c) = source(q, kj, g.stride_w, g.pad_w, w) {
                        sum += src[r * w + c];
                    }
                }
            }
            *d = sum * scale;
        }
    });
}

pub(crate) fn avg_pool2d_backward(dy: &[f32], dx: &mut [f32], g: &Window2d) {
    let plane_out = g.out_h() * g.out_w();
    let w = g.width;
    let scale = 1.0 / (g.kernel_h * g.kernel_w) as f32;
    by_plane(dx, g.height * w, |nc, out| {
        let dyp = &dy[nc * plane_out..(nc + 1) * plane_out];
        for (i, d) in out.iter_mut().enumerate() {
            let mut sum = 0.0f32;
            for_covering_windows(g, i / w, i % w, |win, _| sum += dyp[win]);
            *d = sum * scale;
        }
    });
}
