//! Devices and the memory tensors live in. The device is chosen at run time, so one
//! binary serves every machine: `Device` and `Storage` are enums over the backends, and
//! every op is written once, generically over [`DeviceBackend`], then dispatched.

use crate::{Error, Result};
use ringtrain_kernels::cpu::{CpuBackend, Simd};
use ringtrain_kernels::gpu::{GpuBackend, GpuBuffer};
use ringtrain_kernels::Backend;
use std::fmt;

/// Where tensors live and ops run.
#[derive(Clone, PartialEq)]
pub enum Device {
    Cpu(CpuBackend),
    /// One GPU device; clones share it, and tensors of two GPU devices do not mix.
    Gpu(GpuBackend),
}

impl Device {
    /// The CPU, with the best SIMD instruction set it supports.
    pub fn cpu() -> Device {
        Device::Cpu(CpuBackend::new())
    }

    /// The CPU, with a chosen instruction set (see [`Simd::available`]).
    pub fn cpu_with(simd: Simd) -> Device {
        Device::Cpu(CpuBackend::with_simd(simd))
    }

    /// The best GPU adapter there is, hardware or software (honours `WGPU_BACKEND` and
    /// `WGPU_ADAPTER_NAME`).
    pub fn gpu() -> Result<Device> {
        GpuBackend::new()
            .map(Device::Gpu)
            .map_err(|e| Error::DeviceUnavailable(e.to_string()))
    }

    /// GPU devices for data parallelism: `n` of them (by default one per hardware GPU, or
    /// one where there is none), opened on hardware adapters first, best first. With
    /// more devices than adapters, adapters take several devices round robin: that lets
    /// a machine without GPUs run a ring on one software adapter, and is slower than one
    /// device per GPU on real hardware.
    pub fn gpus(n: Option<usize>) -> Result<Vec<Device>> {
        let Some(usable) = Self::usable_adapters()? else {
            // No adapter at all: the same error a single device gives.
            return Device::gpu().map(|d| vec![d]);
        };
        let n = n.unwrap_or(usable.len());
        if n == 0 {
            return Err(Error::InvalidArgument("zero GPU devices asked for".into()));
        }
        (0..n)
            .map(|i| Self::gpu_on(usable[i % usable.len()]))
            .collect()
    }

    /// The GPU for the process with local rank `local_rank` on its machine, when one
    /// process drives one GPU (MPI): adapter `local_rank` of the hardware ones (round
    /// robin where processes outnumber GPUs), or the software adapter where there is no
    /// hardware one.
    pub fn local_gpu(local_rank: usize) -> Result<Device> {
        match Self::usable_adapters()? {
            Some(usable) => Self::gpu_on(usable[local_rank % usable.len()]),
            None => Device::gpu(),
        }
    }

    /// Indices of the adapters data parallelism should use: the hardware ones, else the
    /// first (software) one; `None` when there is no adapter at all.
    fn usable_adapters() -> Result<Option<Vec<usize>>> {
        let adapters = GpuBackend::adapters()?;
        let hardware: Vec<usize> = (0..adapters.len())
            .filter(|&i| adapters[i].is_hardware)
            .collect();
        Ok(match (hardware.is_empty(), adapters.is_empty()) {
            (false, _) => Some(hardware),
            (true, false) => Some(vec![0]),
            (true, true) => None,
        })
    }

    /// A device on GPU adapter `index` of wgpu's list (best first: discrete, integrated,
    /// virtual, software), whatever its kind.
    pub fn gpu_adapter(index: usize) -> Result<Device> {
        Self::gpu_on(index)
    }

    fn gpu_on(adapter: usize) -> Result<Device> {
        GpuBackend::with_adapter(adapter)
            .map(Device::Gpu)
            .map_err(|e| Error::DeviceUnavailable(e.to_string()))
    }

