//! Argument checks shared by every backend, so each op rejects the same bad input with the
//! same message whatever device runs it. Each function takes buffer lengths, not buffers.

use crate::error::check_len;
use crate::{
    AdamWParams, BinaryLayout, GemmSpec, KernelError, Result, SgdParams, StridedLayout, Window2d,
};

pub(crate) fn invalid(op: &'static str, reason: impl Into<String>) -> KernelError {
    KernelError::InvalidArgument {
        op,
        reason: reason.into(),
    }
}

pub(crate) fn gemm(spec: &GemmSpec, a: usize, b: usize, c: usize) -> Result<()> {
    let (la, lb, lc) = spec.buffer_lens();
    if a < la || b < lb {
        return Err(invalid(
            "gemm",
            format!("operands hold {a} and {b} elements, the spec reads {la} and {lb}"),
        ));
    }
    check_len("gemm", "c", lc, c)
}

pub(crate) fn bias(spec: &GemmSpec, bias: usize) -> Result<()> {
    check_len("gemm_bias_act", "bias", spec.n, bias)
}

pub(crate) fn unary(x: usize, y: usize) -> Result<()> {
    check_len("unary", "y", x, y)
}

pub(crate) fn unary_backward(x: usize, y: usize, dy: usize, dx: usize) -> Result<()> {
    check_len("unary_backward", "y", x, y)?;
    check_len("unary_backward", "dy", x, dy)?;
    check_len("unary_backward", "dx", x, dx)
}

pub(crate) fn affine(x: usize, y: usize) -> Result<()> {
    check_len("affine", "y", x, y)
}

pub(crate) fn binary(layout: &BinaryLayout, lhs: usize, rhs: usize, out: usize) -> Result<()> {
    let rank = layout.shape.len();
    if layout.lhs_strides.len() != rank || layout.rhs_strides.len() != rank {
        return Err(invalid("binary", "strides and shape differ in rank"));
    }
    check_len("binary", "out", layout.elem_count(), out)?;
    let span = |strides: &[usize]| {
        StridedLayout {
            shape: layout.shape.clone(),
            strides: strides.to_vec(),
            offset: 0,
        }
        .span()
    };
    if span(&layout.lhs_strides) > lhs || span(&layout.rhs_strides) > rhs {
        return Err(invalid(
            "binary",
            "an operand's strides run past its buffer",
        ));
    }
    Ok(())
}

pub(crate) fn copy_strided(layout: &StridedLayout, src: usize, dst: usize) -> Result<()> {
    if layout.strides.len() != layout.shape.len() {
        return Err(invalid("copy_strided", "strides and shape differ in rank"));
    }
    check_len("copy_strided", "dst", layout.elem_count(), dst)?;
    if layout.span() > src {
        return Err(invalid(
            "copy_strided",
            "the view runs past the source buffer",
        ));
    }
    Ok(())
}

pub(crate) fn copy_into(layout: &StridedLayout, src: usize, dst: usize) -> Result<()> {
    if layout.strides.len() != layout.shape.len() {
        return Err(invalid("copy_into", "strides and shape differ in rank"));
    }
    check_len("copy_into", "src", layout.elem_count(), src)?;
    if layout.span() > dst {
        return Err(invalid(
            "copy_into",
            "the view runs past the destination buffer",
        ));
    }
    Ok(())
}

pub(crate) fn sum_axis(
    x: usize,
    out: usize,
    outer: usize,
    axis: usize,
    inner: usize,
) -> Result<()> {
    check_len(
        "sum_axis",
        "x",
        crate::saturating_product(&[outer, axis, inner]),
        x,
    )?;
    check_len(
        "sum_axis",
        "out",
        crate::saturating_product(&[outer, inner]),
        out,
    )
}

