use super::{prefixed, Buffer, Module, RngStream};
use ringtrain_runtime::{Result, Tensor, Var};

/// `x + inner(x)`: a residual connection around any module whose output has its input's
/// shape. Its parameters (and buffers and streams) are the inner module's, named
/// `"inner.{name}"`.
pub struct Residual<M> {
    inner: M,
}

impl<M: Module> Residual<M> {
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<M: Module> Module for Residual<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.add(&self.inner.forward(x)?)
    }

    fn named_parameters(&self) -> Vec<(String, Var)> {
        prefixed([("inner".to_string(), self.inner.named_parameters())])
    }

    fn named_buffers(&self) -> Vec<(String, Buffer)> {
        prefixed([("inner".to_string(), self.inner.named_buffers())])
    }

    fn named_rng_streams(&self) -> Vec<(String, RngStream)> {
        prefixed([("inner".to_string(), self.inner.named_rng_streams())])
    }

    fn set_training(&self, training: bool) {
        self.inner.set_training(training);
    }
}
