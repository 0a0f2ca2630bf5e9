use super::{Module, ModuleState, RngStream};
use rand::Rng as _;
use ringtrain_runtime::{rng_from_seed, Error, Result, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// Zeroes each element with probability `p` in training and scales the rest by
/// `1 / (1 - p)`; the identity in evaluation. Masks come from the layer's seed and a count
/// of its calls (its random stream `masks`, whose position a checkpoint keeps), so a run
/// is reproducible, resumed or not; they are drawn on the host and uploaded.
/// Under data parallelism, replicas built with the same seed draw the same masks for
/// equally sized shards: give each replica its own seed for independent noise.
pub struct Dropout {
    p: f32,
    seed: u64,
    masks: RngStream,
    training: AtomicBool,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!(
                "dropout probability must be in [0, 1), got {p}"
            )));
        }
        Ok(Self {
            p,
            seed,
            masks: RngStream::default(),
            training: AtomicBool::new(true),
        })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training.load(Ordering::Relaxed) || self.p == 0.0 {
            return Ok(x.clone());
        }
        let call = self.masks.advance();
        let mut rng = rng_from_seed(self.seed ^ call.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let keep = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.random::<f32>() < self.p {
                    0.0
                } else {
                    keep
                }
            })
            .collect();
        x.mul(&Tensor::from_vec(mask, x.shape().clone(), x.device())?)
    }
}

impl ModuleState for Dropout {
    fn named_rng_streams(&self) -> Vec<(String, RngStream)> {
        vec![("masks".into(), self.masks.clone())]
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}
