//! Convolution image by image: each task unfolds one image's windows into columns of its
//! own (`patch_len x out_h out_w`: 113 KB for 16 channels of 3x3 windows on 14x14, inside
//! L2) and multiplies them at once, while they are still in cache. Unfolding the whole
//! batch first, as the GPU does, writes and reads back the largest tensor of a
//! convolutional network (14 MB for that layer at batch 128) and keeps it for backward;
//! here backward unfolds each image again, which costs a copy from the input.
//!
//! The batch is cut into groups of images fixed by the batch size alone; a group sums its
//! images' weight and bias gradients in order (one GEMM per image accumulating into the
//! group's weight gradient, beta 1), and the groups' sums are added in group order: the
//! bits do not depend on the thread count.

use super::gemm::{self, MatRef};
use super::isa::simd_fn;
use super::lanes;
use super::window::{col2im_plane, im2col_plane};
use super::{round, Simd};
use crate::{Result, Window2d};
use rayon::prelude::*;
use std::borrow::Cow;
use std::cell::RefCell;

/// Images per group: at most this many groups, so partial sums stay few and small.
const MAX_GROUPS: usize = 16;

/// Patches of at most this many values (a first layer: 1-3 input channels of 3x3) skip
/// the GEMM, whose tiles such a thin product leaves mostly empty: the forward pass is
/// one multiply-add of a patch row into each output row at a time, the weight gradient
/// one dot product per weight.
const SMALL_PATCH: usize = 32;

simd_fn! {
    /// `y` (`out_channels` rows of `area`) = `weight` x `cols` for a small patch, then the
    /// bias; products and sums rounded one by one (no FMA), as on every instruction set.
    fn small_patch_forward(
        weight: &[f32],
        cols: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        k: usize,
        area: usize,
    ) {
        for (o, row) in y.chunks_exact_mut(area).enumerate() {
            row.fill(0.0);
            for (t, taps) in cols.chunks_exact(area).take(k).enumerate() {
                let w = weight[o * k + t];
                for (v, c) in row.iter_mut().zip(taps) {
                    *v += w * *c;
                }
            }
            if let Some(b) = bias {
                row.iter_mut().for_each(|v| *v += b[o]);
            }
        }
    }
}

simd_fn! {
    /// `dweight += dy cols^T` for a small patch: one dot product of `area` per weight.
    fn small_patch_weight_grad(dy: &[f32], cols: &[f32], dweight: &mut [f32], k: usize, area: usize) {
        for (dy_o, dw_o) in dy.chunks_exact(area).zip(dweight.chunks_exact_mut(k)) {
            for (dw, taps) in dw_o.iter_mut().zip(cols.chunks_exact(area)) {
                *dw += lanes::sum_zip(dy_o, taps, |a, b| a * b);
            }
        }
    }
}

simd_fn! {
    fn add_bias(y: &mut [f32], bias: &[f32], area: usize) {
        for (row, &b) in y.chunks_mut(area).zip(bias) {
            row.iter_mut().for_each(|v| *v += b);
        }
    }
}

simd_fn! {
    /// ReLU as the unary op computes it: negatives to zero, NaN and -0.0 kept.
    fn relu_in_place(y: &mut [f32]) {
        y.iter_mut().for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
    }
}

simd_fn! {
    /// `dy` where `y > 0`, else 0: ReLU's gradient from its output.
    fn relu_mask(dy: &[f32], y: &[f32], out: &mut [f32]) {
        for ((o, &d), &y) in out.iter_mut().zip(dy).zip(y) {
            *o = if y > 0.0 { d } else { 0.0 };
        }
    }
}

simd_fn! {
    /// `dbias[o] += ` the sum of `dy`'s row `o`.
    fn add_row_sums(dy: &[f32], dbias: &mut [f32], area: usize) {
        for (s, row) in dbias.iter_mut().zip(dy.chunks_exact(area)) {
            *s += lanes::sum_map(row, |v| v);
        }
    }
}

thread_local! {
    // One image's columns and column gradients, reused from call to call.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

fn with_scratch<R>(cols: usize, dcols: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut fresh = (Vec::new(), Vec::new());
        let mut held = cell.try_borrow_mut();
        let (a, b) = match held.as_deref_mut() {
            Ok((a, b)) => (a, b),
            // Re-entered on this thread (a task run while this one waits): fresh buffers.
            Err(_) => (&mut fresh.0, &mut fresh.1),
        };
        a.resize(a.len().max(cols), 0.0);
        b.resize(b.len().max(dcols), 0.0);
        f(&mut a[..cols], &mut b[..dcols])
    })
}

