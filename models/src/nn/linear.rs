use super::Module;
use ringtrain_runtime::{Device, Error, Result, Rng, Tensor, Var};

/// `y = x W^T + b`, with `W` stored `[out, in]` as PyTorch stores it, so weights move
/// between the two unchanged. Accepts `[.., in]` inputs. Parameters `weight` and `bias`.
#[derive(Module)]
pub struct Linear {
    #[module(quantize)]
    weight: Var,
    bias: Option<Var>,
}

impl Linear {
    /// PyTorch's default initialisation: weight and bias uniform in `+-1/sqrt(in)`.
    pub fn new(
        in_features: usize,
        out_features: usize,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Linear> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::InvalidArgument(format!(
                "Linear needs at least one input and one output feature, got {in_features} -> {out_features}"
            )));
        }
        let bound = 1.0 / (in_features as f32).sqrt();
        let w = Tensor::rand_uniform(-bound, bound, (out_features, in_features), rng, device)?;
        let b = Tensor::rand_uniform(-bound, bound, out_features, rng, device)?;
        Ok(Linear {
            weight: Var::from_tensor(&w)?,
            bias: Some(Var::from_tensor(&b)?),
        })
    }

    /// A layer from existing parameters: weight `[out, in]`, optional bias `[out]`.
    pub fn from_parts(weight: Var, bias: Option<Var>) -> Result<Linear> {
        let (out, inputs) = weight.shape().dims2("Linear weight")?;
        if out == 0 || inputs == 0 {
            return Err(Error::InvalidArgument(format!(
                "Linear needs at least one input and one output feature, got weight {}",
                weight.shape()
            )));
        }
        if let Some(b) = &bias {
            if b.dims() != [out] {
                return Err(Error::InvalidShape {
                    op: "Linear",
                    reason: format!("bias of shape {} does not match {out} outputs", b.shape()),
                });
            }
        }
        Ok(Linear { weight, bias })
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, false)
    }

    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, true)
    }
}

impl Linear {
    fn apply(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let in_features = self.in_features();
        if x.dims().last() != Some(&in_features) {
            return Err(Error::InvalidShape {
                op: "Linear",
                reason: format!(
                    "expected inputs [.., {in_features}], got shape {}",
                    x.shape()
                ),
            });
        }
        let rows = x.elem_count() / in_features;
        let (x2, bias) = (
            x.reshape((rows, in_features))?,
            self.bias.as_ref().map(Var::as_tensor),
        );
        let y = if relu {
            x2.linear_relu(&self.weight, bias)?
        } else {
            x2.linear(&self.weight, bias)?
        };
        if x.rank() == 2 {
            return Ok(y);
        }
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out_features();
        }
        y.reshape(dims)
    }
}
