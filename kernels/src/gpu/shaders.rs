//! Kernels assembled from the WGSL sources of `ringtrain-shaders` (the top-level
//! `shaders/` crate), and the compiled pipelines, built once per device and
//! kept: a kernel is compiled the first time an op needs it.

use super::device::Shared;
use crate::{KernelError, Precision, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ringtrain_shaders::{
    attention, common, elementwise, gemm, index, loss, norm, optim, quant, reduce, window,
};

/// One compute kernel, and the variant of it an op needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Shader {
    Unary,
    UnaryBackward,
    Fill,
    Binary,
    CopyStrided,
    SumByThread,
    SumByWorkgroup,
    LogSoftmax,
    LogSoftmaxBackward,
    CrossEntropy,
    CrossEntropyBackward,
    Sgd,
    AdamW,
    Gemm(GemmVariant),
    Im2col,
    Col2im,
    MaxPool,
    MaxPoolBackward,
    AvgPool,
    AvgPoolBackward,
    LayerNorm,
    LayerNormBackward,
    LayerNormParamsGrad,
    Gather,
    ScatterAdd,
    CopyInto,
    Select,
    Compare,
    Triangle,
    Arange,
    Cast,
    Argmax,
    LinearQ8,
    DequantizeQ8,
    /// The attention kernels, compiled per head size.
    Attention(AttentionKernel, u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum AttentionKernel {
    Forward,
    Dsum,
    Dq,
    Dkdv,
}

/// GEMM variants: which operands are stored transposed, and which can be read as vec4s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct GemmVariant {
    pub trans_a: bool,
    pub trans_b: bool,
    pub vec4_a: bool,
    pub vec4_b: bool,
    /// The format A's and B's values are rounded to as they are loaded.
    pub inputs: Precision,
    /// Workgroup tiles of f16 (`enable f16`; f16 inputs on a device with `SHADER_F16`),
    /// else of f32.
    pub f16_tiles: bool,
}

impl Shader {
    /// The kernel's file and entry point; `reduce` when it needs the workgroup reductions.
    fn file(self) -> (&'static str, &'static str, bool) {
        match self {
            Shader::Unary => (elementwise::UNARY, "main", false),
            Shader::UnaryBackward => (elementwise::UNARY_BACKWARD, "main", false),
            Shader::Fill => (elementwise::FILL, "main", false),
            Shader::Binary => (elementwise::BINARY, "main", false),
            Shader::CopyStrided => (elementwise::COPY_STRIDED, "main", false),
            Shader::SumByThread => (reduce::SUM_AXIS, "by_thread", true),
            Shader::SumByWorkgroup => (reduce::SUM_AXIS, "by_workgroup", true),
            Shader::LogSoftmax => (loss::LOG_SOFTMAX, "main", true),
            Shader::LogSoftmaxBackward => (loss::LOG_SOFTMAX_BACKWARD, "main", true),
            Shader::CrossEntropy => (loss::CROSS_ENTROPY, "main", true),
            Shader::CrossEntropyBackward => (loss::CROSS_ENTROPY_BACKWARD, "main", false),
            Shader::Sgd => (optim::SGD, "main", false),
            Shader::AdamW => (optim::ADAMW, "main", false),
            Shader::Gemm(_) => (gemm::GEMM, "main", false),
            Shader::Im2col => (window::IM2COL, "main", false),
            Shader::Col2im => (window::COL2IM, "main", false),
            Shader::MaxPool => (window::MAX_POOL, "main", false),
            Shader::MaxPoolBackward => (window::MAX_POOL_BACKWARD, "main", false),
            Shader::AvgPool => (window::AVG_POOL, "main", false),
            Shader::AvgPoolBackward => (window::AVG_POOL_BACKWARD, "main", false),
            Shader::LayerNorm => (norm::LAYER_NORM, "main", true),
            Shader::LayerNormBackward => (norm::LAYER_NORM_BACKWARD, "main", true),
            Shader::LayerNormParamsGrad => (norm::LAYER_NORM_PARAMS_GRAD, "main", false),
            Shader::Gather => (index::GATHER, "main", false),
            Shader::ScatterAdd => (index::SCATTER_ADD, "main", false),
            Shader::CopyInto => (index::COPY_INTO, "main", false),
            Shader::Select => (index::SELECT, "main", false),
            Shader::Compare => (index::COMPARE, "main", false),
            Shader::Triangle => (index::TRIANGLE, "main", false),
            Shader::Arange => (index::ARANGE, "main", false),
            Shader::Cast => (index::CAST, "main", false),
            Shader::Argmax => (index::ARGMAX, "main", false),
            Shader::LinearQ8 => (quant::LINEAR_Q8, "main", false),
            Shader::DequantizeQ8 => (quant::DEQUANTIZE_Q8, "main", false),
            Shader::Attention(kernel, _) => match kernel {
                AttentionKernel::Forward => (attention::FORWARD, "main", false),
                AttentionKernel::Dsum => (attention::DSUM, "main", false),
                AttentionKernel::Dq => (attention::DQ, "main", false),
                AttentionKernel::Dkdv => (attention::DKDV, "main", false),
            },
        }
    }

    fn source(self) -> String {
        let (body, _, reduce) = self.file();
        // `enable` directives come before anything else in a module.
        let mut src = match self {
            Shader::Gemm(v) if v.f16_tiles => String::from("enable f16;\n"),
            _ => String::new(),
        };
        src.push_str(common::COMMON);
        if reduce {
            src.push_str(common::REDUCE);
        }
        if matches!(
            self,
            Shader::Im2col
                | Shader::Col2im
                | Shader::MaxPool
                | Shader::MaxPoolBackward
                | Shader::AvgPool
                | Shader::AvgPoolBackward
        ) {
            src.push_str(window::GEOMETRY);
        }
        if let Shader::Attention(_, head_dim) = self {
            src.push_str(&format!("const HEAD_DIM: u32 = {head_dim}u;\n"));
            src.push_str(attention::COMMON);
        }
        if let Shader::Gemm(v) = self {
            src.push_str(&gemm_loader("a", 1, v.vec4_a));
            src.push_str(&gemm_loader("b", 2, v.vec4_b));
            let elem = if v.f16_tiles { "f16" } else { "f32" };
            src.push_str(&format!("alias TileElem = {elem};\n"));
        }
        src.push_str(body);
        src
    }

    /// Values of the kernel's `override` constants.
    fn constants(self) -> Vec<(&'static str, f64)> {
        match self {
            Shader::Gemm(v) => vec![
                ("TRANS_A", f64::from(u8::from(v.trans_a))),
                ("TRANS_B", f64::from(u8::from(v.trans_b))),
                ("INPUTS", f64::from(format_code(v.inputs))),
            ],
            _ => Vec::new(),
        }
    }
}

/// The shaders' FORMAT_* code of an input precision (common.wgsl).
pub(super) fn format_code(p: Precision) -> u32 {
    match p {
        Precision::F32 => 0,
        Precision::Bf16 => 1,
        Precision::F16 => 2,
    }
}

fn gemm_loader(name: &str, binding: u32, vec4: bool) -> String {
    let template = if vec4 {
        gemm::LOAD_VEC4
    } else {
        gemm::LOAD_SCALAR
    };
    template
        .replace("BINDING", &binding.to_string())
        .replace("NAME", name)
}

/// A compiled kernel and the layout its bind groups follow.
#[derive(Clone)]
pub(super) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// The shader and variant, as traces name its dispatches.
    pub name: Arc<str>,
}

#[derive(Default)]
pub(super) struct Pipelines {
    cache: Mutex<HashMap<Shader, Kernel>>,
}

impl Pipelines {
    pub fn get(&self, shared: &Shared, shader: Shader) -> Result<Kernel> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = cache.get(&shader) {
            return Ok(k.clone());
        }
        let kernel = compile(shared, shader)?;
        cache.insert(shader, kernel.clone());
        Ok(kernel)
    }
}

fn compile(shared: &Shared, shader: Shader) -> Result<Kernel> {
    let device = &shared.device;
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("ringtrain"),
        source: wgpu::ShaderSource::Wgsl(shader.source().into()),
    });
    let constants = shader.constants();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("ringtrain"),
        layout: None,
        module: &module,
        entry_point: Some(shader.file().1),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(KernelError::Device(format!(
            "the device cannot compile kernel {shader:?}: {e}"
        )));
    }
    let layout = pipeline.get_bind_group_layout(0);
    let name = format!("{shader:?}").into();
    Ok(Kernel {
        pipeline,
        layout,
        name,
    })
}
