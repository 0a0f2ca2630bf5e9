//! Integer tensors and the ops that index with them or make them: `arange`,
//! `index_select`/`gather` (with a deterministic scatter-add backward), comparisons into
//! masks, `where_cond`/`masked_fill`, `tril`/`triu`, `argmax`/`max` over a dimension and
//! dtype casts. Indices stay on the device: a u32 tensor carries a bound on its values
//! (known from the host data or from the op that made it), so a lookup is range-checked
//! without a readback; only a tensor of unknown bound is read back to be checked.

use crate::backprop::Op;
use crate::device::{buf, half_buf, on_device, wrap, Storage};
use crate::ops::{record, same_device};
use crate::{Device, Dim, Error, Result, Shape, Tensor};
use ringtrain_kernels::{Backend, BinaryLayout, CompareOp, DType, GatherSpec, SelectLayout};

impl Tensor {
    /// A u32 tensor holding `data` (row-major): indices, labels, token ids, masks.
    pub fn from_u32(data: Vec<u32>, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        if data.len() != shape.elem_count() {
            return Err(Error::InvalidShape {
                op: "from_u32",
                reason: format!("{} values cannot fill shape {shape}", data.len()),
            });
        }
        let bound = data.iter().max().map_or(0, |&m| u64::from(m) + 1);
        let storage = on_device!(device, b => wrap(b, b.upload_u32(&data)?));
        Ok(Tensor::from_storage_typed(
            storage,
            shape,
            device.clone(),
            DType::U32,
            Some(bound),
            None,
        ))
    }

    pub fn from_slice_u32(
        data: &[u32],
        shape: impl Into<Shape>,
        device: &Device,
    ) -> Result<Tensor> {
        Tensor::from_u32(data.to_vec(), shape, device)
    }

    /// `[start, start + 1, .., end - 1]` as a u32 tensor made on the device (positions).
    pub fn arange(start: u32, end: u32, device: &Device) -> Result<Tensor> {
        if end < start {
            return Err(Error::InvalidArgument(format!(
                "arange: end {end} is below start {start}"
            )));
        }
        Tensor::u32_filled(start, 1, (end - start) as usize, u64::from(end), device)
    }

    /// A u32 tensor of `shape` with every element `value`.
    pub fn full_u32(value: u32, shape: impl Into<Shape>, device: &Device) -> Result<Tensor> {
        let shape = shape.into();
        let t = Tensor::u32_filled(value, 0, shape.elem_count(), u64::from(value) + 1, device)?;
        t.reshape(shape)
    }

    fn u32_filled(
        start: u32,
        step: u32,
        len: usize,
        bound: u64,
        device: &Device,
    ) -> Result<Tensor> {
        let storage = on_device!(device, b => {
            let mut out = b.alloc(len)?;
            b.arange(&mut out, start, step)?;
            wrap(b, out)
        });
        Ok(Tensor::from_storage_typed(
            storage,
            Shape::from(len),
            device.clone(),
            DType::U32,
            Some(bound),
            None,
        ))
    }

