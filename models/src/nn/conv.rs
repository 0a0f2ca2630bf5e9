use super::Module;
use ringtrain_runtime::{Device, Error, Result, Rng, Tensor, Var};

/// 2-D convolution over `[batch, in_channels, height, width]` inputs, weight stored
/// `[out_channels, in_channels, kernel_h, kernel_w]` as PyTorch stores it, optionally
/// followed by a ReLU in the same op (`Conv2dConfig::relu`). Runs as im2col and FMA
/// GEMMs on every backend (on the CPU image by image, in cache).
#[derive(Module)]
pub struct Conv2d {
    #[module(quantize)]
    weight: Var,
    bias: Option<Var>,
    #[module(skip)]
    stride: (usize, usize),
    #[module(skip)]
    padding: (usize, usize),
    #[module(skip)]
    relu: bool,
}

/// A square kernel's convolution settings; see [`Conv2d::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub stride: usize,
    pub padding: usize,
    pub bias: bool,
    /// Apply a ReLU in the convolution itself (`Tensor::conv2d_relu`): the same result as
    /// a `Relu` layer after it, without the two passes over the output that costs.
    pub relu: bool,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            stride: 1,
            padding: 0,
            bias: true,
            relu: false,
        }
    }
}

impl Conv2d {
    /// PyTorch's default initialisation: weight and bias uniform in `+-1/sqrt(fan_in)`,
    /// `fan_in = in_channels * kernel * kernel`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: Conv2dConfig,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Conv2d> {
        if in_channels == 0 || out_channels == 0 || kernel == 0 || config.stride == 0 {
            return Err(Error::InvalidArgument(format!(
                "Conv2d needs positive channels, kernel and stride, got {in_channels} -> \
                 {out_channels}, kernel {kernel}, stride {}",
                config.stride
            )));
        }
        let fan_in = in_channels * kernel * kernel;
        let bound = 1.0 / (fan_in as f32).sqrt();
        let w = Tensor::rand_uniform(
            -bound,
            bound,
            vec![out_channels, in_channels, kernel, kernel],
            rng,
            device,
        )?;
        let bias = if config.bias {
            let b = Tensor::rand_uniform(-bound, bound, out_channels, rng, device)?;
            Some(Var::from_tensor(&b)?)
        } else {
            None
        };
        Ok(Conv2d {
            weight: Var::from_tensor(&w)?,
            bias,
            stride: (config.stride, config.stride),
            padding: (config.padding, config.padding),
            relu: config.relu,
        })
    }

    /// A convolution from existing parameters: weight `[out, in, kh, kw]`, optional bias
    /// `[out]`, with `config`'s stride and padding.
    pub fn from_parts(weight: Var, bias: Option<Var>, config: Conv2dConfig) -> Result<Conv2d> {
        let dims = weight.dims();
        if dims.len() != 4 || dims.contains(&0) || config.stride == 0 {
            return Err(Error::InvalidArgument(format!(
                "Conv2d needs a weight [out, in, kh, kw] of positive sizes and a positive \
                 stride, got weight {} and stride {}",
                weight.shape(),
                config.stride
            )));
        }
        if let Some(b) = &bias {
            if b.dims() != [dims[0]] {
                return Err(Error::InvalidShape {
                    op: "Conv2d",
                    reason: format!(
                        "bias of shape {} does not match {} output channels",
                        b.shape(),
                        dims[0]
                    ),
                });
            }
        }
        Ok(Conv2d {
            weight,
            bias,
            stride: (config.stride, config.stride),
            padding: (config.padding, config.padding),
            relu: config.relu,
        })
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Var> {
        self.bias.as_ref()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self.bias.as_ref().map(Var::as_tensor);
        if self.relu {
            x.conv2d_relu(&self.weight, bias, self.stride, self.padding)
        } else {
            x.conv2d(&self.weight, bias, self.stride, self.padding)
        }
    }

    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        // A second ReLU after the op's own changes nothing.
        let bias = self.bias.as_ref().map(Var::as_tensor);
        x.conv2d_relu(&self.weight, bias, self.stride, self.padding)
    }
}
