//! Ops that move elements without arithmetic: `permute`, `narrow`, `split`/`chunk`,
//! `cat`/`stack`, `unsqueeze`/`squeeze`. Each writes a fresh contiguous tensor (strided
//! reads through `copy_strided`, strided writes through `copy_into`) and keeps the dtype.

use crate::backprop::Op;
use crate::device::{buf, on_device, wrap, Storage};
use crate::ops::{record, same_device};
use crate::{Dim, Error, Result, Shape, Tensor};
use ringtrain_kernels::{contiguous_strides, Backend, StridedLayout};

impl Tensor {
    /// Reorders the dimensions: result dimension `i` is input dimension `dims[i]`
    /// (negative ones count from the end). `[b, t, h, d].permute(&[0, 2, 1, 3])` is
    /// `[b, h, t, d]`.
    pub fn permute<D: Dim>(&self, dims: &[D]) -> Result<Tensor> {
        const OP: &str = "permute";
        let order = crate::shape::dim_indices(dims, self.rank(), OP)?;
        let mut seen = vec![false; self.rank()];
        if order.len() != self.rank()
            || order.iter().any(|&d| std::mem::replace(&mut seen[d], true))
        {
            return Err(Error::InvalidArgument(format!(
                "permute: {dims:?} is not a permutation of the {} dimensions of shape {}",
                self.rank(),
                self.shape()
            )));
        }
        if order.iter().enumerate().all(|(i, &d)| i == d) {
            let rec = record(&[self], || Op::Reshape(self.clone()));
            return Ok(self.share_storage(self.shape().clone(), rec));
        }
        let strides = contiguous_strides(self.dims());
        let layout = StridedLayout {
            shape: order.iter().map(|&d| self.dims()[d]).collect(),
            strides: order.iter().map(|&d| strides[d]).collect(),
            offset: 0,
        };
        let shape = Shape::from(layout.shape.clone());
        let rec = record(&[self], || Op::Permute(self.clone(), order.clone()));
        Ok(self.typed(
            self.copy_view(&layout)?,
            shape,
            self.dtype(),
            self.0.bound,
            rec,
        ))
    }

