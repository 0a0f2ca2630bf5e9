//! Initialisation, as `torch.nn.init` does it: a distribution chosen by name, applied to
//! the parameters of a module picked by their names.
//!
//! ```
//! use ringtrain_models::nn::init::{self, Init, Nonlinearity};
//! use ringtrain_models::zoo::{mlp, Activation};
//! use ringtrain_runtime::{rng_from_seed, Device};
//!
//! # fn main() -> ringtrain_runtime::Result<()> {
//! let rng = &mut rng_from_seed(0);
//! let model = mlp(784, &[256], 10, Activation::Relu, &Device::cpu(), rng)?;
//! // He initialisation of the weights, zero biases.
//! init::apply(&model, |name| name.ends_with("weight"), Init::kaiming_normal(Nonlinearity::Relu), rng)?;
//! init::apply(&model, |name| name.ends_with("bias"), Init::Zeros, rng)?;
//! # Ok(())
//! # }
//! ```

use super::ModuleState;
use rand::Rng as _;
use rand_distr::{Distribution, Normal};
use ringtrain_runtime::{Error, Result, Rng, Shape, Tensor, Var};

/// The nonlinearity after a layer, which sets the gain of Xavier and Kaiming
/// initialisation (PyTorch's `calculate_gain`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Nonlinearity {
    /// No activation, or sigmoid: gain 1.
    Linear,
    /// Gain 5/3.
    Tanh,
    /// Gain sqrt(2).
    Relu,
    /// Gain sqrt(2 / (1 + slope^2)).
    LeakyRelu(f32),
}

impl Nonlinearity {
    pub fn gain(self) -> f32 {
        match self {
            Nonlinearity::Linear => 1.0,
            Nonlinearity::Tanh => 5.0 / 3.0,
            Nonlinearity::Relu => 2f32.sqrt(),
            Nonlinearity::LeakyRelu(slope) => (2.0 / (1.0 + slope * slope)).sqrt(),
        }
    }
}

/// Whether Kaiming initialisation keeps the variance of the forward pass (`FanIn`) or of
/// the backward pass (`FanOut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanMode {
    FanIn,
    FanOut,
}

/// A distribution to draw a parameter's values from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Constant(f32),
    /// N(mean, std^2).
    Normal {
        mean: f32,
        std: f32,
    },
    /// U[lo, hi).
    Uniform {
        lo: f32,
        hi: f32,
    },
    /// U[-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)).
    XavierUniform {
        gain: f32,
    },
    /// N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)).
    XavierNormal {
        gain: f32,
    },
    /// U[-b, b) with b = gain * sqrt(3 / fan), fan by `mode`.
    KaimingUniform {
        gain: f32,
        mode: FanMode,
    },
    /// N(0, std^2) with std = gain / sqrt(fan), fan by `mode`.
    KaimingNormal {
        gain: f32,
        mode: FanMode,
    },
}

impl Init {
    /// Xavier (Glorot) uniform with gain 1.
    pub fn xavier_uniform() -> Self {
        Init::XavierUniform { gain: 1.0 }
    }

    /// Xavier (Glorot) normal with gain 1.
    pub fn xavier_normal() -> Self {
        Init::XavierNormal { gain: 1.0 }
    }

    /// Kaiming (He) uniform for `nonlinearity`, by fan in.
    pub fn kaiming_uniform(nonlinearity: Nonlinearity) -> Self {
        Init::KaimingUniform {
            gain: nonlinearity.gain(),
            mode: FanMode::FanIn,
        }
    }

    /// Kaiming (He) normal for `nonlinearity`, by fan in.
    pub fn kaiming_normal(nonlinearity: Nonlinearity) -> Self {
        Init::KaimingNormal {
            gain: nonlinearity.gain(),
            mode: FanMode::FanIn,
        }
    }

