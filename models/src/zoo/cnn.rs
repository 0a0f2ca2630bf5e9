use crate::nn::{Conv2d, Conv2dConfig, Linear, Module};
use ringtrain_runtime::{Device, Error, Result, Rng, Tensor};

/// A small convolutional classifier for `channels x height x width` images given as flat
/// rows: two blocks of 3x3 convolution (padding 1), ReLU and 2x2 max pooling (16 then 32
/// channels), then a 128-unit hidden layer and `classes` logits. On 28x28 MNIST digits:
/// 1x28x28 -> 16x14x14 -> 32x7x7 -> 128 -> 10, 207k parameters.
///
/// A plain struct with a written-out `forward`, to copy and change; its parameters are
/// named as the same PyTorch module's attributes would be (`conv1.weight`, `fc2.bias`).
#[derive(Module)]
pub struct Cnn {
    #[module(skip)]
    image: (usize, usize, usize),
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn {
    pub fn new(
        (channels, height, width): (usize, usize, usize),
        classes: usize,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Cnn> {
        if height < 4 || width < 4 || channels == 0 || classes == 0 {
            return Err(Error::InvalidArgument(format!(
                "Cnn needs images of at least 4x4 and some channels and classes, got \
                 {channels}x{height}x{width} -> {classes}"
            )));
        }
        // The ReLU after each convolution runs inside it (the same values as a ReLU op).
        let same = Conv2dConfig {
            padding: 1,
            relu: true,
            ..Conv2dConfig::default()
        };
        let features = 32 * (height / 4) * (width / 4);
        Ok(Cnn {
            image: (channels, height, width),
            conv1: Conv2d::new(channels, 16, 3, same, device, rng)?,
            conv2: Conv2d::new(16, 32, 3, same, device, rng)?,
            fc1: Linear::new(features, 128, device, rng)?,
            fc2: Linear::new(128, classes, device, rng)?,
        })
    }
}

impl Module for Cnn {
    /// `x`: `[batch, channels * height * width]` rows, or `[batch, channels, height, width]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (c, h, w) = self.image;
        let batch = x.dims().first().copied().unwrap_or(0);
        if x.elem_count() != batch * c * h * w {
            return Err(Error::InvalidShape {
                op: "Cnn",
                reason: format!(
                    "input of shape {} does not hold {c}x{h}x{w} images",
                    x.shape()
                ),
            });
        }
        let x = x.reshape(vec![batch, c, h, w])?;
        let x = self.conv1.forward(&x)?.max_pool2d((2, 2), (2, 2), (0, 0))?;
        let x = self.conv2.forward(&x)?.max_pool2d((2, 2), (2, 2), (0, 0))?;
        let features = x.elem_count() / batch.max(1);
        let x = self.fc1.forward_relu(&x.reshape((batch, features))?)?;
        self.fc2.forward(&x)
    }
}
