//! Trainable parameters.

use crate::device::{on_device, wrap};
use crate::{Device, Error, Result, Shape, Tensor};
use ringtrain_kernels::Backend;

/// A tensor whose values an optimizer updates in place, and whose gradient `backward`
/// collects. Cloning a `Var` gives another handle to the same parameter.
#[derive(Clone, Debug)]
pub struct Var(Tensor);

impl Var {
    /// A trainable copy of `init`'s values.
    pub fn from_tensor(init: &Tensor) -> Result<Var> {
        let data = init.to_vec()?;
        Var::from_vec(data, init.shape().clone(), init.device())
    }

    pub fn from_vec(data: Vec<f32>, shape: impl Into<Shape>, device: &Device) -> Result<Var> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::InvalidShape {
                op: "Var::from_vec",
                reason: format!("{} values cannot fill shape {shape}", data.len()),
            });
        }
        let storage = on_device!(device, b => wrap(b, b.upload(&data)?));
        Ok(Var(Tensor::new_var(storage, shape, device.clone())))
    }

    pub fn zeros(shape: impl Into<Shape>, device: &Device) -> Result<Var> {
        let shape = shape.into();
        Var::from_vec(vec![0.0; shape.elem_count()], shape, device)
    }

    pub fn as_tensor(&self) -> &Tensor {
        &self.0
    }

    /// Replaces the values (same shape), e.g. when loading a checkpoint.
    pub fn set(&self, values: &Tensor) -> Result<()> {
        if values.shape() != self.0.shape() {
            return Err(Error::ShapeMismatch {
                op: "Var::set",
                lhs: self.0.shape().clone(),
                rhs: values.shape().clone(),
                hint: "",
            });
        }
        // Read `values` before taking the write lock: it may share this Var's storage (a
        // `detach()`ed snapshot, a reshape), and holding both locks would deadlock.
        let data = values.to_vec()?;
        let mut dst = self.0.write();
        // The whole storage is replaced: a quantized weight becomes f32 again.
        on_device!(self.0.device(), b => {
            *dst = wrap(b, b.upload(&data)?);
        });
        Ok(())
    }
}

impl std::ops::Deref for Var {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}
