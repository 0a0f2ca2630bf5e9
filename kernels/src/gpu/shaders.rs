//! The WGSL sources of shaders/ and the compiled pipelines, built once per device and
//! kept: a kernel is compiled the first time an op needs it.

use super::device::Shared;
use crate::{KernelError, Result};
use std::collections::HashMap;
use std::sync::Mutex;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
const GEMM: &str = include_str!("../../shaders/gemm.wgsl");
const WINDOW: &str = include_str!("../../shaders/window.wgsl");
const GEMM_LOAD_VEC4: &str = include_str!("../../shaders/gemm_load_vec4.wgsl");
const GEMM_LOAD_SCALAR: &str = include_str!("../../shaders/gemm_load_scalar.wgsl");

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
}

/// GEMM variants: which operands are stored transposed, and which can be read as vec4s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct GemmVariant {
    pub trans_a: bool,
    pub trans_b: bool,
    pub vec4_a: bool,
    pub vec4_b: bool,
}

impl Shader {
    /// The kernel's file and entry point; `reduce` when it needs the workgroup reductions.
    fn file(self) -> (&'static str, &'static str, bool) {
        match self {
            Shader::Unary => (include_str!("../../shaders/unary.wgsl"), "main", false),
            Shader::UnaryBackward => (
                include_str!("../../shaders/unary_backward.wgsl"),
                "main",
                false,
            ),
            Shader::Fill => (include_str!("../../shaders/fill.wgsl"), "main", false),
            Shader::Binary => (include_str!("../../shaders/binary.wgsl"), "main", false),
            Shader::CopyStrided => (
                include_str!("../../shaders/copy_strided.wgsl"),
                "main",
                false,
            ),
            Shader::SumByThread => (SUM_AXIS, "by_thread", true),
            Shader::SumByWorkgroup => (SUM_AXIS, "by_workgroup", true),
            Shader::LogSoftmax => (include_str!("../../shaders/log_softmax.wgsl"), "main", true),
            Shader::LogSoftmaxBackward => (
                include_str!("../../shaders/log_softmax_backward.wgsl"),
                "main",
                true,
            ),
            Shader::CrossEntropy => (
                include_str!("../../shaders/cross_entropy.wgsl"),
                "main",
                true,
            ),
            Shader::CrossEntropyBackward => (
                include_str!("../../shaders/cross_entropy_backward.wgsl"),
                "main",
                false,
            ),
            Shader::Sgd => (include_str!("../../shaders/sgd.wgsl"), "main", false),
            Shader::AdamW => (include_str!("../../shaders/adamw.wgsl"), "main", false),
            Shader::Gemm(_) => (GEMM, "main", false),
            Shader::Im2col => (include_str!("../../shaders/im2col.wgsl"), "main", false),
            Shader::Col2im => (include_str!("../../shaders/col2im.wgsl"), "main", false),
            Shader::MaxPool => (include_str!("../../shaders/max_pool.wgsl"), "main", false),
            Shader::MaxPoolBackward => (
                include_str!("../../shaders/max_pool_backward.wgsl"),
                "main",
                false,
            ),
            Shader::AvgPool => (include_str!("../../shaders/avg_pool.wgsl"), "main", false),
            Shader::AvgPoolBackward => (
                include_str!("../../shaders/avg_pool_backward.wgsl"),
                "main",
                false,
            ),
        }
    }

    fn source(self) -> String {
        let (body, _, reduce) = self.file();
        let mut src = String::from(COMMON);
        if reduce {
            src.push_str(REDUCE);
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
            src.push_str(WINDOW);
        }
        if let Shader::Gemm(v) = self {
            src.push_str(&gemm_loader("a", 1, v.vec4_a));
            src.push_str(&gemm_loader("b", 2, v.vec4_b));
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
            ],
            _ => Vec::new(),
        }
    }
}

const SUM_AXIS: &str = include_str!("../../shaders/sum_axis.wgsl");

fn gemm_loader(name: &str, binding: u32, vec4: bool) -> String {
    let template = if vec4 {
        GEMM_LOAD_VEC4
    } else {
        GEMM_LOAD_SCALAR
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
    Ok(Kernel { pipeline, layout })
}
