//! Forward ops. Each checks its operands, runs one backend kernel into a fresh buffer, and
//! records itself for backward when an operand tracks gradients.

use crate::backprop::Op;
use crate::device::{buf, on_device, wrap, Storage};
use crate::shape::{dim_indices, Dim};
use crate::{Error, Result, Shape, Tensor};
use ringtrain_kernels::{Backend, BinaryLayout, BinaryOp, GemmSpec, StridedLayout, UnaryOp};
use std::sync::Arc;

pub(crate) fn same_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device().same_kind(b.device()) {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            lhs: a.device().name(),
            rhs: b.device().name(),
        })
    }
}

/// `Some(op)` when gradients must flow through the result.
pub(crate) fn record(inputs: &[&Tensor], op: impl FnOnce() -> Op) -> Option<Op> {
    inputs.iter().any(|t| t.tracks_grad()).then(op)
}

impl Tensor {
    /// Runs `f` on the storage of both operands, locking it once when they share it
    /// (`x.mul(&x)`): a second read lock from the same thread may block behind a writer.
    pub(crate) fn with_pair<T>(
        &self,
        other: &Tensor,
        f: impl FnOnce(&Storage, &Storage) -> Result<T>,
    ) -> Result<T> {
        let mine = self.read();
        if self.shares_storage(other) {
            f(&mine, &mine)
        } else {
            f(&mine, &other.read())
        }
    }

    pub(crate) fn derived(&self, storage: Storage, shape: Shape, op: Option<Op>) -> Tensor {
        Tensor::from_storage(storage, shape, self.device().clone(), op)
    }

    // ---- elementwise -------------------------------------------------------------------

