//! Finding and opening a GPU. Selection honours wgpu's own environment variables, as its
//! tools do: `WGPU_BACKEND` (e.g. `vulkan`, `metal`, `dx12`, `gl`) limits the backends,
//! `WGPU_ADAPTER_NAME` picks an adapter by a substring of its name.

use super::device::{Context, Shared};
use crate::{KernelError, Result};
use std::fmt;

/// What a user needs to know about an adapter to tell which one a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    /// wgpu backend: Vulkan, Metal, Dx12, Gl.
    pub backend: String,
    /// discrete GPU, integrated GPU, virtual GPU, or software (such as Mesa's lavapipe).
    pub device_type: String,
    pub driver: String,
    /// A real GPU rather than a software implementation.
    pub is_hardware: bool,
}

impl AdapterSummary {
    fn of(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: match info.device_type {
                wgpu::DeviceType::DiscreteGpu => "discrete GPU",
                wgpu::DeviceType::IntegratedGpu => "integrated GPU",
                wgpu::DeviceType::VirtualGpu => "virtual GPU",
                wgpu::DeviceType::Cpu => "software, on the CPU",
                wgpu::DeviceType::Other => "unknown type",
            }
            .to_string(),
            driver: format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_string(),
            is_hardware: is_hardware(info.device_type),
        }
    }
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}, {}", self.name, self.backend, self.device_type)?;
        if !self.driver.is_empty() {
            write!(f, ", {}", self.driver)?;
        }
        f.write_str("]")
    }
}

fn is_hardware(t: wgpu::DeviceType) -> bool {
    matches!(
        t,
        wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
    )
}

/// Lower is preferred.
fn rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

/// Adapters that can run compute kernels, best first (discrete, integrated, virtual,
/// software), filtered by `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
pub(super) fn adapters() -> Result<Vec<wgpu::Adapter>> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // Vulkan, Metal, DX12 by default; GL only when WGPU_BACKEND asks for it.
    desc.backends = wgpu::Backends::PRIMARY;
    let desc = desc.with_env();
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    let mut found: Vec<wgpu::Adapter> = pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .filter(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect();
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        let wanted = wanted.to_lowercase();
        let names: Vec<String> = found.iter().map(|a| a.get_info().name).collect();
        found.retain(|a| a.get_info().name.to_lowercase().contains(&wanted));
        if found.is_empty() {
            return Err(KernelError::Device(format!(
                "WGPU_ADAPTER_NAME={wanted} matches none of the adapters found: {names:?}"
            )));
        }
    }
    found.sort_by_key(|a| rank(a.get_info().device_type));
    Ok(found)
}

/// Every usable adapter, best first.
pub(super) fn summaries() -> Result<Vec<AdapterSummary>> {
    Ok(adapters()?
        .iter()
        .map(|a| AdapterSummary::of(&a.get_info()))
        .collect())
}

pub(super) fn no_adapter() -> KernelError {
    let filter = std::env::var("WGPU_BACKEND")
        .map(|b| format!(" with WGPU_BACKEND={b}"))
        .unwrap_or_default();
    KernelError::Device(format!(
        "no GPU adapter found{filter}: install a Vulkan, Metal or DX12 driver (on Debian \
         or Ubuntu without a GPU, Mesa's software Vulkan: apt-get install \
         mesa-vulkan-drivers)"
    ))
}

/// Opens a device on `adapter`, with the adapter's own limits (large buffers, large
/// grids) rather than WebGPU's portable minimums.
pub(super) fn open(adapter: wgpu::Adapter) -> Result<(Context, AdapterSummary)> {
    let info = adapter.get_info();
    let summary = AdapterSummary::of(&info);
    let limits = adapter.limits();
    if limits.max_compute_invocations_per_workgroup < 256
        || limits.max_compute_workgroup_storage_size < 8192
    {
        return Err(KernelError::Device(format!(
            "{summary} cannot run the kernels: they need 256 invocations and 8 KiB of \
             workgroup memory per workgroup"
        )));
    }
    // Timestamp queries where the adapter has them: benchmarks time kernels on the GPU.
    // f16 in shaders where it has that: the f16 GEMM stages its tiles as f16.
    let features =
        adapter.features() & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::SHADER_F16);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("ringtrain"),
        required_features: features,
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::default(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::default(),
    }))
    .map_err(|e| KernelError::Device(format!("cannot open {summary}: {e}")))?;
    let ctx = Context::new(Shared {
        device,
        queue,
        limits,
    });
    Ok((ctx, summary))
}
