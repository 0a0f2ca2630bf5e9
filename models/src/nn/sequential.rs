use super::{prefixed, Buffer, Module, ModuleState, RngStream};
use ringtrain_runtime::{Result, Tensor, Var};

/// Layers applied in order. Parameters are named `"{index}.{name}"`, as PyTorch's
/// `nn.Sequential` names them. A layer followed by a [`Relu`](super::Relu) runs as
/// [`Module::forward_relu`], which a `Linear` or `Conv2d` computes in one op.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module + Send + Sync>>,
}

impl Sequential {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a layer (builder style).
    pub fn with(mut self, layer: impl Module + Send + Sync + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    pub fn push(&mut self, layer: impl Module + Send + Sync + 'static) {
        self.layers.push(Box::new(layer));
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl Sequential {
    /// `named` of every layer, under the layer's index.
    fn children<T>(&self, named: impl Fn(&dyn Module) -> Vec<(String, T)>) -> Vec<(String, T)> {
        prefixed(
            self.layers
                .iter()
                .enumerate()
                .map(|(i, layer)| (i.to_string(), named(layer.as_ref()))),
        )
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            x = if layers.next_if(|next| next.is_relu()).is_some() {
                layer.forward_relu(&x)?
            } else {
                layer.forward(&x)?
            };
        }
        Ok(x)
    }
}

impl ModuleState for Sequential {
    fn set_training(&self, training: bool) {
        for layer in &self.layers {
            layer.set_training(training);
        }
    }

    fn named_parameters(&self) -> Vec<(String, Var)> {
        self.children(|l| l.named_parameters())
    }

    fn named_buffers(&self) -> Vec<(String, Buffer)> {
        self.children(|l| l.named_buffers())
    }

    fn named_rng_streams(&self) -> Vec<(String, RngStream)> {
        self.children(|l| l.named_rng_streams())
    }

    fn named_quantizable(&self) -> Vec<(String, Var)> {
        self.children(|l| l.named_quantizable())
    }
}
