//! ringtrain-runtime: what runs where. Devices, tensors with reverse-mode autograd, and
//! optimizers, on top of the kernels of `ringtrain-kernels`.

mod attention;
mod backprop;
pub mod comm;
mod device;
mod error;
mod indexing;
mod layout_ops;
mod norm_ops;
mod ops;
pub mod optim;
mod precision;
pub mod quantized;
mod shape;
mod tensor;
mod var;
mod window_ops;

pub use attention::AttentionDropout;
pub use backprop::GradStore;
pub use device::Device;
pub use error::{Error, Result};
pub use ops::Labels;
pub use precision::{compute_precision, with_precision};
pub use quantized::Quantization;
pub use ringtrain_kernels::Int8Rows;
pub use shape::{Dim, Shape};
pub use tensor::{grad_enabled, no_grad, rng_from_seed, with_grad, Rng, Tensor, TensorId};
pub use var::Var;

pub use ringtrain_kernels::cpu::{with_awake_workers, Isa, Simd};
pub use ringtrain_kernels::{trace, CompareOp, DType, Precision};
