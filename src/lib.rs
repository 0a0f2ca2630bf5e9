//! ringtrain: train neural networks on CPUs (explicit FMA/SIMD kernels) and GPUs, with one
//! model code path.
//!
//! The crates underneath, re-exported here:
//! - [`kernels`]: the `Backend` trait, the CPU backend and the GPU (WGSL) backend (how things
//!   are computed);
//! - the runtime: [`Device`], [`Tensor`] with reverse-mode autograd, [`Var`], [`optim`];
//! - the models: [`nn`] layers, the [`zoo`], [`data`] sets, [`eval`] and data
//!   [`parallel`]ism (over the collectives of [`comm`]);
//! - [`infer`]: a trained model (or an ensemble) scoring streams of rows, from files or
//!   TCP clients, with int8, f16 or bf16 weights;
//! - [`bench`]: this machine measured, every backend side by side (the figures of
//!   docs/BENCHMARKS.md).
//!
//! ```
//! use ringtrain::prelude::*;
//!
//! # fn main() -> ringtrain::Result<()> {
//! let device = Device::cpu();
//! let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], (2, 2), &device)?;
//! let w = Var::from_vec(vec![0.5, -1.0, 0.25, 2.0], (2, 2), &device)?;
//! let loss = x.matmul(&w)?.sqr()?.mean_all()?;
//! let grads = loss.backward()?;
//! assert_eq!(grads.get(&w).unwrap().dims(), &[2, 2]);
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub use ringtrain_kernels as kernels;
pub mod infer;
pub use ringtrain_models::{checkpoint, data, eval, nn, parallel, trace, train, zoo};
pub use ringtrain_runtime::{comm, optim};
pub use ringtrain_runtime::{
    compute_precision, no_grad, rng_from_seed, with_precision, AttentionDropout, CompareOp, DType,
    Device, Error, GradStore, Int8Rows, Isa, Labels, Precision, Quantization, Result, Rng, Shape,
    Simd, Tensor, TensorId, Var,
};

/// The names most model code needs.
pub mod prelude {
    pub use crate::data::{DataSource, InMemory, InMemoryBatch};
    pub use crate::nn::{
        AvgPool2d, BatchNorm2d, Conv2d, Conv2dConfig, Dropout, Embedding, Flatten, Gelu, LayerNorm,
        Linear, MaxPool2d, Module, ModuleState, Relu, Residual, Sequential, Sigmoid, Tanh,
        Unflatten,
    };
    pub use crate::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup, Sgd, SgdConfig};
    pub use crate::train::{TrainArgs, TrainConfig, Trainer};
    pub use crate::{
        no_grad, rng_from_seed, with_precision, DType, Device, Precision, Rng, Shape, Tensor, Var,
    };
}

// Compiles and runs the README's code blocks as doctests, so the README cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
