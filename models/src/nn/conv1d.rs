use super::Module;
use ringtrain_runtime::{Device, Error, Result, Rng, Tensor, Var};

/// GPT-2's linear layer (Hugging Face's `Conv1D`): `y = x W + b` with the weight stored
/// `[in, out]`, the transpose of [`super::Linear`]'s, so a GPT-2 checkpoint's
/// `c_attn.weight`, `c_fc.weight` and `c_proj.weight` load as they are. Accepts `[.., in]`
/// inputs; the bias is fused into the GEMM. Parameters `weight` and `bias`.
#[derive(Module)]
pub struct Conv1D {
    #[module(quantize)]
    weight: Var,
    bias: Var,
}

impl Conv1D {
    /// GPT-2's initialisation: weight N(0, `std`^2) (0.02 in GPT-2), bias zero.
    pub fn new(
        in_features: usize,
        out_features: usize,
        std: f32,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        if in_features == 0 || out_features == 0 {
            return Err(Error::InvalidArgument(format!(
                "Conv1D needs at least one input and one output feature, got {in_features} -> {out_features}"
            )));
        }
        let w = Tensor::randn(0.0, std, (in_features, out_features), rng, device)?;
        Ok(Self {
            weight: Var::from_tensor(&w)?,
            bias: Var::zeros(out_features, device)?,
        })
    }

    /// A layer from existing parameters: weight `[in, out]`, bias `[out]`.
    pub fn from_parts(weight: Var, bias: Var) -> Result<Self> {
        let (inputs, out) = weight.shape().dims2("Conv1D weight")?;
        if inputs == 0 || out == 0 || bias.dims() != [out] {
            return Err(Error::InvalidShape {
                op: "Conv1D",
                reason: format!(
                    "weight [in, out] and bias [out] expected, got {} and {}",
                    weight.shape(),
                    bias.shape()
                ),
            });
        }
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> &Var {
        &self.bias
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[1]
    }
}

impl Module for Conv1D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let in_features = self.in_features();
        if x.dims().last() != Some(&in_features) {
            return Err(Error::InvalidShape {
                op: "Conv1D",
                reason: format!(
                    "expected inputs [.., {in_features}], got shape {}",
                    x.shape()
                ),
            });
        }
        let rows = x.elem_count() / in_features;
        let y = x
            .reshape((rows, in_features))?
            .linear_in_out(&self.weight, Some(&self.bias))?;
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out_features();
        }
        y.reshape(dims)
    }
}