    /// Values of `shape` drawn from this distribution, row-major.
    pub fn values(&self, shape: &Shape, rng: &mut Rng) -> Result<Vec<f32>> {
        let n = shape.elem_count();
        let normal = |mean: f32, std: f32, rng: &mut Rng| -> Result<Vec<f32>> {
            if !(mean.is_finite() && std.is_finite() && std >= 0.0) {
                return Err(Error::InvalidArgument(format!(
                    "init: a normal distribution needs a finite mean and std >= 0, got \
                     mean {mean}, std {std}"
                )));
            }
            let d = Normal::new(mean, std).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            Ok((0..n).map(|_| d.sample(rng)).collect())
        };
        let uniform = |lo: f32, hi: f32, rng: &mut Rng| -> Result<Vec<f32>> {
            if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
                return Err(Error::InvalidArgument(format!(
                    "init: a uniform distribution needs finite lo <= hi, got [{lo}, {hi})"
                )));
            }
            if lo == hi {
                return Ok(vec![lo; n]);
            }
            Ok((0..n).map(|_| rng.random_range(lo..hi)).collect())
        };
        let check_gain = |gain: f32| {
            if gain.is_finite() && gain >= 0.0 {
                Ok(gain)
            } else {
                Err(Error::InvalidArgument(format!(
                    "init: the gain must be finite and >= 0, got {gain}"
                )))
            }
        };
        match *self {
            Init::Zeros => Ok(vec![0.0; n]),
            Init::Constant(c) if c.is_finite() => Ok(vec![c; n]),
            Init::Constant(c) => Err(Error::InvalidArgument(format!(
                "init: a constant must be finite, got {c}"
            ))),
            Init::Normal { mean, std } => normal(mean, std, rng),
            Init::Uniform { lo, hi } => uniform(lo, hi, rng),
            Init::XavierUniform { gain } => {
                let (fan_in, fan_out) = fans(shape)?;
                let a = check_gain(gain)? * (6.0 / (fan_in + fan_out) as f32).sqrt();
                uniform(-a, a, rng)
            }
            Init::XavierNormal { gain } => {
                let (fan_in, fan_out) = fans(shape)?;
                normal(
                    0.0,
                    check_gain(gain)? * (2.0 / (fan_in + fan_out) as f32).sqrt(),
                    rng,
                )
            }
            Init::KaimingUniform { gain, mode } => {
                let fan = fan(shape, mode)?;
                let b = check_gain(gain)? * (3.0 / fan as f32).sqrt();
                uniform(-b, b, rng)
            }
            Init::KaimingNormal { gain, mode } => {
                let fan = fan(shape, mode)?;
                normal(0.0, check_gain(gain)? / (fan as f32).sqrt(), rng)
            }
        }
    }

    /// A tensor of `shape` drawn from this distribution.
    pub fn tensor(
        &self,
        shape: impl Into<Shape>,
        rng: &mut Rng,
        device: &ringtrain_runtime::Device,
    ) -> Result<Tensor> {
        let shape = shape.into();
        Tensor::from_vec(self.values(&shape, rng)?, shape, device)
    }

    /// Sets `var` to values drawn from this distribution.
    pub fn init(&self, var: &Var, rng: &mut Rng) -> Result<()> {
        var.set(&self.tensor(var.shape().clone(), rng, var.device())?)
    }
}

/// A weight's fan in and fan out, as PyTorch counts them: `[out, in, k..]` has fan in
/// `in * k..` and fan out `out * k..` (a `Linear`'s `[out, in]`, a `Conv2d`'s
/// `[out, in, kh, kw]`). Rank 0 and 1 have no fans.
pub fn fans(shape: &Shape) -> Result<(usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        return Err(Error::InvalidArgument(format!(
            "init: fan in and fan out need a weight of at least 2 dimensions ([out, in, \
             ..]), got shape {shape}; use Normal, Uniform or Constant for biases"
        )));
    }
    let receptive: usize = dims[2..].iter().product();
    let (fan_in, fan_out) = (dims[1] * receptive, dims[0] * receptive);
    if fan_in == 0 || fan_out == 0 {
        return Err(Error::InvalidArgument(format!(
            "init: shape {shape} has no fan in or out"
        )));
    }
    Ok((fan_in, fan_out))
}

fn fan(shape: &Shape, mode: FanMode) -> Result<usize> {
    let (fan_in, fan_out) = fans(shape)?;
    Ok(match mode {
        FanMode::FanIn => fan_in,
        FanMode::FanOut => fan_out,
    })
}

/// Draws every parameter of `module` whose name `select` accepts from `init` (in the
/// order of `named_parameters`, so a seed gives the same values every time), and returns
/// how many it set. Selecting none is an error that lists the names there are, since it
/// is almost always a misspelt name.
pub fn apply(
    module: &(impl ModuleState + ?Sized),
    select: impl Fn(&str) -> bool,
    init: Init,
    rng: &mut Rng,
) -> Result<usize> {
    let named = super::unique_parameters(module.named_parameters());
    let chosen: Vec<&(String, Var)> = named.iter().filter(|(n, _)| select(n)).collect();
    if chosen.is_empty() {
        let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
        return Err(Error::InvalidArgument(format!(
            "init: no parameter was selected; the module has {names:?}"
        )));
    }
    // Every draw is checked before any parameter changes.
    let values = chosen
        .iter()
        .map(|(name, var)| {
            init.tensor(var.shape().clone(), rng, var.device())
                .map_err(|e| e.context(format!("parameter `{name}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    for ((_, var), value) in chosen.iter().zip(&values) {
        var.set(value)?;
    }
    Ok(chosen.len())
}