    /// A GPU for a test suite, or `None` (the test's GPU part skipped, saying so in one
    /// line) where there is no adapter; `RINGTRAIN_REQUIRE_GPU=1` makes that a failure,
    /// and `RINGTRAIN_SKIP_GPU_TESTS=1` skips GPU parts even where there is a GPU. See
    /// [`ringtrain_kernels::gpu::testing`].
    pub fn test_gpu() -> Option<Device> {
        ringtrain_kernels::gpu::testing::test_gpu().map(Device::Gpu)
    }

    /// How many hardware GPUs wgpu finds (0 where there are none, or only software ones).
    pub fn hardware_gpu_count() -> usize {
        GpuBackend::adapters()
            .map(|a| a.iter().filter(|a| a.is_hardware).count())
            .unwrap_or(0)
    }

    /// A hardware GPU when there is one, the CPU otherwise (a software GPU such as
    /// lavapipe is slower than the CPU backend, so it is never picked here).
    pub fn auto() -> Device {
        match GpuBackend::hardware() {
            Ok(Some(gpu)) => Device::Gpu(gpu),
            _ => Device::cpu(),
        }
    }

    /// `auto`, `cpu`, or `gpu`, as a command line would name them.
    pub fn from_name(name: &str) -> Result<Device> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::auto()),
            "cpu" => Ok(Device::cpu()),
            "gpu" => Device::gpu(),
            other => Err(Error::DeviceUnavailable(format!(
                "unknown backend `{other}`: expected auto, cpu or gpu"
            ))),
        }
    }

    /// Blocks until every op recorded on the device has run (a no-op on the CPU, whose
    /// ops run when called); reports an error the device raised meanwhile.
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu(_) => Ok(()),
            Device::Gpu(g) => Ok(g.synchronize()?),
        }
    }

    /// A GPU whose f16 products stage their tiles in f16 (WGSL's `enable f16`, where the
    /// adapter has `SHADER_F16`); `None` for the CPU. Either way the results are the
    /// same bits: without it the GPU rounds on the bits and keeps f32 tiles.
    pub fn gpu_f16_kernels(&self) -> Option<bool> {
        match self {
            Device::Cpu(_) => None,
            Device::Gpu(g) => Some(g.f16_kernels()),
        }
    }

    /// A description such as `cpu (avx2, 2 threads)`.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu(b) => b.name(),
            Device::Gpu(b) => b.name(),
        }
    }

    /// Whether tensors of both devices can meet in one op: both in host memory, or on
    /// the same GPU device.
    pub fn same_kind(&self, other: &Device) -> bool {
        match (self, other) {
            (Device::Cpu(_), Device::Cpu(_)) => true,
            (Device::Gpu(a), Device::Gpu(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A tensor's memory, on the device that owns it.
pub(crate) enum Storage {
    Cpu(Vec<f32>),
    Gpu(GpuBuffer),
    /// 16-bit values, two to a word (an f16 or bf16 tensor). Only casts and what is
    /// built on them read it ([`DeviceBackend::half_buffer`]); any other op asking for
    /// its buffer gets an error saying to cast, where it would otherwise read pairs of
    /// halves as f32 words.
    Half(Box<Storage>),
    /// A weight stored compactly for inference (int8 or 16-bit) under an f32 tensor:
    /// see [`crate::quantized`]. Only the ops that know it read it.
    Packed(Box<crate::quantized::Packed>),
}

impl Drop for Storage {
    /// Large host buffers go back to the CPU backend's pool instead of the allocator.
    fn drop(&mut self) {
        if let Storage::Cpu(buf) = self {
            ringtrain_kernels::cpu::recycle(std::mem::take(buf));
        }
    }
}

fn wrong_storage(want: &str) -> Error {
    Error::InvalidArgument(format!(
        "a tensor's memory is not where its device says ({want} expected)"
    ))
}

fn packed_storage() -> Error {
    Error::InvalidArgument(
        "this tensor is a weight quantized for inference (int8, f16 or bf16 storage): only \
         linear layers, products, convolutions and reading values back take it; use \
         `dequantized()` for a plain f32 copy, or `Var::set` to store f32 values again"
            .into(),
    )
}

fn half_storage() -> Error {
    Error::InvalidArgument(
        "this op takes f32 (or u32) tensors, and this tensor holds 16-bit values: widen it \
         with `to_dtype(DType::F32)` first (only casts, matrix products and reading values \
         back take f16 and bf16 tensors)"
            .into(),
    )
}

/// A backend as the runtime drives it: the kernels plus a way in and out of [`Storage`].
pub(crate) trait DeviceBackend: Backend {
    fn buffer(s: &Storage) -> Result<&Self::Buffer>;
    fn buffer_mut(s: &mut Storage) -> Result<&mut Self::Buffer>;
    fn wrap(buf: Self::Buffer) -> Storage;

    /// The words of a 16-bit tensor's storage.
    fn half_buffer(s: &Storage) -> Result<&Self::Buffer> {
        match s {
            Storage::Half(inner) => Self::buffer(inner),
            _ => Err(wrong_storage("16-bit values")),
        }
    }
}

impl DeviceBackend for CpuBackend {
    fn buffer(s: &Storage) -> Result<&Vec<f32>> {
        match s {
            Storage::Cpu(b) => Ok(b),
            Storage::Half(_) => Err(half_storage()),
            Storage::Packed(_) => Err(packed_storage()),
            _ => Err(wrong_storage("host memory")),
        }
    }

    fn buffer_mut(s: &mut Storage) -> Result<&mut Vec<f32>> {
        match s {
            Storage::Cpu(b) => Ok(b),
            Storage::Half(_) => Err(half_storage()),
            Storage::Packed(_) => Err(packed_storage()),
            _ => Err(wrong_storage("host memory")),
        }
    }

    fn wrap(buf: Vec<f32>) -> Storage {
        Storage::Cpu(buf)
    }
}

impl DeviceBackend for GpuBackend {
    fn buffer(s: &Storage) -> Result<&GpuBuffer> {
        match s {
            Storage::Gpu(b) => Ok(b),
            Storage::Half(_) => Err(half_storage()),
            Storage::Packed(_) => Err(packed_storage()),
            _ => Err(wrong_storage("GPU memory")),
        }
    }

    fn buffer_mut(s: &mut Storage) -> Result<&mut GpuBuffer> {
        match s {
            Storage::Gpu(b) => Ok(b),
            Storage::Half(_) => Err(half_storage()),
            Storage::Packed(_) => Err(packed_storage()),
            _ => Err(wrong_storage("GPU memory")),
        }
    }

    fn wrap(buf: GpuBuffer) -> Storage {
        Storage::Gpu(buf)
    }
}

/// Runs `$body` with `$b` bound to the device's backend; the body is generic code over
/// [`DeviceBackend`], instantiated once per backend.
macro_rules! on_device {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            $crate::device::Device::Cpu($b) => $body,
            $crate::device::Device::Gpu($b) => $body,
        }
    };
}
pub(crate) use on_device;

/// The backend buffer inside `storage`, typed by the backend `b` (for `on_device!` bodies).
pub(crate) fn buf<'a, B: DeviceBackend>(_: &B, storage: &'a Storage) -> Result<&'a B::Buffer> {
    B::buffer(storage)
}

/// The words of a 16-bit tensor's `storage`, typed by the backend `b`.
pub(crate) fn half_buf<'a, B: DeviceBackend>(_: &B, storage: &'a Storage) -> Result<&'a B::Buffer> {
    B::half_buffer(storage)
}

pub(crate) fn buf_mut<'a, B: DeviceBackend>(
    _: &B,
    storage: &'a mut Storage,
) -> Result<&'a mut B::Buffer> {
    B::buffer_mut(storage)
}

pub(crate) fn wrap<B: DeviceBackend>(_: &B, buffer: B::Buffer) -> Storage {
    B::wrap(buffer)
}
