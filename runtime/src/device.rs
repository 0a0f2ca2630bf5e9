//! Devices and the memory tensors live in. The device is chosen at run time, so one
//! binary serves every machine: `Device` and `Storage` are enums over the backends, and
//! every op is written once, generically over [`DeviceBackend`], then dispatched.

use crate::{Error, Result};
use ringtrain_kernels::cpu::{CpuBackend, Simd};
use ringtrain_kernels::Backend;
use std::fmt;

/// Where tensors live and ops run.
#[derive(Clone, PartialEq)]
pub enum Device {
    Cpu(CpuBackend),
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

    /// The fastest device on this machine. Until the GPU backend lands that is the CPU.
    pub fn auto() -> Device {
        Device::cpu()
    }

    /// `auto`, `cpu`, or `gpu`, as a command line would name them.
    pub fn from_name(name: &str) -> Result<Device> {
        match name.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Device::auto()),
            "cpu" => Ok(Device::cpu()),
            "gpu" => Err(Error::DeviceUnavailable(
                "the GPU backend is not built yet; use --backend cpu or auto".into(),
            )),
            other => Err(Error::DeviceUnavailable(format!(
                "unknown backend `{other}`: expected auto, cpu or gpu"
            ))),
        }
    }

    /// A description such as `cpu (avx2, 2 threads)`.
    pub fn name(&self) -> String {
        match self {
            Device::Cpu(b) => b.name(),
        }
    }

    /// Whether tensors of both devices can meet in one op.
    pub fn same_kind(&self, other: &Device) -> bool {
        matches!((self, other), (Device::Cpu(_), Device::Cpu(_)))
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
}

/// A backend as the runtime drives it: the kernels plus a way in and out of [`Storage`].
pub(crate) trait DeviceBackend: Backend {
    fn buffer(s: &Storage) -> Result<&Self::Buffer>;
    fn buffer_mut(s: &mut Storage) -> Result<&mut Self::Buffer>;
    fn wrap(buf: Self::Buffer) -> Storage;
}

impl DeviceBackend for CpuBackend {
    fn buffer(s: &Storage) -> Result<&Vec<f32>> {
        match s {
            Storage::Cpu(b) => Ok(b),
        }
    }

    fn buffer_mut(s: &mut Storage) -> Result<&mut Vec<f32>> {
        match s {
            Storage::Cpu(b) => Ok(b),
        }
    }

    fn wrap(buf: Vec<f32>) -> Storage {
        Storage::Cpu(buf)
    }
}

/// Runs `$body` with `$b` bound to the device's backend; the body is generic code over
/// [`DeviceBackend`], instantiated once per backend.
macro_rules! on_device {
    ($device:expr, $b:ident => $body:expr) => {
        match $device {
            $crate::device::Device::Cpu($b) => $body,
        }
    };
}
pub(crate) use on_device;

/// The backend buffer inside `storage`, typed by the backend `b` (for `on_device!` bodies).
pub(crate) fn buf<'a, B: DeviceBackend>(_: &B, storage: &'a Storage) -> Result<&'a B::Buffer> {
    B::buffer(storage)
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
