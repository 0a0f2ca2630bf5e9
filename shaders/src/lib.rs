//! ringtrain-shaders: the WGSL sources of ringtrain's GPU kernels, one file per kernel
//! under `wgsl/`, grouped here by family. Each is a `&'static str` compiled into this
//! crate (`include_str!` of its own files), so the crate packages self-contained.
//!
//! The sources are fragments, not whole modules: `ringtrain-kernels` assembles a kernel
//! from [`common::COMMON`] (index helpers, the unary op codes), the helpers a family
//! needs ([`common::REDUCE`], [`window::GEOMETRY`], the GEMM loaders) and the kernel's
//! own body, then specialises it with `override` constants.

/// Prepended to every kernel, or to those that need them.
pub mod common {
    /// Index helpers and the unary op codes shared with the CPU's `UnaryOp`.
    pub const COMMON: &str = include_str!("../wgsl/common.wgsl");
    /// Workgroup tree reductions (sum, max) for kernels that reduce a row or an axis.
    pub const REDUCE: &str = include_str!("../wgsl/reduce.wgsl");
}

/// Elementwise maps, broadcasting binary ops, strided copies.
pub mod elementwise {
    pub const UNARY: &str = include_str!("../wgsl/unary.wgsl");
    pub const UNARY_BACKWARD: &str = include_str!("../wgsl/unary_backward.wgsl");
    pub const FILL: &str = include_str!("../wgsl/fill.wgsl");
    pub const BINARY: &str = include_str!("../wgsl/binary.wgsl");
    pub const COPY_STRIDED: &str = include_str!("../wgsl/copy_strided.wgsl");
}

/// Indexing and masks: gathers by an index buffer and their scatter-add, writes into a
/// view, selects, comparisons, triangles, `arange`, dtype casts, argmax.
pub mod index {
    pub const GATHER: &str = include_str!("../wgsl/gather.wgsl");
    pub const SCATTER_ADD: &str = include_str!("../wgsl/scatter_add.wgsl");
    pub const COPY_INTO: &str = include_str!("../wgsl/copy_into.wgsl");
    pub const SELECT: &str = include_str!("../wgsl/select.wgsl");
    pub const COMPARE: &str = include_str!("../wgsl/compare.wgsl");
    pub const TRIANGLE: &str = include_str!("../wgsl/triangle.wgsl");
    pub const ARANGE: &str = include_str!("../wgsl/arange.wgsl");
    pub const CAST: &str = include_str!("../wgsl/cast.wgsl");
    pub const ARGMAX: &str = include_str!("../wgsl/argmax.wgsl");
}

/// Fused attention (flash-attention style) and its backward pass. Each kernel is
/// compiled per head size: the host prepends `const HEAD_DIM: u32`, then [`attention::COMMON`].
pub mod attention {
    pub const COMMON: &str = include_str!("../wgsl/attention_common.wgsl");
    pub const FORWARD: &str = include_str!("../wgsl/attention.wgsl");
    pub const DSUM: &str = include_str!("../wgsl/attention_dsum.wgsl");
    pub const DQ: &str = include_str!("../wgsl/attention_dq.wgsl");
    pub const DKDV: &str = include_str!("../wgsl/attention_dkdv.wgsl");
}

/// Sums over an axis (entry points `by_thread` and `by_workgroup`).
pub mod reduce {
    pub const SUM_AXIS: &str = include_str!("../wgsl/sum_axis.wgsl");
}

/// Log-softmax and the fused softmax-cross-entropy, with their backward kernels.
pub mod loss {
    pub const LOG_SOFTMAX: &str = include_str!("../wgsl/log_softmax.wgsl");
    pub const LOG_SOFTMAX_BACKWARD: &str = include_str!("../wgsl/log_softmax_backward.wgsl");
    pub const CROSS_ENTROPY: &str = include_str!("../wgsl/cross_entropy.wgsl");
    pub const CROSS_ENTROPY_BACKWARD: &str = include_str!("../wgsl/cross_entropy_backward.wgsl");
}

/// Layer normalisation over the last dimension, and its gradients.
pub mod norm {
    pub const LAYER_NORM: &str = include_str!("../wgsl/layer_norm.wgsl");
    pub const LAYER_NORM_BACKWARD: &str = include_str!("../wgsl/layer_norm_backward.wgsl");
    pub const LAYER_NORM_PARAMS_GRAD: &str = include_str!("../wgsl/layer_norm_params_grad.wgsl");
}

/// Fused optimizer steps.
pub mod optim {
    pub const SGD: &str = include_str!("../wgsl/sgd.wgsl");
    pub const ADAMW: &str = include_str!("../wgsl/adamw.wgsl");
}

/// The tiled GEMM, and the loaders prepended to it per operand (vec4 or scalar).
pub mod gemm {
    pub const GEMM: &str = include_str!("../wgsl/gemm.wgsl");
    pub const LOAD_VEC4: &str = include_str!("../wgsl/gemm_load_vec4.wgsl");
    pub const LOAD_SCALAR: &str = include_str!("../wgsl/gemm_load_scalar.wgsl");
}

/// Int8 weights for inference: the linear layer that dequantizes them in its loads, and
/// their f32 values.
pub mod quant {
    pub const LINEAR_Q8: &str = include_str!("../wgsl/linear_q8.wgsl");
    pub const DEQUANTIZE_Q8: &str = include_str!("../wgsl/dequantize_q8.wgsl");
}

/// Sliding-window kernels over NCHW images: im2col and its adjoint, pooling.
pub mod window {
    /// The window geometry helpers every kernel of this family starts with.
    pub const GEOMETRY: &str = include_str!("../wgsl/window.wgsl");
    pub const IM2COL: &str = include_str!("../wgsl/im2col.wgsl");
    pub const COL2IM: &str = include_str!("../wgsl/col2im.wgsl");
    pub const MAX_POOL: &str = include_str!("../wgsl/max_pool.wgsl");
    pub const MAX_POOL_BACKWARD: &str = include_str!("../wgsl/max_pool_backward.wgsl");
    pub const AVG_POOL: &str = include_str!("../wgsl/avg_pool.wgsl");
    pub const AVG_POOL_BACKWARD: &str = include_str!("../wgsl/avg_pool_backward.wgsl");
}
