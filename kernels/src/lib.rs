//! ringtrain-kernels: how things are computed.
//!
//! The [`Backend`] trait is the contract between the runtime (tensors, autograd,
//! optimizers) and a device: it owns device memory and runs primitive ops on it. It knows
//! nothing about tensors, graphs or communication. [`cpu::CpuBackend`] implements it with
//! explicit FMA/SIMD kernels chosen at run time by CPU feature detection;
//! [`gpu::GpuBackend`] with WGSL compute kernels run through wgpu.

mod backend;
pub mod cpu;
mod error;
pub mod gpu;
mod index;
mod layout;
mod precision;
pub mod quant;
pub mod trace;
mod validate;
mod window;

pub use backend::{AdamWParams, Backend, BinaryOp, GemmSpec, SgdParams, UnaryOp};
pub use error::{KernelError, Result};
pub use index::{dropout_hash, AttentionSpec, CompareOp, DType, GatherSpec, SelectLayout};
pub use layout::{contiguous_strides, saturating_product, BinaryLayout, StridedLayout};
pub use precision::Precision;
pub use quant::{Int8Rows, Q8Spec, Q8_MAX_K};
pub use window::Window2d;
