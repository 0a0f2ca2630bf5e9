use super::{Module, ModuleState};
use ringtrain_runtime::{Error, Result, Tensor};

/// `[batch, d1, d2, ..]` to `[batch, d1 * d2 * ..]`, sharing memory (tensors are
/// contiguous): the bridge from convolutional features to a classifier.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flatten;

impl ModuleState for Flatten {}

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let Some((&batch, rest)) = x.dims().split_first() else {
            return Err(Error::InvalidShape {
                op: "Flatten",
                reason: "a scalar has no batch dimension to keep".into(),
            });
        };
        x.reshape((batch, rest.iter().product::<usize>()))
    }
}

/// `[batch, n]` to `[batch, dims..]` (with `n` the product of `dims`), sharing memory:
/// lets a convolutional model take the flat rows a dataset yields.
#[derive(Debug, Clone)]
pub struct Unflatten {
    dims: Vec<usize>,
}

impl ModuleState for Unflatten {}

impl Unflatten {
    pub fn new(dims: Vec<usize>) -> Self {
        Self { dims }
    }
}

impl Module for Unflatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let per_row: usize = self.dims.iter().product();
        let batch = x.dims().first().copied().unwrap_or(0);
        if x.rank() < 1 || batch * per_row != x.elem_count() {
            return Err(Error::InvalidShape {
                op: "Unflatten",
                reason: format!(
                    "input of shape {} does not hold rows of {:?}",
                    x.shape(),
                    self.dims
                ),
            });
        }
        let mut shape = vec![batch];
        shape.extend(&self.dims);
        x.reshape(shape)
    }
}
