//! Evaluating a classifier on a dataset.

use crate::data::{Batches, Dataset};
use crate::nn::Module;
use ringtrain_runtime::{no_grad, Device, Result, Tensor};

/// Mean loss and accuracy of a classifier over a whole dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub loss: f32,
    pub accuracy: f32,
    pub samples: usize,
}

impl Evaluation {
    /// As a trainer's scores, named `{prefix}_loss` and `{prefix}_accuracy`.
    pub fn scores(&self, prefix: &str) -> crate::train::Scores {
        vec![
            (format!("{prefix}_loss"), f64::from(self.loss)),
            (format!("{prefix}_accuracy"), f64::from(self.accuracy)),
        ]
    }
}

/// Runs `model` over `dataset` in batches of `batch_size` (no gradients recorded, layers
/// in evaluation mode) and scores its logits with cross-entropy and top-1 accuracy. The
/// model is left in training mode.
pub fn evaluate(
    model: &dyn Module,
    dataset: &Dataset,
    batch_size: usize,
    device: &Device,
) -> Result<Evaluation> {
    let batches = Batches::new(dataset, batch_size, None)?;
    model.set_training(false);
    let result = score(model, dataset, batches, device);
    model.set_training(true);
    result
}

fn score(
    model: &dyn Module,
    dataset: &Dataset,
    batches: Batches,
    device: &Device,
) -> Result<Evaluation> {
    no_grad(|| {
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for batch in batches {
            let x = Tensor::from_vec(batch.images, (batch.len, dataset.features()), device)?;
            let logits = model.forward(&x)?;
            loss_sum += logits.cross_entropy(&batch.labels)?.to_scalar()? as f64 * batch.len as f64;
            correct += logits
                .argmax()?
                .iter()
                .zip(&batch.labels)
                .filter(|(p, l)| p == l)
                .count();
            seen += batch.len;
        }
        let n = seen.max(1) as f64;
        Ok(Evaluation {
            loss: (loss_sum / n) as f32,
            accuracy: (correct as f64 / n) as f32,
            samples: seen,
        })
    })
}
