use crate::nn::{Gelu, Linear, Relu, Sequential, Sigmoid, Tanh};
use ringtrain_runtime::{Device, Error, Result, Rng};
use std::str::FromStr;

/// The nonlinearity between the layers of an [`mlp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
}

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
        }
    }
}

impl FromStr for Activation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "gelu" => Ok(Activation::Gelu),
            "tanh" => Ok(Activation::Tanh),
            "sigmoid" => Ok(Activation::Sigmoid),
            other => Err(Error::InvalidArgument(format!(
                "unknown activation `{other}`: expected relu, gelu, tanh or sigmoid"
            ))),
        }
    }
}

/// A multi-layer perceptron `inputs -> hidden[0] -> .. -> outputs`, with `activation`
/// after every hidden layer and none after the last (it returns logits).
pub fn mlp(
    inputs: usize,
    hidden: &[usize],
    outputs: usize,
    activation: Activation,
    device: &Device,
    rng: &mut Rng,
) -> Result<Sequential> {
    let mut model = Sequential::new();
    let mut width = inputs;
    for &h in hidden {
        model.push(Linear::new(width, h, device, rng)?);
        match activation {
            Activation::Relu => model.push(Relu),
            Activation::Gelu => model.push(Gelu),
            Activation::Tanh => model.push(Tanh),
            Activation::Sigmoid => model.push(Sigmoid),
        }
        width = h;
    }
    model.push(Linear::new(width, outputs, device, rng)?);
    Ok(model)
}
