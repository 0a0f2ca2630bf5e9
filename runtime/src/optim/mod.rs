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
    /// Everything the next updates depend on besides the variables and the configuration
    /// (momentum buffers, moment estimates, step counts), as named host tensors, so that
    /// a checkpoint can hold it. Names say which variable (by its index in the list the
    /// optimizer was built with) a tensor belongs to.
    fn state(&self) -> Result<Vec<StateTensor>>;
    /// Replaces the state with `state`, as [`Optimizer::state`] gave it for the same
    /// variables. Unknown names, wrong shapes or indices are errors, and leave the state
    /// as it was.
    fn load_state(&mut self, state: &[StateTensor]) -> Result<()>;
}

/// One named tensor of an optimizer's state: name, shape, row-major values.
pub type StateTensor = (String, Vec<usize>, Vec<f32>);

/// A count as an exact pair of f32s (high and low 24 bits): f32 holds integers exactly
/// only up to 2^24, and a resumed run must see the very count it saved.
fn count_to_f32s(count: u64) -> Vec<f32> {
    vec![(count >> 24) as f32, (count & 0xff_ffff) as f32]
}

fn count_from_f32s(name: &str, values: &[f32]) -> Result<u64> {
    let exact = |v: f32| v >= 0.0 && v.fract() == 0.0 && v < 16_777_216.0;
    match values {
        [hi, lo] if exact(*hi) && exact(*lo) => Ok(((*hi as u64) << 24) | *lo as u64),
        _ => Err(Error::InvalidArgument(format!(
            "optimizer state `{name}` is not a step count: {values:?}"
        ))),
    }
}

/// Splits `"{kind}.{index}"` into its kind and a variable index below `vars`.
fn state_slot(name: &str, vars: usize) -> Result<(&str, usize)> {
    let bad = || {
        Error::InvalidArgument(format!(
            "optimizer state `{name}` names no variable of this optimizer ({vars} variables)"
        ))
    };
    let (kind, index) = name.rsplit_once('.').ok_or_else(bad)?;
    let index: usize = index.parse().map_err(|_| bad())?;
    if index >= vars {
        return Err(bad());
    }
    Ok((kind, index))
}

/// Checks that a state tensor has the variable's shape.
fn check_state_shape(name: &str, shape: &[usize], values: &[f32], var: &Var) -> Result<()> {
    if shape != var.dims() || values.len() != var.elem_count() {
        return Err(Error::InvalidArgument(format!(
            "optimizer state `{name}` has shape {shape:?} ({} values), its variable {:?}",
            values.len(),
            var.dims()
        )));
    }
    Ok(())
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

    fn state(&self) -> Result<Vec<StateTensor>> {
        (**self).state()
    }

    fn load_state(&mut self, state: &[StateTensor]) -> Result<()> {
        (**self).load_state(state)
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