/// Unfolds image `n` of `x` into `cols` (`patch_len x area`).
fn unfold(x: &[f32], n: usize, cols: &mut [f32], g: &Window2d) {
    let plane = g.height * g.width;
    let rows = g.kernel_h * g.kernel_w * g.out_h() * g.out_w();
    for (c, out) in cols.chunks_mut(rows).enumerate() {
        let at = (n * g.channels + c) * plane;
        im2col_plane(&x[at..at + plane], out, g);
    }
}

fn parallel(batch: usize) -> bool {
    batch > 1 && rayon::current_num_threads() > 1
}

/// Runs `f(n, y_n)` for every image, side by side on rayon's pool when there are several.
fn by_image(
    y: &mut [f32],
    per_image: usize,
    f: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<()> {
    if parallel(y.len() / per_image.max(1)) {
        y.par_chunks_mut(per_image)
            .enumerate()
            .try_for_each(|(n, y)| f(n, y))
    } else {
        y.chunks_mut(per_image)
            .enumerate()
            .try_for_each(|(n, y)| f(n, y))
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn forward(
    simd: Simd,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    g: &Window2d,
    out_channels: usize,
) -> Result<()> {
    let (k, area) = (g.patch_len(), g.out_h() * g.out_w());
    if area == 0 || out_channels == 0 {
        return Ok(());
    }
    // The GEMM rounds reduced-precision inputs while packing; the small-patch path,
    // which has none, rounds its weights here and its columns as it unfolds them.
    let small_weight = small_patch_operand(simd, g, weight, k);
    by_image(y, out_channels * area, |n, y| {
        with_scratch(k * area, 0, |cols, _| {
            unfold(x, n, cols, g);
            if k <= SMALL_PATCH {
                round::round_in_place(simd, g.precision, cols);
                small_patch_forward(simd, &small_weight, cols, bias, y, k, area);
            } else {
                let w = MatRef::row_major(weight, out_channels, k, false);
                let c = MatRef::row_major(cols, k, area, false);
                product(simd, g, (out_channels, area, k), w, c, 0.0, y)?;
                // The bias and the ReLU while this image's output is still in cache.
                if let Some(bias) = bias {
                    add_bias(simd, y, bias, area);
                }
            }
            if relu {
                relu_in_place(simd, y);
            }
            Ok(())
        })
    })
}

/// One group's sums: its images' weight gradient and bias gradient.
struct Partial {
    dweight: Vec<f32>,
    dbias: Vec<f32>,
}

/// Where [`backward`] writes: the weight gradient always, the others where asked for.
pub(crate) struct Grads<'a> {
    pub dx: Option<&'a mut [f32]>,
    pub dweight: &'a mut [f32],
    pub dbias: Option<&'a mut [f32]>,
}

/// The gradients for `dy`; with `relu_out` (the output of a convolution run with its
/// ReLU), `dy` is first masked where that output is not positive, image by image in
/// cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    simd: Simd,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    relu_out: Option<&[f32]>,
    g: &Window2d,
    out_channels: usize,
    grads: Grads<'_>,
) -> Result<()> {
    let Grads { dx, dweight, dbias } = grads;
    let (batch, k, area) = (g.batch, g.patch_len(), g.out_h() * g.out_w());
    let per_group = batch.div_ceil(MAX_GROUPS).max(1);
    let groups = batch.div_ceil(per_group);
    let plane_in = g.channels * g.height * g.width;
    let per_out = out_channels * area;
    let want_bias = dbias.is_some();
    if plane_in == 0 || per_out == 0 {
        // No windows or no input: every gradient is zero.
        dweight.fill(0.0);
        if let Some(b) = dbias {
            b.fill(0.0);
        }
        if let Some(dx) = dx {
            dx.fill(0.0);
        }
        return Ok(());
    }
    // Every image's dx is written by the group holding it; the slices are disjoint.
    let mut dx_images: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => dx.chunks_mut(plane_in.max(1)).map(Some).collect(),
        None => (0..batch).map(|_| None).collect(),
    };
    let mut dx_groups: Vec<Vec<Option<&mut [f32]>>> = Vec::with_capacity(groups);
    for _ in 0..groups {
        let rest = dx_images.split_off(per_group.min(dx_images.len()));
        dx_groups.push(std::mem::replace(&mut dx_images, rest));
    }
    let run_group = |(group, dxs): (usize, Vec<Option<&mut [f32]>>)| -> Result<Partial> {
        let mut part = Partial {
            dweight: vec![0.0; out_channels * k],
            dbias: vec![0.0; if want_bias { out_channels } else { 0 }],
        };
        let dcols_len = if dxs.iter().any(Option::is_some) {
            k * area
        } else {
            0
        };
        let mut masked = vec![0.0f32; if relu_out.is_some() { per_out } else { 0 }];
        let small_reduced = k <= SMALL_PATCH && g.precision.is_reduced();
        let mut rounded = vec![0.0f32; if small_reduced { per_out } else { 0 }];
        with_scratch(k * area, dcols_len, |cols, dcols| -> Result<()> {
            for (i, dx) in dxs.into_iter().enumerate() {
                let n = group * per_group + i;
                let mut dy_n = &dy[n * per_out..(n + 1) * per_out];
                if let Some(y) = relu_out {
                    relu_mask(simd, dy_n, &y[n * per_out..(n + 1) * per_out], &mut masked);
                    dy_n = &masked;
                }
                unfold(x, n, cols, g);
                // dW += dy_n cols^T: the group's images in order, one accumulating GEMM.
                let dw = &mut part.dweight;
                if k <= SMALL_PATCH {
                    // The products' inputs rounded, as the GEMM's packing rounds them;
                    // the bias's gradient below sums the f32 gradient.
                    let dy_r = if small_reduced {
                        rounded.copy_from_slice(dy_n);
                        round::round_in_place(simd, g.precision, &mut rounded);
                        round::round_in_place(simd, g.precision, cols);
                        &rounded[..]
                    } else {
                        dy_n
                    };
                    small_patch_weight_grad(simd, dy_r, cols, dw, k, area);
                } else {
                    let a = MatRef::row_major(dy_n, out_channels, area, false);
                    let b = MatRef::row_major(cols, area, k, true);
                    let beta = if i == 0 { 0.0 } else { 1.0 };
                    product(simd, g, (out_channels, k, area), a, b, beta, dw)?;
                }
                add_row_sums(simd, dy_n, &mut part.dbias, area);
                if let Some(dx) = dx {
                    // dcols = W^T dy_n, folded back onto the image.
                    let wt = MatRef::row_major(weight, k, out_channels, true);
                    let d = MatRef::row_major(dy_n, out_channels, area, false);
                    product(simd, g, (k, area, out_channels), wt, d, 0.0, dcols)?;
                    let rows = g.kernel_h * g.kernel_w * area;
                    let plane = g.height * g.width;
                    for (dcols_c, dx_c) in dcols.chunks(rows).zip(dx.chunks_mut(plane)) {
                        col2im_plane(dcols_c, dx_c, g);
                    }
                }
            }
            Ok(())
        })?;
        Ok(part)
    };
    let work = dx_groups.into_iter().enumerate();
    let partials: Vec<Partial> = if parallel(groups) {
        work.collect::<Vec<_>>()
            .into_par_iter()
            .map(run_group)
            .collect::<Result<_>>()?
    } else {
        work.map(run_group).collect::<Result<_>>()?
    };
    dweight.fill(0.0);
    let mut db = dbias;
    if let Some(db) = db.as_deref_mut() {
        db.fill(0.0);
    }
    for p in &partials {
        dweight
            .iter_mut()
            .zip(&p.dweight)
            .for_each(|(d, v)| *d += v);
        if let Some(db) = db.as_deref_mut() {
            db.iter_mut().zip(&p.dbias).for_each(|(d, v)| *d += v);
        }
    }
    Ok(())
}

/// The weights the small-patch path multiplies: rounded to the convolution's input
/// precision (a copy of at most `out_channels x 32` values), or as they are.
fn small_patch_operand<'a>(
    simd: Simd,
    g: &Window2d,
    weight: &'a [f32],
    k: usize,
) -> Cow<'a, [f32]> {
    if k <= SMALL_PATCH && g.precision.is_reduced() {
        let mut w = weight.to_vec();
        round::round_in_place(simd, g.precision, &mut w);
        Cow::Owned(w)
    } else {
        Cow::Borrowed(weight)
    }
}

/// `C = A B + beta C` for C row-major `m x n`, with the convolution's input precision.
fn product(
    simd: Simd,
    g: &Window2d,
    (m, n, k): (usize, usize, usize),
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    let none = gemm::Epilogue::default();
    gemm::gemm_mixed(simd, g.precision, m, n, k, 1.0, a, b, beta, c, n, none)
}
