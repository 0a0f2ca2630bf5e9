//! Layers. A [`Module`] maps a tensor to a tensor and lists its trainable parameters by
//! name, which is all an optimizer or a data-parallel replica needs; a checkpoint also
//! keeps its buffers and random streams.

mod activation;
mod conv;
mod dropout;
mod embedding;
mod flatten;
mod linear;
mod norm;
mod pool;
mod residual;
mod sequential;
mod state;

pub use activation::{Gelu, Relu, Sigmoid, Tanh};
pub use conv::{Conv2d, Conv2dConfig};
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use flatten::{Flatten, Unflatten};
pub use linear::Linear;
pub use norm::{BatchNorm2d, LayerNorm};
pub use pool::{AvgPool2d, MaxPool2d};
pub use residual::Residual;
pub use sequential::Sequential;
pub use state::{Buffer, RngStream};

use ringtrain_runtime::{Result, Tensor, Var};

pub trait Module {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Trainable parameters, named uniquely within the module (`"0.weight"`, `"0.bias"`).
    fn named_parameters(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    /// Non-trainable state the module updates as it runs (batch norm's running
    /// estimates), named as parameters are. A checkpoint saves it beside the parameters.
    fn named_buffers(&self) -> Vec<(String, Buffer)> {
        Vec::new()
    }

    /// Random streams (dropout's masks), named as parameters are. A checkpoint keeps
    /// their positions, so a resumed run draws what the uninterrupted one would have.
    fn named_rng_streams(&self) -> Vec<(String, RngStream)> {
        Vec::new()
    }

    fn parameters(&self) -> Vec<Var> {
        self.named_parameters()
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Switches between training and evaluation behaviour (dropout, batch statistics);
    /// containers pass it on to their layers. Layers that behave the same in both ignore
    /// it. Modules start in training mode.
    fn set_training(&self, _training: bool) {}

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|v| v.elem_count()).sum()
    }
}

/// A boxed module is a module, so that code can pick a model at run time
/// (`Box<dyn Module + Send + Sync>`) and still hand it to generic code such as
/// `DataParallel`.
impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }

    fn named_parameters(&self) -> Vec<(String, Var)> {
        (**self).named_parameters()
    }

    fn named_buffers(&self) -> Vec<(String, Buffer)> {
        (**self).named_buffers()
    }

    fn named_rng_streams(&self) -> Vec<(String, RngStream)> {
        (**self).named_rng_streams()
    }

    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
}

/// `named` of each child, its names prefixed with the child's (`"{prefix}.{name}"`), as
/// containers list their children's parameters, buffers and streams.
pub(crate) fn prefixed<T>(
    children: impl IntoIterator<Item = (String, Vec<(String, T)>)>,
) -> Vec<(String, T)> {
    children
        .into_iter()
        .flat_map(|(prefix, named)| {
            named
                .into_iter()
                .map(move |(name, x)| (format!("{prefix}.{name}"), x))
        })
        .collect()
}
