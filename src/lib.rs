//! ringtrain: train neural networks on CPUs and GPUs with one model code path.
pub use ringtrain_kernels as kernels;