    pub(crate) fn unary(&self, op: UnaryOp) -> Result<Tensor> {
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut y = b.alloc(self.elem_count())?;
                b.unary(op, buf(b, &x)?, &mut y)?;
                wrap(b, y)
            })
        };
        let rec = record(&[self], || Op::Unary(op, self.clone()));
        Ok(self.derived(storage, self.shape().clone(), rec))
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Exp)
    }
    /// Natural logarithm.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Log)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqr)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sqrt)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Relu)
    }
    /// GELU, tanh approximation.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Gelu)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Tanh)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(UnaryOp::Sigmoid)
    }

    /// 1 where an element is infinite or NaN, else 0.
    pub fn nonfinite_mask(&self) -> Result<Tensor> {
        self.unary(UnaryOp::NonFinite)
    }

    /// The number of infinite or NaN elements, as a scalar on the tensor's device, so
    /// that checking costs no wait until it is read (`to_scalar`). Exact up to 2^24; any
    /// count above 0 means some. Not part of the autograd graph.
    pub fn count_nonfinite(&self) -> Result<Tensor> {
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut n = b.alloc(1)?;
                b.count_nonfinite(buf(b, &x)?, &mut n)?;
                wrap(b, n)
            })
        };
        Ok(Tensor::from_storage(
            storage,
            Shape::scalar(),
            self.device().clone(),
            None,
        ))
    }

    /// The number of infinite or NaN elements in all of `tensors` (on one device), as a
    /// scalar there; `None` for no tensors.
    pub fn count_nonfinite_all<'a>(
        tensors: impl IntoIterator<Item = &'a Tensor>,
    ) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        for t in tensors {
            let n = t.count_nonfinite()?;
            total = Some(match total {
                Some(sum) => sum.add(&n)?,
                None => n,
            });
        }
        Ok(total)
    }

    /// `self * mul + add`, elementwise.
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut y = b.alloc(self.elem_count())?;
                b.affine(buf(b, &x)?, &mut y, mul, add)?;
                wrap(b, y)
            })
        };
        let rec = record(&[self], || Op::Affine {
            x: self.clone(),
            mul,
        });
        Ok(self.derived(storage, self.shape().clone(), rec))
    }

    pub fn scale(&self, factor: f32) -> Result<Tensor> {
        self.affine(factor, 0.0)
    }

    pub fn add_scalar(&self, value: f32) -> Result<Tensor> {
        self.affine(1.0, value)
    }

    pub(crate) fn binary(&self, op: BinaryOp, rhs: &Tensor, name: &'static str) -> Result<Tensor> {
        same_device(name, self, rhs)?;
        let shape = self.shape().broadcast(rhs.shape(), name)?;
        let layout = BinaryLayout {
            lhs_strides: self.shape().broadcast_strides(&shape),
            rhs_strides: rhs.shape().broadcast_strides(&shape),
            shape: shape.dims().to_vec(),
        };
        let storage = self.with_pair(rhs, |l, r| {
            Ok(on_device!(self.device(), b => {
                let mut out = b.alloc(shape.elem_count())?;
                b.binary(op, &layout, buf(b, l)?, buf(b, r)?, &mut out)?;
                wrap(b, out)
            }))
        })?;
        let rec = record(&[self, rhs], || Op::Binary(op, self.clone(), rhs.clone()));
        Ok(self.derived(storage, shape, rec))
    }

    /// Elementwise sum, broadcasting NumPy-style (a bias `[n]` adds to every row of `[m, n]`).
    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Add, rhs, "add")
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Sub, rhs, "sub")
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Mul, rhs, "mul")
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary(BinaryOp::Div, rhs, "div")
    }

    // ---- matrix products ---------------------------------------------------------------

    /// Matrix product. `[m, k] x [k, n]`; `[.., m, k] x [k, n]` (one matrix applied to a
    /// batch of rows); `[b, m, k] x [b, k, n]` (a batch of products).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        match (self.rank(), rhs.rank()) {
            (2, 2) | (3, 3) => self.matmul_t(rhs, false, false),
            (r, 2) if r > 2 => {
                let dims = self.dims();
                let k = dims[r - 1];
                // Not elem_count / k: with k == 0 that loses the rows (and fails to reshape).
                let rows = dims[..r - 1].iter().product::<usize>();
                let flat = self.reshape((rows, k))?.matmul_t(rhs, false, false)?;
                let mut out = dims[..r - 1].to_vec();
                out.push(rhs.dims()[1]);
                flat.reshape(out)
            }
            _ => Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
                hint: " (expected [m, k] x [k, n], [.., m, k] x [k, n] or [b, m, k] x [b, k, n])",
            }),
        }
    }

    /// A linear layer: `self W^T + bias` for `self` of shape `[rows, in]`, `weight` of
    /// shape `[out, in]` (PyTorch's layout) and an optional `bias` of shape `[out]`. Runs as
    /// one GEMM whose epilogue adds the bias on backends that fuse it (the GPU).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let Some(bias) = bias else {
            return self.matmul_t(weight, false, true);
        };
        same_device("linear", self, weight)?;
        same_device("linear", self, bias)?;
        let (xd, wd) = (self.dims(), weight.dims());
        if xd.len() != 2 || wd.len() != 2 || xd[1] != wd[1] {
            return Err(Error::ShapeMismatch {
                op: "linear",
                lhs: self.shape().clone(),
                rhs: weight.shape().clone(),
                hint: " (inputs [rows, in] and weight [out, in])",
            });
        }
        if bias.dims() != [wd[0]] {
            return Err(Error::ShapeMismatch {
                op: "linear",
                lhs: weight.shape().clone(),
                rhs: bias.shape().clone(),
                hint: " (weight [out, in] and bias [out])",
            });
        }
        if bias.shares_storage(self) || bias.shares_storage(weight) {
            // Locking one storage twice could wait behind a writer; such a model is
            // rare enough to take the unfused path.
            return self.matmul_t(weight, false, true)?.add(bias);
        }
        let (m, k, n) = (xd[0], xd[1], wd[0]);
        let spec = GemmSpec::new(m, n, k, false, true);
        let storage = self.with_pair(weight, |x, w| {
            let b = bias.read();
            Ok(on_device!(self.device(), be => {
                let mut y = be.alloc(m * n)?;
                be.gemm_bias_act(&spec, buf(be, x)?, buf(be, w)?, buf(be, &b)?, None, &mut y)?;
                wrap(be, y)
            }))
        })?;
        let rec = record(&[self, weight, bias], || Op::Linear {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
        });
        Ok(self.derived(storage, Shape::from((m, n)), rec))
    }

    /// `op(self) x op(rhs)` where `op` transposes the last two dimensions when asked,
    /// without copying: the GEMM reads the operand transposed. Rank 2, or rank 3 with equal
    /// batch sizes.
    pub fn matmul_t(&self, rhs: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        same_device("matmul", self, rhs)?;
        let mismatch = |hint| Error::ShapeMismatch {
            op: "matmul",
            lhs: self.shape().clone(),
            rhs: rhs.shape().clone(),
            hint,
        };
        let (ad, bd) = (self.dims(), rhs.dims());
        if ad.len() != bd.len() || !(2..=3).contains(&ad.len()) {
            return Err(mismatch(" (matmul_t takes two 2-d or two 3-d tensors)"));
        }
        let batch = if ad.len() == 3 { ad[0] } else { 1 };
        if ad.len() == 3 && bd[0] != batch {
            return Err(mismatch(" (batch sizes differ)"));
        }
        let r = ad.len();
        let (m, k) = if trans_a {
            (ad[r - 1], ad[r - 2])
        } else {
            (ad[r - 2], ad[r - 1])
        };
        let (kb, n) = if trans_b {
            (bd[r - 1], bd[r - 2])
        } else {
            (bd[r - 2], bd[r - 1])
        };
        if k != kb {
            return Err(mismatch(" (inner dimensions differ)"));
        }
        let spec = GemmSpec {
            batch,
            stride_a: m * k,
            stride_b: k * n,
            ..GemmSpec::new(m, n, k, trans_a, trans_b)
        };
        let shape = if r == 3 {
            Shape::from((batch, m, n))
        } else {
            Shape::from((m, n))
        };
        let storage = self.with_pair(rhs, |a, bb| {
            Ok(on_device!(self.device(), be => {
                let mut c = be.alloc(shape.elem_count())?;
                be.gemm(&spec, buf(be, a)?, buf(be, bb)?, &mut c)?;
                wrap(be, c)
            }))
        })?;
        let rec = record(&[self, rhs], || Op::Matmul {
            a: self.clone(),
            b: rhs.clone(),
            trans_a,
            trans_b,
        });
        Ok(self.derived(storage, shape, rec))
    }

    // ---- reductions --------------------------------------------------------------------

    /// Sums over `dims` (negative ones count from the end), keeping each as a dimension
    /// of size 1.
    pub fn sum_keepdims<D: Dim>(&self, dims: &[D]) -> Result<Tensor> {
        let mut out_dims = self.dims().to_vec();
        let mut sorted = dim_indices(dims, self.rank(), "sum")?;
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() {
            // Nothing to reduce: the same values, sharing memory.
            let rec = record(&[self], || Op::Reshape(self.clone()));
            return Ok(self.share_storage(self.shape().clone(), rec));
        }
        // Runs of adjacent dimensions reduce in one pass: [b, c, h, w] summed over
        // (1, 2, 3) is one [b, c*h*w] -> [b] reduction, not three.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &d in &sorted {
            match runs.last_mut() {
                Some((_, end)) if *end == d => *end = d + 1,
                _ => runs.push((d, d + 1)),
            }
        }
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut current: Option<_> = None;
                for &(start, end) in &runs {
                    let outer = ringtrain_kernels::saturating_product(&out_dims[..start]);
                    let axis = ringtrain_kernels::saturating_product(&out_dims[start..end]);
                    let inner = ringtrain_kernels::saturating_product(&out_dims[end..]);
                    let mut next = b.alloc(outer * inner)?;
                    let src = match &current {
                        Some(c) => c,
                        None => buf(b, &x)?,
                    };
                    b.sum_axis(src, &mut next, outer, axis, inner)?;
                    out_dims[start..end].fill(1);
                    current = Some(next);
                }
                match current {
                    Some(c) => wrap(b, c),
                    None => unreachable!("runs is not empty"),
                }
            })
        };
        let rec = record(&[self], || Op::Sum(self.clone()));
        Ok(self.derived(storage, Shape::from(out_dims), rec))
    }

    /// Sums over `dim` (negative counts from the end), removing it.
    pub fn sum(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.index(self.rank(), "sum")?;
        let kept = self.sum_keepdims(&[dim])?;
        let mut dims = self.dims().to_vec();
        dims.remove(dim);
        kept.reshape(dims)
    }

    /// Sum of every element, as a scalar tensor.
    pub fn sum_all(&self) -> Result<Tensor> {
        let all: Vec<usize> = (0..self.rank()).collect();
        self.sum_keepdims(&all)?.reshape(Shape::scalar())
    }

    /// Mean over `dim` (negative counts from the end), removing it.
    pub fn mean(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.index(self.rank(), "mean")?;
        let n = self.dims()[dim];
        if n == 0 {
            return Err(Error::InvalidShape {
                op: "mean",
                reason: format!("dimension {dim} of shape {} is empty", self.shape()),
            });
        }
        self.sum(dim)?.scale(1.0 / n as f32)
    }

    /// Mean of every element, as a scalar tensor.
    pub fn mean_all(&self) -> Result<Tensor> {
        if self.elem_count() == 0 {
            return Err(Error::InvalidShape {
                op: "mean_all",
                reason: "the mean of an empty tensor is undefined".into(),
            });
        }
        self.sum_all()?.scale(1.0 / self.elem_count() as f32)
    }

    // ---- shape -------------------------------------------------------------------------

    /// The same elements under another shape with the same element count (no copy).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::InvalidShape {
                op: "reshape",
                reason: format!(
                    "cannot view shape {} ({} elements) as {shape}",
                    self.shape(),
                    self.elem_count()
                ),
            });
        }
        let rec = record(&[self], || Op::Reshape(self.clone()));
        Ok(self.share_storage(shape, rec))
    }

    /// Flattens every dimension from `dim` on into one: `[b, c, h, w].flatten_from(1)` is
    /// `[b, c*h*w]`.
    pub fn flatten_from(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.index(self.rank(), "flatten_from")?;
        let mut dims = self.dims()[..dim].to_vec();
        dims.push(self.dims()[dim..].iter().product());
        self.reshape(dims)
    }

    /// Swaps two dimensions (negative ones count from the end; copies into the new
    /// layout).
    pub fn transpose(&self, d0: impl Dim, d1: impl Dim) -> Result<Tensor> {
        let d0 = d0.index(self.rank(), "transpose")?;
        let d1 = d1.index(self.rank(), "transpose")?;
        let mut dims = self.dims().to_vec();
        let mut strides = ringtrain_kernels::contiguous_strides(&dims);
        dims.swap(d0, d1);
        strides.swap(d0, d1);
        let layout = StridedLayout {
            shape: dims.clone(),
            strides,
            offset: 0,
        };
        let rec = record(&[self], || Op::Transpose(self.clone(), d0, d1));
        Ok(self.derived(self.gather(&layout)?, Shape::from(dims), rec))
    }

    /// Transpose of a matrix.
    pub fn t(&self) -> Result<Tensor> {
        self.shape().dims2("t")?;
        self.transpose(0, 1)
    }

    /// Repeats the tensor along dimensions of size 1 (and new leading ones) to `shape`.
    pub fn broadcast_as(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if self.shape().broadcast(&shape, "broadcast_as")? != shape {
            return Err(Error::ShapeMismatch {
                op: "broadcast_as",
                lhs: self.shape().clone(),
                rhs: shape,
                hint: " (the target must be the broadcast shape)",
            });
        }
        let layout = StridedLayout {
            strides: self.shape().broadcast_strides(&shape),
            shape: shape.dims().to_vec(),
            offset: 0,
        };
        let rec = record(&[self], || Op::BroadcastAs(self.clone()));
        Ok(self.derived(self.gather(&layout)?, shape, rec))
    }

    fn gather(&self, layout: &StridedLayout) -> Result<Storage> {
        let x = self.read();
        Ok(on_device!(self.device(), b => {
            let mut out = b.alloc(layout.elem_count())?;
            b.copy_strided(buf(b, &x)?, layout, &mut out)?;
            wrap(b, out)
        }))
    }

    /// Sums `self` down to `shape`, undoing a broadcast (the gradient of one).
    pub(crate) fn sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let lead = self.rank() - shape.rank();
        let dims: Vec<usize> = (0..self.rank())
            .filter(|&d| d < lead || (shape.dims()[d - lead] == 1 && self.dims()[d] != 1))
            .collect();
        self.sum_keepdims(&dims)?.reshape(shape.clone())
    }

    // ---- softmax and losses ------------------------------------------------------------

    fn rows_cols(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.dims().last() {
            Some(&cols) if cols > 0 && self.elem_count() > 0 => {
                Ok((self.elem_count() / cols, cols))
            }
            _ => Err(Error::InvalidShape {
                op,
                reason: format!(
                    "needs at least one row and one column, got shape {}",
                    self.shape()
                ),
            }),
        }
    }

    /// Log-softmax over the last dimension.
    pub fn log_softmax(&self) -> Result<Tensor> {
        let (rows, cols) = self.rows_cols("log_softmax")?;
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut y = b.alloc(rows * cols)?;
                b.log_softmax(buf(b, &x)?, &mut y, rows, cols)?;
                wrap(b, y)
            })
        };
        let rec = record(&[self], || Op::LogSoftmax(self.clone()));
        Ok(self.derived(storage, self.shape().clone(), rec))
    }

    /// Softmax over the last dimension.
    pub fn softmax(&self) -> Result<Tensor> {
        self.log_softmax()?.exp()
    }

    /// Mean cross-entropy of logits `[.., classes]` against one class label per row, fused
    /// with the softmax (numerically stable, one pass). Returns a scalar.
    pub fn cross_entropy(&self, labels: &[u32]) -> Result<Tensor> {
        let (rows, cols) = self.rows_cols("cross_entropy")?;
        if labels.len() != rows {
            return Err(Error::InvalidShape {
                op: "cross_entropy",
                reason: format!(
                    "{} labels for {rows} rows of logits (shape {})",
                    labels.len(),
                    self.shape()
                ),
            });
        }
        if let Some(i) = labels.iter().position(|&l| l as usize >= cols) {
            return Err(Error::InvalidArgument(format!(
                "cross_entropy: label {} at row {i} is out of range for {cols} classes",
                labels[i]
            )));
        }
        let (probs, loss) = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut probs = b.alloc(rows * cols)?;
                let mut loss = b.alloc(1)?;
                b.softmax_cross_entropy(buf(b, &x)?, labels, &mut probs, &mut loss, rows, cols)?;
                (wrap(b, probs), wrap(b, loss))
            })
        };
        let probs = Tensor::from_storage(probs, self.shape().clone(), self.device().clone(), None);
        let rec = record(&[self], || Op::CrossEntropy {
            logits: self.clone(),
            labels: Arc::from(labels),
            probs,
        });
        Ok(self.derived(loss, Shape::scalar(), rec))
    }

    /// Mean squared error against a target of the same shape.
    pub fn mse(&self, target: &Tensor) -> Result<Tensor> {
        if self.shape() != target.shape() {
            return Err(Error::ShapeMismatch {
                op: "mse",
                lhs: self.shape().clone(),
                rhs: target.shape().clone(),
                hint: " (prediction and target must have the same shape)",
            });
        }
        self.sub(target)?.sqr()?.mean_all()
    }

    /// Index of the largest value in each row of the last dimension (first on ties).
    pub fn argmax(&self) -> Result<Vec<u32>> {
        let (_, cols) = self.rows_cols("argmax")?;
        Ok(self
            .to_vec()?
            .chunks(cols)
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 {
                            (i, v)
                        } else {
                            best
                        }
                    })
                    .0 as u32
            })
            .collect())
    }
}
