//! Layers. A [`Module`] maps a tensor to a tensor; its [`ModuleState`] lists its
//! trainable parameters by name, which is all an optimizer or a data-parallel replica
//! needs, and the buffers and random streams a checkpoint also keeps.
//! `#[derive(Module)]` writes the state of a struct from its fields.

mod activation;
mod attention;
mod conv;
mod conv1d;
mod dropout;
mod embedding;
mod flatten;
pub mod init;
mod linear;
mod norm;
mod pool;
mod residual;
mod sequential;
mod state;

pub use activation::{Gelu, Relu, Sigmoid, Tanh};
pub use attention::{
    AttentionDropoutDraws, BlockConfig, Mlp, MultiheadAttention, TransformerBlock,
};
pub use conv::{Conv2d, Conv2dConfig};
pub use conv1d::Conv1D;
pub use dropout::Dropout;
pub use embedding::Embedding;
pub use flatten::{Flatten, Unflatten};
pub use linear::Linear;
pub use norm::{BatchNorm2d, LayerNorm};
pub use pool::{AvgPool2d, MaxPool2d};
pub use residual::Residual;
pub use sequential::Sequential;
pub use state::{Buffer, RngStream};

pub use ringtrain_derive::Module;
#[doc(hidden)]
pub use ringtrain_runtime::Var;

use ringtrain_runtime::{Result, Tensor};

/// What a module holds: trainable parameters, buffers and random streams, each named
/// uniquely within the module (`"0.weight"`, `"blocks.1.attn.bias"`, as PyTorch names a
/// `state_dict`), and whether it is training. An optimizer needs the parameters; a
/// checkpoint keeps all three; a data-parallel replica is checked against the others by
/// them. `#[derive(Module)]` writes this from a struct's fields; a layer with state of its
/// own (a flag, a stream) implements it by hand.
pub trait ModuleState {
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

    /// The weights that products read (linear layers', convolutions', attention
    /// projections'), named as parameters are: what inference may store as int8, f16 or
    /// bf16 ([`crate::infer`]). `#[derive(Module)]` lists the fields marked
    /// `#[module(quantize)]` and its modules' own.
    fn named_quantizable(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    /// Switches between training and evaluation behaviour (dropout, batch statistics);
    /// containers pass it on to their layers. Layers that behave the same in both ignore
    /// it. Modules start in training mode.
    fn set_training(&self, _training: bool) {}

    /// The trainable parameters, each once: a parameter shared by two layers (tied
    /// embedding and output weights) has two names but is one variable to train.
    fn parameters(&self) -> Vec<Var> {
        unique_parameters(self.named_parameters())
            .into_iter()
            .map(|(_, v)| v)
            .collect()
    }

    /// Number of trainable scalars.
    fn num_parameters(&self) -> usize {
        self.parameters().iter().map(|v| v.elem_count()).sum()
    }
}

/// `named` without the repeats of a variable listed under several names (a shared
/// parameter), keeping its first name.
pub fn unique_parameters(named: Vec<(String, Var)>) -> Vec<(String, Var)> {
    let mut seen = std::collections::HashSet::new();
    named
        .into_iter()
        .filter(|(_, v)| seen.insert(v.id()))
        .collect()
}

/// A layer or a model: a map from a tensor to a tensor, with its [`ModuleState`].
///
/// ```
/// use ringtrain_models::nn::{Linear, Module, ModuleState};
/// use ringtrain_runtime::{rng_from_seed, Device, Result, Tensor};
///
/// #[derive(Module)]
/// struct TwoLayer {
///     hidden: Linear,
///     out: Linear,
///     #[module(skip)]
///     scale: f32,
/// }
///
/// impl Module for TwoLayer {
///     fn forward(&self, x: &Tensor) -> Result<Tensor> {
///         self.out.forward(&self.hidden.forward(x)?.tanh()?)?.scale(self.scale)
///     }
/// }
///
/// # fn main() -> Result<()> {
/// let (device, rng) = (Device::cpu(), &mut rng_from_seed(0));
/// let model = TwoLayer {
///     hidden: Linear::new(4, 8, &device, rng)?,
///     out: Linear::new(8, 2, &device, rng)?,
///     scale: 0.5,
/// };
/// let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["hidden.weight", "hidden.bias", "out.weight", "out.bias"]);
/// assert_eq!(model.forward(&Tensor::zeros((3, 4), &device)?)?.dims(), &[3, 2]);
/// # Ok(())
/// # }
/// ```
pub trait Module: ModuleState {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// `relu(self.forward(x))`. Layers whose op can apply the ReLU itself ([`Linear`],
    /// [`Conv2d`]) override it to save the pass over their output; [`Sequential`] calls
    /// it for a layer followed by [`Relu`].
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x)?.relu()
    }

    /// Whether this module is a plain ReLU, which [`Sequential`] may fuse into the
    /// layer before it.
    fn is_relu(&self) -> bool {
        false
    }
}

/// A boxed module is a module, so that code can pick a model at run time
/// (`Box<dyn Module + Send + Sync>`) and still hand it to generic code such as
/// `DataParallel`.
impl<M: ModuleState + ?Sized> ModuleState for Box<M> {
    fn named_parameters(&self) -> Vec<(String, Var)> {
        (**self).named_parameters()
    }

    fn named_buffers(&self) -> Vec<(String, Buffer)> {
        (**self).named_buffers()
    }

    fn named_rng_streams(&self) -> Vec<(String, RngStream)> {
        (**self).named_rng_streams()
    }

