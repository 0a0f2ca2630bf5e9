use crate::nn::{Conv2d, Conv2dConfig, Flatten, Linear, MaxPool2d, Relu, Sequential, Unflatten};
use ringtrain_runtime::{Device, Error, Result, Rng};

/// A small convolutional classifier for `channels x height x width` images given as flat
/// rows: two blocks of 3x3 convolution (padding 1), ReLU and 2x2 max pooling (16 then 32
/// channels), then a 128-unit hidden layer and `classes` logits. On 28x28 MNIST digits:
/// 1x28x28 -> 16x14x14 -> 32x7x7 -> 128 -> 10, 207k parameters.
///
/// A plain [`Sequential`], so a user can copy it and change any layer.
pub fn cnn(
    (channels, height, width): (usize, usize, usize),
    classes: usize,
    device: &Device,
    rng: &mut Rng,
) -> Result<Sequential> {
    if height < 4 || width < 4 || channels == 0 || classes == 0 {
        return Err(Error::InvalidArgument(format!(
            "cnn needs images of at least 4x4 and some channels and classes, got \
             {channels}x{height}x{width} -> {classes}"
        )));
    }
    let same = Conv2dConfig {
        padding: 1,
        ..Conv2dConfig::default()
    };
    let features = 32 * (height / 2 / 2) * (width / 2 / 2);
    Ok(Sequential::new()
        .with(Unflatten::new(vec![channels, height, width]))
        .with(Conv2d::new(channels, 16, 3, same, device, rng)?)
        .with(Relu)
        .with(MaxPool2d::new(2, None, 0)?)
        .with(Conv2d::new(16, 32, 3, same, device, rng)?)
        .with(Relu)
        .with(MaxPool2d::new(2, None, 0)?)
        .with(Flatten)
        .with(Linear::new(features, 128, device, rng)?)
        .with(Relu)
        .with(Linear::new(128, classes, device, rng)?))
}
