use super::Module;
use ringtrain_runtime::{Result, Tensor};

/// `x + inner(x)`: a residual connection around any module whose output has its input's
/// shape. Its parameters (and buffers and streams) are the inner module's, named
/// `"inner.{name}"`.
#[derive(Module)]
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
}
