use super::Module;
use ringtrain_runtime::{Result, Tensor, Var};

/// `x + inner(x)`: a residual connection around any module whose output has its input's
/// shape. Its parameters are the inner module's, named `"inner.{name}"`.
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
        self.inner
            .named_parameters()
            .into_iter()
            .map(|(n, v)| (format!("inner.{n}"), v))
            .collect()
    }

    fn set_training(&self, training: bool) {
        self.inner.set_training(training);
    }
}
