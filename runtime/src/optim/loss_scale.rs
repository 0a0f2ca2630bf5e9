//! Dynamic loss scaling, for training whose products take f16 inputs: small gradients
//! would round to zero in f16 (its smallest value is 2^-24), so the loss is multiplied
//! by a large scale before backward and the gradients divided by it after. A step whose
//! scaled gradients overflowed (f16's largest value is 65504) is skipped and the scale
//! halved; after a run of good steps it doubles again. PyTorch's `GradScaler` does the
//! same, with the same defaults.

use crate::{Error, GradStore, Result, Tensor};

/// The scale and its schedule. Scales are powers of two, so scaling and unscaling are
/// exact: a step that does not overflow gets the gradients an unscaled step would, bar
/// the values that would have underflowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossScaler {
    scale: f32,
    growth_interval: u32,
    good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: Self::INITIAL_SCALE,
            growth_interval: Self::GROWTH_INTERVAL,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// 2^16, as PyTorch's.
    pub const INITIAL_SCALE: f32 = 65536.0;
    /// Good steps after which the scale doubles, as PyTorch's.
    pub const GROWTH_INTERVAL: u32 = 2000;
    /// The scale never leaves [2^-24, 2^24].
    const RANGE: (f32, f32) = (1.0 / 16_777_216.0, 16_777_216.0);

    /// A scaler starting at `scale` (a power of two in [2^-24, 2^24]) that doubles it
    /// after every `growth_interval` steps without overflow.
    pub fn new(scale: f32, growth_interval: u32) -> Result<Self> {
        Self::resumed(scale, growth_interval, 0)
    }

    /// A scaler as [`LossScaler::scale`] and [`LossScaler::good_steps`] left it (a
    /// checkpoint's).
    pub fn resumed(scale: f32, growth_interval: u32, good_steps: u32) -> Result<Self> {
        let power_of_two = scale.is_finite() && scale > 0.0 && scale.to_bits() & 0x007f_ffff == 0;
        if !power_of_two || scale < Self::RANGE.0 || scale > Self::RANGE.1 {
            return Err(Error::InvalidArgument(format!(
                "a loss scale must be a power of two in [2^-24, 2^24], got {scale}"
            )));
        }
        if growth_interval == 0 || good_steps >= growth_interval {
            return Err(Error::InvalidArgument(format!(
                "a loss scale's growth interval must be at least 1 and above its count of \
                 good steps ({good_steps}), got {growth_interval}"
            )));
        }
        Ok(Self {
            scale,
            growth_interval,
            good_steps,
        })
    }

    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Steps without overflow since the scale last changed.
    pub fn good_steps(&self) -> u32 {
        self.good_steps
    }

    pub fn growth_interval(&self) -> u32 {
        self.growth_interval
    }

    /// `loss` times the scale, to call `backward` on.
    pub fn scale_loss(&self, loss: &Tensor) -> Result<Tensor> {
        loss.scale(self.scale)
    }

    /// Divides the gradients of a scaled loss by the scale, and says whether they are
    /// all finite (reading one number back). When they are not, the step must be
    /// skipped: call [`LossScaler::update`] with `true`.
    pub fn unscale(&self, grads: &mut GradStore) -> Result<bool> {
        grads.scale(1.0 / self.scale)?;
        grads.all_finite()
    }

    /// After a step: an overflow halves the scale and starts the count again; otherwise
    /// the count grows, and at the growth interval the scale doubles.
    pub fn update(&mut self, overflowed: bool) {
        if overflowed {
            self.scale = (self.scale * 0.5).max(Self::RANGE.0);
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps == self.growth_interval {
                self.scale = (self.scale * 2.0).min(Self::RANGE.1);
                self.good_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_halves_on_overflow_and_doubles_after_good_steps() {
        let mut s = LossScaler::new(1024.0, 3).unwrap();
        s.update(false);
        s.update(false);
        assert_eq!((s.scale(), s.good_steps()), (1024.0, 2));
        s.update(true);
        assert_eq!((s.scale(), s.good_steps()), (512.0, 0));
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale(), s.good_steps()), (1024.0, 0));
        let resumed = LossScaler::resumed(1024.0, 3, 2).unwrap();
        assert_eq!(resumed.good_steps(), 2);
    }

    #[test]
    fn bad_settings_are_errors() {
        for scale in [0.0, -2.0, 3.0, f32::INFINITY, f32::NAN, 2f32.powi(30)] {
            assert!(LossScaler::new(scale, 10).is_err(), "{scale}");
        }
        assert!(LossScaler::new(8.0, 0).is_err());
        assert!(LossScaler::resumed(8.0, 4, 4).is_err());
    }
}