    fn named_quantizable(&self) -> Vec<(String, Var)> {
        (**self).named_quantizable()
    }

    fn set_training(&self, training: bool) {
        (**self).set_training(training)
    }
}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward(x)
    }

    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        (**self).forward_relu(x)
    }

    fn is_relu(&self) -> bool {
        (**self).is_relu()
    }
}

/// What a field of a `#[derive(Module)]` struct contributes under its `name`: a `Var`, a
/// `Buffer` or an `RngStream` itself; a module its own, prefixed `name.`; a `Vec` its
/// items', prefixed `name.0.`, `name.1.`, ...; an `Option` its content's, if any.
/// Implement it for a field type of your own that holds several of these.
///
/// A field of another type is a compile error naming it; mark it `#[module(skip)]`:
///
/// ```compile_fail
/// use ringtrain_models::nn::{Linear, Module};
/// #[derive(Module)]
/// struct Model {
///     layer: Linear,
///     learning_rate: f32, // f32: ModuleField is not satisfied
/// }
/// ```
///
/// Enums have no fixed fields to name parameters after:
///
/// ```compile_fail
/// use ringtrain_models::nn::{Linear, Module};
/// #[derive(Module)]
/// enum Model {
///     A(Linear),
/// }
/// ```
pub trait ModuleField {
    fn collect_parameters(&self, _name: &str, _out: &mut Vec<(String, Var)>) {}
    fn collect_buffers(&self, _name: &str, _out: &mut Vec<(String, Buffer)>) {}
    fn collect_rng_streams(&self, _name: &str, _out: &mut Vec<(String, RngStream)>) {}
    fn collect_quantizable(&self, _name: &str, _out: &mut Vec<(String, Var)>) {}
    fn set_training(&self, _training: bool) {}
}

/// `name.child`, or `child` alone for a field named by the empty string.
fn join(name: &str, child: &str) -> String {
    if name.is_empty() {
        child.to_string()
    } else {
        format!("{name}.{child}")
    }
}

fn push_prefixed<T>(name: &str, named: Vec<(String, T)>, out: &mut Vec<(String, T)>) {
    out.extend(named.into_iter().map(|(n, x)| (join(name, &n), x)));
}

impl<M: ModuleState + ?Sized> ModuleField for M {
    fn collect_parameters(&self, name: &str, out: &mut Vec<(String, Var)>) {
        push_prefixed(name, self.named_parameters(), out);
    }

    fn collect_buffers(&self, name: &str, out: &mut Vec<(String, Buffer)>) {
        push_prefixed(name, self.named_buffers(), out);
    }

    fn collect_rng_streams(&self, name: &str, out: &mut Vec<(String, RngStream)>) {
        push_prefixed(name, self.named_rng_streams(), out);
    }

    fn collect_quantizable(&self, name: &str, out: &mut Vec<(String, Var)>) {
        push_prefixed(name, self.named_quantizable(), out);
    }

    fn set_training(&self, training: bool) {
        ModuleState::set_training(self, training);
    }
}

/// A leaf of one kind: itself under the field's name, nothing of the other kinds.
macro_rules! leaf_field {
    ($ty:ty, $method:ident) => {
        impl ModuleField for $ty {
            fn $method(&self, name: &str, out: &mut Vec<(String, $ty)>) {
                out.push((name.to_string(), self.clone()));
            }
        }
    };
}
leaf_field!(Var, collect_parameters);
leaf_field!(Buffer, collect_buffers);
leaf_field!(RngStream, collect_rng_streams);

impl<T: ModuleField> ModuleField for Vec<T> {
    fn collect_parameters(&self, name: &str, out: &mut Vec<(String, Var)>) {
        for (i, item) in self.iter().enumerate() {
            item.collect_parameters(&join(name, &i.to_string()), out);
        }
    }

    fn collect_buffers(&self, name: &str, out: &mut Vec<(String, Buffer)>) {
        for (i, item) in self.iter().enumerate() {
            item.collect_buffers(&join(name, &i.to_string()), out);
        }
    }

    fn collect_rng_streams(&self, name: &str, out: &mut Vec<(String, RngStream)>) {
        for (i, item) in self.iter().enumerate() {
            item.collect_rng_streams(&join(name, &i.to_string()), out);
        }
    }

    fn collect_quantizable(&self, name: &str, out: &mut Vec<(String, Var)>) {
        for (i, item) in self.iter().enumerate() {
            item.collect_quantizable(&join(name, &i.to_string()), out);
        }
    }

    fn set_training(&self, training: bool) {
        for item in self {
            item.set_training(training);
        }
    }
}

impl<T: ModuleField> ModuleField for Option<T> {
    fn collect_parameters(&self, name: &str, out: &mut Vec<(String, Var)>) {
        if let Some(x) = self {
            x.collect_parameters(name, out);
        }
    }

    fn collect_buffers(&self, name: &str, out: &mut Vec<(String, Buffer)>) {
        if let Some(x) = self {
            x.collect_buffers(name, out);
        }
    }

    fn collect_rng_streams(&self, name: &str, out: &mut Vec<(String, RngStream)>) {
        if let Some(x) = self {
            x.collect_rng_streams(name, out);
        }
    }

    fn collect_quantizable(&self, name: &str, out: &mut Vec<(String, Var)>) {
        if let Some(x) = self {
            x.collect_quantizable(name, out);
        }
    }

    fn set_training(&self, training: bool) {
        if let Some(x) = self {
            x.set_training(training);
        }
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
