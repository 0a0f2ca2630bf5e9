//! Sliding-window ops on NCHW tensors: im2col and its adjoint for convolution, max and
//! average pooling with their gradients.
//!
//! Every op writes each output element from one task, by a fixed loop order, with no
//! scatter: the adjoints (col2im, pooling backward) gather, for each input element, the
//! windows that cover it. So results do not depend on the thread count, and the GPU
//! kernels (shaders/im2col.wgsl ...) follow the same formulas. Work is split by
//! channel planes (one image channel per task) when it is large enough to pay.

use super::elementwise::PAR_CHUNK;
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

pub(crate) fn im2col(x: &[f32], cols: &mut [f32], g: &Window2d) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.height, g.width);
    let plane = h * w;
    // One task per (image, channel): its kernel_h * kernel_w rows of the column matrix.
    by_plane(cols, g.kernel_h * g.kernel_w * oh * ow, |nc, out| {
        let src = &x[nc * plane..(nc + 1) * plane];
        for ki in 0..g.kernel_h {
            for kj in 0..g.kernel_w {
                let row = &mut out[(ki * g.kernel_w + kj) * oh * ow..][..oh * ow];
                for (o, dst) in row.chunks_mut(ow).enumerate() {
                    match source(o, ki, g.stride_h, g.pad_h, h) {
                        None => dst.fill(0.0),
                        Some(r) => {
                            for (q, d) in dst.iter_mut().enumerate() {
                                *d = source(q, kj, g.stride_w, g.pad_w, w)
                                    .map_or(0.0, |c| src[r * w + c]);
                            }
                        }
                    }
                }
            }
        }
    });
}

pub(crate) fn col2im(cols: &[f32], x: &mut [f32], g: &Window2d) {
    let plane_out = g.out_h() * g.out_w();
    let per_image_channel = g.kernel_h * g.kernel_w * plane_out;
    let w = g.width;
    by_plane(x, g.height * w, |nc, out| {
        let src = &cols[nc * per_image_channel..(nc + 1) * per_image_channel];
        for (i, d) in out.iter_mut().enumerate() {
            let mut sum = 0.0f32;
            for_covering_windows(g, i / w, i % w, |win, pos| {
                sum += src[pos * plane_out + win]
            });
            *d = sum;
        }
    });
}

pub(crate) fn max_pool2d(x: &[f32], y: &mut [f32], argmax: &mut [f32], g: &Window2d) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.height, g.width);
    let plane_out = oh * ow;
    let run = |nc: usize, (ys, args): (&mut [f32], &mut [f32])| {
        let src = &x[nc * h * w..(nc + 1) * h * w];
        for (i, (yv, av)) in ys.iter_mut().zip(args.iter_mut()).enumerate() {
            let (o, q) = (i / ow, i % ow);
            let (mut best, mut at, mut found) = (0.0f32, 0usize, false);
            for ki in 0..g.kernel_h {
                let Some(r) = source(o, ki, g.stride_h, g.pad_h, h) else {
                    continue;
                };
                for kj in 0..g.kernel_w {
                    let Some(c) = source(q, kj, g.stride_w, g.pad_w, w) else {
                        continue;
                    };
                    let v = src[r * w + c];
                    // The first maximum wins; NaN propagates, as in PyTorch.
                    if !found || v > best || v.is_nan() && !best.is_nan() {
                        (best, at, found) = (v, ki * g.kernel_w + kj, true);
                    }
                }
            }
            *yv = best;
            *av = at as f32;
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

pub(crate) fn max_pool2d_backward(dy: &[f32], argmax: &[f32], dx: &mut [f32], g: &Window2d) {
    let plane_out = g.out_h() * g.out_w();
    let w = g.width;
    by_plane(dx, g.height * w, |nc, out| {
        let (dyp, amp) = (
            &dy[nc * plane_out..(nc + 1) * plane_out],
            &argmax[nc * plane_out..(nc + 1) * plane_out],
        );
        for (i, d) in out.iter_mut().enumerate() {
            let mut sum = 0.0f32;
            for_covering_windows(g, i / w, i % w, |win, pos| {
                if amp[win] == pos as f32 {
                    sum += dyp[win];
                }
            });
            *d = sum;
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