/// Every buffer of a row-wise op over `[rows, cols]`.
pub(crate) fn rows(
    op: &'static str,
    bufs: &[(&'static str, usize)],
    rows: usize,
    cols: usize,
) -> Result<()> {
    let len = crate::saturating_product(&[rows, cols]);
    bufs.iter()
        .try_for_each(|&(name, got)| check_len(op, name, len, got))
}

/// Lengths of one scalar buffer (`loss`, `dloss`).
pub(crate) fn scalar(op: &'static str, name: &'static str, got: usize) -> Result<()> {
    check_len(op, name, 1, got)
}

pub(crate) fn sgd(p: &SgdParams, param: usize, grad: usize, momentum: Option<usize>) -> Result<()> {
    check_len("sgd_step", "grad", param, grad)?;
    match (momentum, p.momentum != 0.0) {
        (Some(len), true) => check_len("sgd_step", "momentum", param, len),
        (None, true) => Err(invalid("sgd_step", "momentum > 0 needs a momentum buffer")),
        _ => Ok(()),
    }
}

pub(crate) fn adamw(p: &AdamWParams, param: usize, grad: usize, m: usize, v: usize) -> Result<()> {
    for (name, len) in [("grad", grad), ("m", m), ("v", v)] {
        check_len("adamw_step", name, param, len)?;
    }
    if p.step == 0 {
        return Err(invalid("adamw_step", "step counts from 1"));
    }
    Ok(())
}

pub(crate) fn im2col(g: &Window2d, x: usize, cols: usize) -> Result<()> {
    g.validate("im2col")?;
    check_len("im2col", "x", g.input_len(), x)?;
    check_len("im2col", "cols", g.cols_len(), cols)
}

pub(crate) fn col2im(g: &Window2d, cols: usize, x: usize) -> Result<()> {
    g.validate("col2im")?;
    check_len("col2im", "cols", g.cols_len(), cols)?;
    check_len("col2im", "x", g.input_len(), x)
}

/// Pooling: the input-sized buffer, then each output-sized one.
pub(crate) fn pool(
    op: &'static str,
    g: &Window2d,
    (input, len): (&'static str, usize),
    outputs: &[(&'static str, usize)],
) -> Result<()> {
    g.validate_pool(op)?;
    check_len(op, input, g.input_len(), len)?;
    for &(name, len) in outputs {
        check_len(op, name, g.output_len(), len)?;
    }
    Ok(())
}

/// Layer norm: `[rows, cols]` activations, `[cols]` parameters, `2 * rows` statistics.
pub(crate) fn layer_norm(
    op: &'static str,
    rows_bufs: &[(&'static str, usize)],
    col_bufs: &[(&'static str, usize)],
    stats: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    crate::validate::rows(op, rows_bufs, rows, cols)?;
    for &(name, len) in col_bufs {
        check_len(op, name, cols, len)?;
    }
    check_len(op, "stats", crate::saturating_product(&[2, rows]), stats)
}

/// A convolution's buffers: input, weight and output sized by `g` and `out_channels`, a
/// bias of one value per output channel.
pub(crate) fn conv2d(
    g: &Window2d,
    out_channels: usize,
    (x, weight, y): (usize, usize, usize),
    bias: Option<usize>,
) -> Result<()> {
    g.validate("conv2d")?;
    check_len("conv2d", "x", g.input_len(), x)?;
    check_len("conv2d", "weight", out_channels * g.patch_len(), weight)?;
    check_len(
        "conv2d",
        "y",
        g.batch * out_channels * g.out_h() * g.out_w(),
        y,
    )?;
    match bias {
        Some(b) => check_len("conv2d", "bias", out_channels, b),
        None => Ok(()),
    }
}

/// The gradients of a convolution: `[x, weight, dy, dweight]`, then `dx` and `dbias`
/// where asked for.
pub(crate) fn conv2d_backward(
    g: &Window2d,
    out_channels: usize,
    [x, weight, dy, dweight]: [usize; 4],
    dx: Option<usize>,
    dbias: Option<usize>,
) -> Result<()> {
    const OP: &str = "conv2d_backward";
    g.validate(OP)?;
    let patch = out_channels * g.patch_len();
    check_len(OP, "x", g.input_len(), x)?;
    check_len(OP, "weight", patch, weight)?;
    check_len(OP, "dweight", patch, dweight)?;
    check_len(OP, "dy", g.batch * out_channels * g.out_h() * g.out_w(), dy)?;
    if let Some(dx) = dx {
        check_len(OP, "dx", g.input_len(), dx)?;
    }
    match dbias {
        Some(b) => check_len(OP, "dbias", out_channels, b),
        None => Ok(()),
    }
}
