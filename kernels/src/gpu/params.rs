//! Uniform blocks of the kernels, laid out exactly as the `Params` structs of
//! shaders/wgsl/*.wgsl (16-byte multiples; `array<vec4<u32>, 2>` is `[u32; 8]`).

use crate::{KernelError, Result, UnaryOp};
use bytemuck::{Pod, Zeroable};

/// Dimensions the strided kernels (binary, copy_strided) take after merging.
pub(super) const MAX_RANK: usize = 8;

/// `unary.wgsl`'s op code for `y = x * mul + add`.
pub(super) const OP_AFFINE: u32 = 100;

/// The GEMM epilogue's "no activation" (common.wgsl treats unknown codes as identity).
pub(super) const ACT_NONE: u32 = u32::MAX;

/// The op codes of common.wgsl.
pub(super) fn unary_code(op: UnaryOp) -> u32 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Exp => 1,
        UnaryOp::Log => 2,
        UnaryOp::Sqr => 3,
        UnaryOp::Sqrt => 4,
        UnaryOp::Relu => 5,
        UnaryOp::Gelu => 6,
        UnaryOp::Tanh => 7,
        UnaryOp::Sigmoid => 8,
        UnaryOp::NonFinite => 9,
    }
}

/// Sizes and indices are u32 on the GPU; a buffer is far smaller than 2^32 elements on
/// any device (the storage binding limit), but a spec's arithmetic is checked anyway.
pub(super) fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| KernelError::InvalidArgument {
        op,
        reason: format!("{what} = {v} does not fit the GPU's 32-bit indices"),
    })
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Unary {
    pub len: u32,
    pub op: u32,
    pub mul: f32,
    pub add: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct UnaryBackward {
    pub len: u32,
    pub op: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Fill {
    pub len: u32,
    pub value: f32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Binary {
    pub len: u32,
    pub rank: u32,
    pub op: u32,
    pub _pad: u32,
    pub shape: [u32; MAX_RANK],
    pub lhs_strides: [u32; MAX_RANK],
    pub rhs_strides: [u32; MAX_RANK],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct CopyStrided {
    pub len: u32,
    pub rank: u32,
    pub offset: u32,
    pub _pad: u32,
    pub shape: [u32; MAX_RANK],
    pub strides: [u32; MAX_RANK],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct SumAxis {
    pub outer: u32,
    pub axis: u32,
    pub inner: u32,
    pub scale: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Rows {
    pub rows: u32,
    pub cols: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Sgd {
    pub len: u32,
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: u32,
    pub _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct AdamW {
    pub len: u32,
    pub decay: f32,
    pub step_size: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Gemm {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch_base: u32,
    pub stride_a: u32,
    pub stride_b: u32,
    pub alpha: f32,
    pub beta: f32,
    pub act: u32,
    pub has_bias: u32,
    /// First row and column of C this launch computes (products taller or wider than
    /// one grid dimension of tiles take several launches).
    pub row_base: u32,
    pub col_base: u32,
}

/// Copies `dims` into a kernel's fixed-size array (the caller checked the rank).
pub(super) fn dims(op: &'static str, what: &str, v: &[usize]) -> Result<[u32; MAX_RANK]> {
    let mut out = [0u32; MAX_RANK];
    for (o, &d) in out.iter_mut().zip(v) {
        *o = u32_of(op, what, d)?;
    }
    Ok(out)
}

/// shaders/wgsl/window.wgsl's geometry, for `len` invocations.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Window {
    pub len: u32,
    pub height: u32,
    pub width: u32,
    pub kernel_h: u32,
    pub kernel_w: u32,
    pub stride_h: u32,
    pub stride_w: u32,
    pub pad_h: u32,
    pub pad_w: u32,
    pub out_h: u32,
    pub out_w: u32,
    pub scale: f32,
}

impl Window {
    pub fn new(op: &'static str, g: &crate::Window2d, len: usize) -> Result<Self> {
        // Every index the kernels form stays below the largest buffer length, which the
        // caller checked fits u32 (`len`, the input and the columns).
        u32_of(op, "input elements", g.input_len())?;
        u32_of(op, "im2col elements", g.cols_len())?;
        Ok(Self {
            len: u32_of(op, "elements", len)?,
            height: u32_of(op, "height", g.height)?,
            width: u32_of(op, "width", g.width)?,
            kernel_h: u32_of(op, "kernel_h", g.kernel_h)?,
            kernel_w: u32_of(op, "kernel_w", g.kernel_w)?,
            stride_h: u32_of(op, "stride_h", g.stride_h)?,
            stride_w: u32_of(op, "stride_w", g.stride_w)?,
            pad_h: u32_of(op, "pad_h", g.pad_h)?,
            pad_w: u32_of(op, "pad_w", g.pad_w)?,
            out_h: u32_of(op, "out_h", g.out_h())?,
            out_w: u32_of(op, "out_w", g.out_w())?,
            scale: 1.0 / (g.kernel_h * g.kernel_w) as f32,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Gather {
    pub len: u32,
    pub n: u32,
    pub m: u32,
    pub inner: u32,
    pub strides: [u32; 3],
    /// Row partitions of the scatter-add (unused by the gather).
    pub parts: u32,
}

impl Gather {
    pub fn new(
        op: &'static str,
        spec: &crate::GatherSpec,
        len: usize,
        parts: usize,
    ) -> Result<Self> {
        u32_of(op, "source elements", spec.src_len())?;
        u32_of(op, "index span", spec.idx_span())?;
        Ok(Self {
            len: u32_of(op, "invocations", len)?,
            n: u32_of(op, "n", spec.n)?,
            m: u32_of(op, "m", spec.m)?,
            inner: u32_of(op, "inner", spec.inner)?,
            strides: [
                u32_of(op, "index stride", spec.idx_strides[0])?,
                u32_of(op, "index stride", spec.idx_strides[1])?,
                u32_of(op, "index stride", spec.idx_strides[2])?,
            ],
            parts: u32_of(op, "parts", parts)?,
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Select {
    pub len: u32,
    pub rank: u32,
    pub _pad: [u32; 2],
    pub shape: [u32; MAX_RANK],
    pub cond_strides: [u32; MAX_RANK],
    pub a_strides: [u32; MAX_RANK],
    pub b_strides: [u32; MAX_RANK],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Compare {
    pub len: u32,
    pub rank: u32,
    pub op: u32,
    pub is_f32: u32,
    pub shape: [u32; MAX_RANK],
    pub lhs_strides: [u32; MAX_RANK],
    pub rhs_strides: [u32; MAX_RANK],
}

/// The op codes of compare.wgsl.
pub(super) fn compare_code(op: crate::CompareOp) -> u32 {
    use crate::CompareOp::*;
    match op {
        Eq => 0,
        Ne => 1,
        Lt => 2,
        Le => 3,
        Gt => 4,
        Ge => 5,
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Triangle {
    pub len: u32,
    pub rows: u32,
    pub cols: u32,
    pub diagonal: i32,
    pub upper: u32,
    pub _pad: [u32; 3],
}

/// arange.wgsl, cast.wgsl and argmax.wgsl: a length and three words.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Words4 {
    pub len: u32,
    pub a: u32,
    pub b: u32,
    pub _pad: u32,
}

/// attention_common.wgsl's `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct Attention {
    pub tq: u32,
    pub tk: u32,
    pub causal: u32,
    pub head_base: u32,
    pub scale: f32,
    pub threshold: u32,
    pub seed: u32,
    pub dropout: u32,
    pub inv_keep: f32,
    pub _pad: [u32; 3],
}

impl Attention {
    pub fn new(op: &'static str, spec: &crate::AttentionSpec) -> Result<Self> {
        u32_of(op, "q elements", spec.q_len())?;
        u32_of(op, "k elements", spec.kv_len())?;
        Ok(Self {
            tq: u32_of(op, "tq", spec.tq)?,
            tk: u32_of(op, "tk", spec.tk)?,
            causal: u32::from(spec.causal),
            head_base: 0,
            scale: spec.scale,
            threshold: spec.drop_threshold(),
            seed: spec.seed,
            dropout: u32::from(spec.dropout > 0.0),
            inv_keep: 1.0 / (1.0 - spec.dropout),
            _pad: [0; 3],
        })
    }
}

/// The layer-norm kernels' `Params`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct LayerNorm {
    pub rows: u32,
    pub cols: u32,
    pub eps: f32,
    pub _pad: u32,
}