    /// `len` entries of `dim` from `start` on (a copy).
    pub fn narrow(&self, dim: impl Dim, start: usize, len: usize) -> Result<Tensor> {
        const OP: &str = "narrow";
        let dim = dim.index(self.rank(), OP)?;
        let size = self.dims()[dim];
        if start.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::InvalidArgument(format!(
                "narrow: {start}..{} is outside dimension {dim} of shape {}",
                start.saturating_add(len),
                self.shape()
            )));
        }
        if start == 0 && len == size {
            let rec = record(&[self], || Op::Reshape(self.clone()));
            return Ok(self.share_storage(self.shape().clone(), rec));
        }
        let layout = narrow_layout(self.dims(), dim, start, len);
        let shape = Shape::from(layout.shape.clone());
        let rec = record(&[self], || Op::Narrow {
            x: self.clone(),
            dim,
            start,
        });
        Ok(self.typed(
            self.copy_view(&layout)?,
            shape,
            self.dtype(),
            self.0.bound,
            rec,
        ))
    }

    /// Splits `dim` into consecutive pieces of the given sizes, which must add up to it.
    pub fn split(&self, sizes: &[usize], dim: impl Dim) -> Result<Vec<Tensor>> {
        let dim = dim.index(self.rank(), "split")?;
        let total: usize = sizes.iter().sum();
        if total != self.dims()[dim] {
            return Err(Error::InvalidArgument(format!(
                "split: sizes {sizes:?} add up to {total}, dimension {dim} of shape {} is {}",
                self.shape(),
                self.dims()[dim]
            )));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let piece = self.narrow(dim, start, len);
                start += len;
                piece
            })
            .collect()
    }

    /// Splits `dim` into `chunks` pieces of equal size, the last smaller when it does not
    /// divide (PyTorch's `chunk`; fewer pieces when the dimension is shorter).
    pub fn chunk(&self, chunks: usize, dim: impl Dim) -> Result<Vec<Tensor>> {
        let dim = dim.index(self.rank(), "chunk")?;
        if chunks == 0 {
            return Err(Error::InvalidArgument(
                "chunk: zero chunks asked for".into(),
            ));
        }
        let size = self.dims()[dim];
        let step = size.div_ceil(chunks).max(1);
        let sizes: Vec<usize> = (0..size)
            .step_by(step)
            .map(|s| step.min(size - s))
            .collect();
        self.split(&sizes, dim)
    }

    /// Joins tensors along `dim`; every other dimension, the dtype and the device must
    /// agree.
    pub fn cat(tensors: &[&Tensor], dim: impl Dim) -> Result<Tensor> {
        const OP: &str = "cat";
        let first = *tensors
            .first()
            .ok_or_else(|| Error::InvalidArgument("cat: no tensors to join".into()))?;
        let dim = dim.index(first.rank(), OP)?;
        for t in &tensors[1..] {
            same_device(OP, first, t)?;
            t.expect_dtype(first.dtype(), OP)?;
            let fits = t.rank() == first.rank()
                && (0..t.rank()).all(|d| d == dim || t.dims()[d] == first.dims()[d]);
            if !fits {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    lhs: first.shape().clone(),
                    rhs: t.shape().clone(),
                    hint: " (all dimensions but the joined one must agree)",
                });
            }
        }
        if tensors.len() == 1 {
            return Ok(first.clone());
        }
        let mut dims = first.dims().to_vec();
        dims[dim] = tensors.iter().map(|t| t.dims()[dim]).sum();
        let shape = Shape::from(dims.clone());
        let storage = on_device!(first.device(), b => {
            let mut out = b.alloc(shape.elem_count())?;
            let mut start = 0;
            for t in tensors {
                let len = t.dims()[dim];
                let mut layout = narrow_layout(&dims, dim, start, len);
                layout.shape = t.dims().to_vec();
                b.copy_into(buf(b, &t.read())?, &mut out, &layout)?;
                start += len;
            }
            wrap(b, out)
        });
        let bound = tensors
            .iter()
            .map(|t| t.0.bound)
            .try_fold(0u64, |acc, b| b.map(|b| acc.max(b)));
        let parts: Vec<Tensor> = tensors.iter().map(|&t| t.clone()).collect();
        let refs: Vec<&Tensor> = tensors.to_vec();
        let rec = record(&refs, || Op::Cat { parts, dim });
        Ok(first.typed(storage, shape, first.dtype(), bound, rec))
    }

    /// Stacks tensors of one shape along a new dimension `dim` (`0..=rank`).
    pub fn stack(tensors: &[&Tensor], dim: usize) -> Result<Tensor> {
        let expanded = tensors
            .iter()
            .map(|t| t.unsqueeze(dim))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = expanded.iter().collect();
        Tensor::cat(&refs, dim)
    }

    /// A new dimension of size 1 at `dim` (`0..=rank`), sharing memory.
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        if dim > self.rank() {
            return Err(Error::DimOutOfRange {
                op: "unsqueeze",
                dim: dim as i64,
                rank: self.rank() + 1,
            });
        }
        let mut dims = self.dims().to_vec();
        dims.insert(dim, 1);
        self.reshape(dims)
    }

    /// Removes dimension `dim`, which must have size 1, sharing memory.
    pub fn squeeze(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.index(self.rank(), "squeeze")?;
        if self.dims()[dim] != 1 {
            return Err(Error::InvalidShape {
                op: "squeeze",
                reason: format!("dimension {dim} of shape {} is not 1", self.shape()),
            });
        }
        let mut dims = self.dims().to_vec();
        dims.remove(dim);
        self.reshape(dims)
    }

    /// A contiguous copy of a strided view of this tensor's memory.
    pub(crate) fn copy_view(&self, layout: &StridedLayout) -> Result<Storage> {
        let x = self.read();
        Ok(on_device!(self.device(), b => {
            let mut out = b.alloc(layout.elem_count())?;
            b.copy_strided(buf(b, &x)?, layout, &mut out)?;
            wrap(b, out)
        }))
    }

    /// The gradient of a `narrow`: `self` written into zeros of `shape` at `start` of
    /// `dim`.
    pub(crate) fn pad_into(&self, shape: &Shape, dim: usize, start: usize) -> Result<Tensor> {
        let mut layout = narrow_layout(shape.dims(), dim, start, self.dims()[dim]);
        layout.shape = self.dims().to_vec();
        let g = self.read();
        let storage = on_device!(self.device(), b => {
            let mut out = b.zeros(shape.elem_count())?;
            b.copy_into(buf(b, &g)?, &mut out, &layout)?;
            wrap(b, out)
        });
        Ok(self.typed(storage, shape.clone(), self.dtype(), None, None))
    }
}

/// The view of `len` entries of `dim` from `start` on, in a contiguous array of `dims`.
fn narrow_layout(dims: &[usize], dim: usize, start: usize, len: usize) -> StridedLayout {
    let strides = contiguous_strides(dims);
    let mut shape = dims.to_vec();
    shape[dim] = len;
    StridedLayout {
        offset: start * strides[dim],
        shape,
        strides,
    }
}
