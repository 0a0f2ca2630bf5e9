//! Indexing and masking: gathers by an index buffer and their deterministic scatter-add,
//! writes into a view, selects, comparisons, triangles, `arange`, casts and argmax.
//! Buffers are `Vec<f32>`; u32 operands are the same words read through `bytemuck`.

use super::elementwise::{
    copy_row, for_each_row, for_each_strided_row, parallel, RowOffsets, PAR_CHUNK,
};
use super::isa::simd_fn;
use super::Simd;
use crate::layout::collapse;
use crate::{BinaryLayout, CompareOp, DType, GatherSpec, SelectLayout, StridedLayout};
use rayon::prelude::*;

pub(crate) fn words(buf: &[f32]) -> &[u32] {
    bytemuck::cast_slice(buf)
}

pub(crate) fn words_mut(buf: &mut [f32]) -> &mut [u32] {
    bytemuck::cast_slice_mut(buf)
}

simd_fn! {
    /// `acc += x`.
    pub(crate) fn add_into(acc: &mut [f32], x: &[f32]) {
        acc.iter_mut().zip(x).for_each(|(a, &v)| *a += v);
    }
}

pub(crate) fn gather(spec: &GatherSpec, x: &[f32], idx: &[u32], out: &mut [f32]) {
    let GatherSpec { n, m, inner, .. } = *spec;
    if out.is_empty() {
        return;
    }
    // One output row of `inner` elements per (o, j).
    let run = |(row, out): (usize, &mut [f32])| {
        let (o, j) = (row / m, row % m);
        let src = &x[o * n * inner..(o + 1) * n * inner];
        if spec.idx_strides[2] == 0 || inner == 1 {
            let at = idx[spec.idx_at(o, j, 0)] as usize;
            match src.get(at * inner..(at + 1) * inner) {
                Some(s) => out.copy_from_slice(s),
                None => out.fill(0.0),
            }
        } else {
            for (i, y) in out.iter_mut().enumerate() {
                let at = idx[spec.idx_at(o, j, i)] as usize;
                *y = if at < n { src[at * inner + i] } else { 0.0 };
            }
        }
    };
    for_each_row(out, inner, run);
}

/// Each task owns a contiguous range of the `n` destination rows and scans every index in
/// order, so each sum runs in increasing `j` whatever the split.
pub(crate) fn scatter_add(simd: Simd, spec: &GatherSpec, dy: &[f32], idx: &[u32], dx: &mut [f32]) {
    let GatherSpec {
        outer, n, m, inner, ..
    } = *spec;
    dx.fill(0.0);
    if dx.is_empty() || m == 0 {
        return;
    }
    let per_row = spec.idx_strides[2] == 0 || inner == 1;
    let scatter = |o: usize, rows: std::ops::Range<usize>, dx: &mut [f32]| {
        for j in 0..m {
            let src = &dy[(o * m + j) * inner..(o * m + j + 1) * inner];
            if per_row {
                let at = idx[spec.idx_at(o, j, 0)] as usize;
                if rows.contains(&at) {
                    let d = (at - rows.start) * inner;
                    add_into(simd, &mut dx[d..d + inner], src);
                }
            } else {
                for (i, &g) in src.iter().enumerate() {
                    let at = idx[spec.idx_at(o, j, i)] as usize;
                    if rows.contains(&at) {
                        dx[(at - rows.start) * inner + i] += g;
                    }
                }
            }
        }
    };
    let work = outer * m * inner;
    if outer > 1 && parallel(work) {
        dx.par_chunks_mut(n * inner)
            .enumerate()
            .for_each(|(o, dx)| scatter(o, 0..n, dx));
    } else if parallel(work) && n > 1 {
        let tasks = rayon::current_num_threads().min(n);
        let rows_per = n.div_ceil(tasks);
        for o in 0..outer {
            dx[o * n * inner..(o + 1) * n * inner]
                .par_chunks_mut(rows_per * inner)
                .enumerate()
                .for_each(|(t, dx)| {
                    let start = t * rows_per;
                    scatter(o, start..start + dx.len() / inner, dx)
                });
        }
    } else {
        for o in 0..outer {
            scatter(o, 0..n, &mut dx[o * n * inner..(o + 1) * n * inner]);
        }
    }
}

/// Strided offsets of every element of `shape`, visited in row-major order.
fn offsets(shape: &[usize], strides: &[usize], offset: usize, mut f: impl FnMut(usize, usize)) {
    let count: usize = shape.iter().product();
    let mut at = vec![0usize; shape.len()];
    let mut off = offset;
    for i in 0..count {
        f(i, off);
        for d in (0..shape.len()).rev() {
            at[d] += 1;
            off += strides[d];
            if at[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d];
            at[d] = 0;
        }
    }
}

