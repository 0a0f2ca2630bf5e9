//! Layers. A [`Module`] maps a tensor to a tensor and lists its trainable parameters by
//! name, which is all an optimizer, a checkpoint or a data-parallel replica needs.

mod activation;
mod linear;
mod sequential;

pub use activation::{Gelu, Relu, Sigmoid, Tanh};
pub use linear::Linear;
pub use sequential::Sequential;

use ringtrain_runtime::{Result, Tensor, Var};

pub trait Module {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Trainable parameters, named uniquely within the module (`"0.weight"`, `"0.bias"`).
    fn named_parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    fn parameters(&self) -> Vec<Var> {
        self.named_parameters()
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|v| v.elem_count()).sum()
    }
}
