//! Optimizers. Each keeps its per-parameter state on the parameter's device and updates
//! parameters in place with one fused kernel per tensor.

mod adamw;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, GradStore, Result, Var};

/// Updates a set of variables from their gradients.
pub trait Optimizer {
    /// One update from `grads`; variables without a gradient are left as they are.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f32;
    fn set_learning_rate(&mut self, lr: f32);
}

fn check_grad(var: &Var, grad: &crate::Tensor) -> Result<()> {
    if grad.shape() != var.shape() {
        return Err(Error::ShapeMismatch {
            op: "optimizer step",
            lhs: var.shape().clone(),
            rhs: grad.shape().clone(),
            hint: " (gradient and parameter)",
        });
    }
    Ok(())
}

fn check_finite(name: &str, value: f32) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{name} must be a finite, non-negative number, got {value}"
        )))
    }
}