pub(crate) fn copy_into(src: &[f32], dst: &mut [f32], layout: &StridedLayout) {
    if src.is_empty() {
        return;
    }
    let (shape, strides) = collapse(&layout.shape, &[&layout.strides]);
    let s = &strides[0];
    match (shape.len(), s.last()) {
        (0, _) => {
            if let Some(&v) = src.first() {
                dst[layout.offset] = v;
            }
        }
        (_, Some(1)) => {
            let inner = shape[shape.len() - 1];
            let mut at = RowOffsets::new(&shape, [s], [layout.offset], 0);
            for chunk in src.chunks(inner) {
                let [base] = at.get();
                copy_row(&mut dst[base..base + inner], chunk);
                at.advance();
            }
        }
        _ => offsets(&shape, s, layout.offset, |i, off| dst[off] = src[i]),
    }
}

pub(crate) fn select(layout: &SelectLayout, cond: &[u32], a: &[f32], b: &[f32], out: &mut [f32]) {
    if out.is_empty() {
        return;
    }
    let (shape, st) = collapse(
        &layout.shape,
        &[&layout.cond_strides, &layout.a_strides, &layout.b_strides],
    );
    let last = |k: usize| *st[k].last().unwrap_or(&0);
    let (sc, sa, sb) = (last(0), last(1), last(2));
    let run = |[c0, a0, b0]: [usize; 3], out: &mut [f32]| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = if cond[c0 + j * sc] != 0 {
                a[a0 + j * sa]
            } else {
                b[b0 + j * sb]
            };
        }
    };
    for_each_strided_row(out, &shape, [&st[0], &st[1], &st[2]], [0; 3], run);
}

pub(crate) fn compare(
    op: CompareOp,
    dtype: DType,
    layout: &BinaryLayout,
    lhs: &[f32],
    rhs: &[f32],
    out: &mut [f32],
) {
    if out.is_empty() {
        return;
    }
    let (shape, st) = collapse(&layout.shape, &[&layout.lhs_strides, &layout.rhs_strides]);
    let (sl, sr) = (*st[0].last().unwrap_or(&0), *st[1].last().unwrap_or(&0));
    let (lw, rw) = (words(lhs), words(rhs));
    let run = |[l0, r0]: [usize; 2], out: &mut [f32]| {
        let out = words_mut(out);
        for (j, o) in out.iter_mut().enumerate() {
            let (li, ri) = (l0 + j * sl, r0 + j * sr);
            let t = match dtype {
                DType::F32 => op.eval(lhs[li], rhs[ri]),
                DType::U32 => op.eval(lw[li], rw[ri]),
                DType::F16 | DType::Bf16 => unreachable!("index::compare refuses 16-bit types"),
            };
            *o = u32::from(t);
        }
    };
    for_each_strided_row(out, &shape, [&st[0], &st[1]], [0; 2], run);
}

pub(crate) fn triangle(
    x: &[f32],
    out: &mut [f32],
    rows: usize,
    cols: usize,
    diagonal: i64,
    upper: bool,
) {
    if out.is_empty() {
        return;
    }
    let run = |(row, out): (usize, &mut [f32])| {
        let r = (row % rows) as i64;
        let src = &x[row * cols..(row + 1) * cols];
        for (c, (o, &v)) in out.iter_mut().zip(src).enumerate() {
            let k = c as i64 - r;
            let keep = if upper { k >= diagonal } else { k <= diagonal };
            *o = if keep { v } else { 0.0 };
        }
    };
    for_each_row(out, cols, run);
}

pub(crate) fn arange(out: &mut [f32], start: u32, step: u32) {
    for (i, o) in words_mut(out).iter_mut().enumerate() {
        *o = start.wrapping_add((i as u32).wrapping_mul(step));
    }
}

/// Every cast [`crate::index::cast`] allows, on buffers it checked.
pub(crate) fn cast(x: &[f32], from: DType, to: DType, out: &mut [f32]) {
    match (from, to) {
        (DType::F32, DType::F16 | DType::Bf16) => super::half::pack(x, to, out),
        (DType::F16 | DType::Bf16, DType::F32) => super::half::unpack(x, from, out),
        (a, b) if a == b => out.copy_from_slice(x),
        (DType::U32, DType::F32) => {
            for (o, &w) in out.iter_mut().zip(words(x)) {
                *o = w as f32;
            }
        }
        (DType::F32, DType::U32) => {
            // `as` saturates, and sends NaN to 0.
            for (o, &v) in words_mut(out).iter_mut().zip(x) {
                *o = v as u32;
            }
        }
        (from, to) => unreachable!("index::cast refuses {from} to {to}"),
    }
}

pub(crate) fn argmax_axis(x: &[f32], out: &mut [f32], outer: usize, axis: usize, inner: usize) {
    let out = words_mut(out);
    let best = |o: usize, i: usize| {
        let mut at = 0usize;
        let mut best = x[o * axis * inner + i];
        for a in 1..axis {
            let v = x[(o * axis + a) * inner + i];
            if v > best || (v.is_nan() && !best.is_nan()) {
                best = v;
                at = a;
            }
        }
        at as u32
    };
    if parallel(outer * axis * inner) {
        out.par_chunks_mut(inner)
            .enumerate()
            .with_min_len((PAR_CHUNK / (axis * inner).max(1)).max(1))
            .for_each(|(o, row)| {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(i, r)| *r = best(o, i))
            });
    } else {
        for o in 0..outer {
            for i in 0..inner {
                out[o * inner + i] = best(o, i);
            }
        }
    }
}