    /// Copies a u32 tensor's values to host memory (a sync point on asynchronous devices).
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        self.expect_dtype(DType::U32, "to_vec_u32")?;
        let storage = self.read();
        on_device!(self.device(), b => Ok(b.download_u32(buf(b, &storage)?)?))
    }

    /// The same values as another dtype: u32 to f32 by value; f32 to u32 truncating
    /// toward zero (negative and NaN to 0); f32 to f16 or bf16 rounding to nearest (ties
    /// to even; beyond the format's range to infinity), which halves the memory; f16 and
    /// bf16 to f32 exactly; between the others through f32. Not differentiable: for
    /// training in a 16-bit format see [`crate::with_precision`].
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        let from = self.dtype();
        if dtype == from {
            return Ok(self.clone());
        }
        if from != DType::F32
            && dtype != DType::F32
            && (from.half().is_some() || dtype.half().is_some())
        {
            return self.to_dtype(DType::F32)?.to_dtype(dtype);
        }
        let n = self.elem_count();
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut out = b.alloc(dtype.words(n))?;
                let x = if from.half().is_some() { half_buf(b, &x)? } else { buf(b, &x)? };
                b.cast(x, from, dtype, &mut out)?;
                if dtype.half().is_some() {
                    Storage::Half(Box::new(wrap(b, out)))
                } else {
                    wrap(b, out)
                }
            })
        };
        Ok(self.typed(storage, self.shape().clone(), dtype, None, None))
    }

    /// A result of this tensor's device.
    pub(crate) fn typed(
        &self,
        storage: Storage,
        shape: Shape,
        dtype: DType,
        bound: Option<u64>,
        op: Option<Op>,
    ) -> Tensor {
        Tensor::from_storage_typed(storage, shape, self.device().clone(), dtype, bound, op)
    }

    /// The first element (position and value) of this u32 tensor that is `limit` or
    /// more, if any. Free when the tensor's bound says none can be; otherwise (a loose or
    /// unknown bound) the values are read back and looked at.
    pub(crate) fn first_out_of_range(&self, limit: usize) -> Result<Option<(usize, u32)>> {
        if self.0.bound.is_some_and(|b| b <= limit as u64) {
            return Ok(None);
        }
        Ok(self
            .to_vec_u32()?
            .into_iter()
            .enumerate()
            .find(|&(_, v)| v as usize >= limit))
    }

    fn check_indices(&self, op: &'static str, n: usize) -> Result<()> {
        self.expect_dtype(DType::U32, op)?;
        match self.first_out_of_range(n)? {
            Some((at, v)) => Err(Error::InvalidArgument(format!(
                "{op}: index {v} at position {at} is out of range for a dimension of size {n}"
            ))),
            None => Ok(()),
        }
    }

    /// Picks entries along `dim` by a u32 index tensor of any shape: the result's shape is
    /// `self`'s with `dim` replaced by the index's dims. `weight.index_select(0, &ids)`
    /// with `ids` `[b, t]` is an embedding lookup `[b, t, d]`; its gradient sums the rows
    /// of repeated ids in a fixed order.
    pub fn index_select(&self, dim: impl Dim, idx: &Tensor) -> Result<Tensor> {
        const OP: &str = "index_select";
        same_device(OP, self, idx)?;
        let dim = dim.index(self.rank(), OP)?;
        let (outer, n, inner) = self.shape().split_at(dim);
        idx.check_indices(OP, n)?;
        let spec = GatherSpec::select(outer, n, idx.elem_count(), inner);
        let mut dims = self.dims()[..dim].to_vec();
        dims.extend_from_slice(idx.dims());
        dims.extend_from_slice(&self.dims()[dim + 1..]);
        self.gather_with(spec, idx, Shape::from(dims))
    }

    /// `out[.., j, ..] = self[.., idx[.., j, ..], ..]` along `dim`, with `idx` (u32) of
    /// `self`'s shape except along `dim` (PyTorch's `gather`).
    pub fn gather(&self, dim: impl Dim, idx: &Tensor) -> Result<Tensor> {
        const OP: &str = "gather";
        same_device(OP, self, idx)?;
        let dim = dim.index(self.rank(), OP)?;
        let fits = idx.rank() == self.rank()
            && (0..self.rank()).all(|d| d == dim || idx.dims()[d] == self.dims()[d]);
        if !fits {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: idx.shape().clone(),
                hint: " (the index must have the input's shape except along the dimension)",
            });
        }
        let (outer, n, inner) = self.shape().split_at(dim);
        idx.check_indices(OP, n)?;
        let spec = GatherSpec::per_element(outer, n, idx.dims()[dim], inner);
        self.gather_with(spec, idx, idx.shape().clone())
    }

    fn gather_with(&self, spec: GatherSpec, idx: &Tensor, shape: Shape) -> Result<Tensor> {
        let storage = self.with_pair(idx, |x, i| {
            Ok(on_device!(self.device(), b => {
                let mut out = b.alloc(spec.out_len())?;
                b.gather(&spec, buf(b, x)?, buf(b, i)?, &mut out)?;
                wrap(b, out)
            }))
        })?;
        let rec = record(&[self], || Op::Gather {
            x: self.clone(),
            idx: idx.clone(),
            spec,
        });
        Ok(self.typed(storage, shape, self.dtype(), self.0.bound, rec))
    }

    /// The index (u32) of the largest value along `dim`, which is removed; the first on
    /// ties, and a NaN counts as largest. Computed on the device.
    pub fn argmax_dim(&self, dim: impl Dim) -> Result<Tensor> {
        const OP: &str = "argmax";
        self.expect_dtype(DType::F32, OP)?;
        let dim = dim.index(self.rank(), OP)?;
        let (outer, axis, inner) = self.shape().split_at(dim);
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut out = b.alloc(outer * inner)?;
                b.argmax_axis(buf(b, &x)?, &mut out, outer, axis, inner)?;
                wrap(b, out)
            })
        };
        let mut dims = self.dims().to_vec();
        dims.remove(dim);
        Ok(self.typed(
            storage,
            Shape::from(dims),
            DType::U32,
            Some(axis as u64),
            None,
        ))
    }

    /// The largest value along `dim` (removed); its gradient goes to the first maximum.
    pub fn max_dim(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.index(self.rank(), "max")?;
        let mut kept = self.dims().to_vec();
        kept[dim] = 1;
        let at = self.argmax_dim(dim)?.reshape(kept)?;
        let mut dims = self.dims().to_vec();
        dims.remove(dim);
        self.gather(dim, &at)?.reshape(dims)
    }

    fn compare(&self, op: CompareOp, rhs: &Tensor, name: &'static str) -> Result<Tensor> {
        same_device(name, self, rhs)?;
        rhs.expect_dtype(self.dtype(), name)?;
        let shape = self.shape().broadcast(rhs.shape(), name)?;
        let layout = BinaryLayout {
            lhs_strides: self.shape().broadcast_strides(&shape),
            rhs_strides: rhs.shape().broadcast_strides(&shape),
            shape: shape.dims().to_vec(),
        };
        let storage = self.with_pair(rhs, |l, r| {
            Ok(on_device!(self.device(), b => {
                let mut out = b.alloc(shape.elem_count())?;
                b.compare(op, self.dtype(), &layout, buf(b, l)?, buf(b, r)?, &mut out)?;
                wrap(b, out)
            }))
        })?;
        Ok(self.typed(storage, shape, DType::U32, Some(2), None))
    }

    /// `self == rhs` elementwise as a u32 mask (1 or 0), broadcasting.
    pub fn eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Eq, rhs, "eq")
    }
    pub fn ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Ne, rhs, "ne")
    }
    pub fn lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Lt, rhs, "lt")
    }
    pub fn le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Le, rhs, "le")
    }
    pub fn gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Gt, rhs, "gt")
    }
    pub fn ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.compare(CompareOp::Ge, rhs, "ge")
    }

    /// `cond ? on_true : on_false` elementwise (`cond` a u32 mask, nonzero true), all
    /// three broadcasting to one shape. Differentiable in both branches.
    pub fn where_cond(cond: &Tensor, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        const OP: &str = "where_cond";
        cond.expect_dtype(DType::U32, OP)?;
        same_device(OP, cond, on_true)?;
        same_device(OP, cond, on_false)?;
        on_false.expect_dtype(on_true.dtype(), OP)?;
        let shape = cond
            .shape()
            .broadcast(on_true.shape(), OP)?
            .broadcast(on_false.shape(), OP)?;
        let layout = SelectLayout {
            cond_strides: cond.shape().broadcast_strides(&shape),
            a_strides: on_true.shape().broadcast_strides(&shape),
            b_strides: on_false.shape().broadcast_strides(&shape),
            shape: shape.dims().to_vec(),
        };
        let storage = {
            let (guards, at) = Tensor::read_all(&[cond, on_true, on_false]);
            let s = |i: usize| &*guards[at[i]];
            on_device!(cond.device(), be => {
                let mut out = be.alloc(shape.elem_count())?;
                be.select(&layout, buf(be, s(0))?, buf(be, s(1))?, buf(be, s(2))?, &mut out)?;
                wrap(be, out)
            })
        };
        let bound = match (on_true.0.bound, on_false.0.bound) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        let rec = record(&[on_true, on_false], || Op::Select {
            cond: cond.clone(),
            on_true: on_true.clone(),
            on_false: on_false.clone(),
        });
        Ok(on_true.typed(storage, shape, on_true.dtype(), bound, rec))
    }

    /// `value` where `mask` (u32, broadcast to this shape) is nonzero, `self` elsewhere:
    /// the attention mask, `scores.masked_fill(&future, f32::NEG_INFINITY)`.
    pub fn masked_fill(&self, mask: &Tensor, value: f32) -> Result<Tensor> {
        const OP: &str = "masked_fill";
        self.expect_dtype(DType::F32, OP)?;
        mask.expect_dtype(DType::U32, OP)?;
        if mask.shape().broadcast(self.shape(), OP)? != *self.shape() {
            return Err(Error::ShapeMismatch {
                op: OP,
                lhs: self.shape().clone(),
                rhs: mask.shape().clone(),
                hint: " (the mask must broadcast to the tensor's shape)",
            });
        }
        let fill = Tensor::full(value, (), self.device())?;
        Tensor::where_cond(mask, &fill, self)
    }

    fn triangle(&self, diagonal: i64, upper: bool, op: &'static str) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::InvalidShape {
                op,
                reason: format!(
                    "needs a matrix or a batch of them, got shape {}",
                    self.shape()
                ),
            });
        }
        let (rows, cols) = (self.dims()[self.rank() - 2], self.dims()[self.rank() - 1]);
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut out = b.alloc(self.elem_count())?;
                b.triangle(buf(b, &x)?, &mut out, rows, cols, diagonal, upper)?;
                wrap(b, out)
            })
        };
        let rec = record(&[self], || Op::Triangle {
            x: self.clone(),
            diagonal,
            upper,
        });
        let bound = self.0.bound.map(|b| b.max(1));
        Ok(self.typed(storage, self.shape().clone(), self.dtype(), bound, rec))
    }

    /// The lower triangle of the last two dimensions (`col - row <= diagonal`), zeros
    /// above; any dtype, differentiable for f32.
    pub fn tril(&self, diagonal: i64) -> Result<Tensor> {
        self.triangle(diagonal, false, "tril")
    }

    /// The upper triangle of the last two dimensions (`col - row >= diagonal`).
    pub fn triu(&self, diagonal: i64) -> Result<Tensor> {
        self.triangle(diagonal, true, "triu")
    }

    /// A `[rows, cols]` u32 mask of ones on and below the diagonal: where a causal
    /// attention may look.
    pub fn causal_mask(rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
        Tensor::full_u32(1, (rows, cols), device)?.tril(0)
    }
}
