//! Optimizers. Each keeps its per-parameter state on the parameter's device and updates
//! parameters in place with one fused kernel per tensor.

mod adamw;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, GradStore, Result, Tensor, Var};

/// Updates a set of variables from their gradients.
pub trait Optimizer {
    /// One update from `grads`; variables without a gradient are left as they are.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f32;
    /// Changes the learning rate (a schedule); it must be finite and non-negative.
    fn set_learning_rate(&mut self, lr: f32) -> Result<()>;
}

/// A boxed optimizer is an optimizer, so that code can pick one at run time
/// (`Box<dyn Optimizer + Send>`) and still hand it to generic code such as data
/// parallelism.
impl<T: Optimizer + ?Sized> Optimizer for Box<T> {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        (**self).step(grads)
    }

    fn learning_rate(&self) -> f32 {
        (**self).learning_rate()
    }

    fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        (**self).set_learning_rate(lr)
    }
}

/// The gradient to apply to `var`, checked against its shape. A gradient that shares the
/// variable's memory (one a user inserted by hand) is copied first: the update reads it
/// while writing the variable.
fn grad_for(var: &Var, grad: &Tensor) -> Result<Tensor> {
    if grad.shape() != var.shape() {
        return Err(Error::ShapeMismatch {
            op: "optimizer step",
            lhs: var.shape().clone(),
            rhs: grad.shape().clone(),
            hint: " (gradient and parameter)",
        });
    }
    if grad.shares_storage(var) {
        Tensor::from_vec(grad.to_vec()?, grad.shape().clone(), grad.device())
    } else {
        Ok(grad.clone())
    }
}

/// Every variable that has a gradient, with that gradient, all checked before any update:
/// a bad gradient must not leave the model half-updated.
fn gradients(vars: &[Var], grads: &GradStore) -> Result<Vec<(usize, Tensor)>> {
    vars.iter()
        .enumerate()
        .filter_map(|(i, var)| grads.get(var).map(|g| grad_for(var, g).map(|g| (i, g))))
        .collect()
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
