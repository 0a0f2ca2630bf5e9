//! Forward ops. Each checks its operands, runs one backend kernel into a fresh buffer, and
//! records itself for backward when an operand tracks gradients.

use crate::backprop::Op;
use crate::device::{buf, on_device, wrap, Storage};
use crate::shape::{dim_indices, Dim};
use crate::{compute_precision, with_precision, Error, Precision, Result, Shape, Tensor};
use ringtrain_kernels::{Backend, BinaryLayout, BinaryOp, DType, GemmSpec, StridedLayout, UnaryOp};

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
        self.expect_dtype(DType::F32, "unary")?;
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
        self.expect_dtype(DType::F32, "affine")?;
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
        self.expect_dtype(DType::F32, name)?;
        rhs.expect_dtype(DType::F32, name)?;
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

    /// Matrix product over the last two dimensions, NumPy-style: `[m, k] x [k, n]`, and
    /// any number of batch dimensions in front, broadcast against each other (`[b, h, t,
    /// d] x [b, h, d, t]`, `[b, t, k] x [k, n]`, `[b, 1, m, k] x [h, k, n]`).
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_t(rhs, false, false)
    }

    /// Each value rounded to `precision` and back (a copy of the values for f32): what
    /// mixed precision does to the inputs of the products it does not run through a
    /// GEMM. Its gradient is the identity, as a cast's.
    pub fn round_to(&self, precision: Precision) -> Result<Tensor> {
        self.expect_dtype(DType::F32, "round_to")?;
        if !precision.is_reduced() {
            return Ok(self.clone());
        }
        let storage = {
            let x = self.read();
            on_device!(self.device(), b => {
                let mut y = b.alloc(self.elem_count())?;
                b.round_to(precision, buf(b, &x)?, &mut y)?;
                wrap(b, y)
            })
        };
        let rec = record(&[self], || Op::RoundTo(self.clone()));
        Ok(self.derived(storage, self.shape().clone(), rec))
    }

    /// A linear layer: `self W^T + bias` for `self` of shape `[rows, in]`, `weight` of
    /// shape `[out, in]` (PyTorch's layout) and an optional `bias` of shape `[out]`. Runs as
    /// one GEMM whose epilogue adds the bias on backends that fuse it (the GPU).
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_impl(weight, bias, false, false)
    }

    /// `relu(self W^T + bias)` in one GEMM whose epilogue adds the bias and applies the
    /// ReLU, on every backend: the same values as `linear(..)?.relu()` without the
    /// second pass over the output, and a backward that masks its gradient by the
    /// output. Without a bias the product and the ReLU run as two ops.
    pub fn linear_relu(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_impl(weight, bias, false, true)
    }

    /// `self W + bias` for `weight` stored `[in, out]` (GPT-2's `Conv1D` layout): the
    /// same fused GEMM as [`Tensor::linear`], reading the weight untransposed.
    pub fn linear_in_out(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.linear_impl(weight, bias, true, false)
    }

    fn linear_impl(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        in_out: bool,
        relu: bool,
    ) -> Result<Tensor> {
        if weight.quantization().is_some() {
            if let Some(y) = self.linear_int8(weight, bias, in_out, relu) {
                return y;
            }
            return self.linear_impl(&weight.dequantized()?, bias, in_out, relu);
        }
        let unfused = |y: Result<Tensor>| if relu { y?.relu() } else { y };
        let Some(bias) = bias else {
            return unfused(self.matmul_t(weight, false, !in_out));
        };
        if [self, weight, bias]
            .iter()
            .any(|t| t.dtype().half().is_some())
        {
            return widened(&[self, weight, bias], |t| {
                t[0].linear_impl(&t[1], Some(&t[2]), in_out, relu)
            });
        }
        same_device("linear", self, weight)?;
        same_device("linear", self, bias)?;
        for t in [self, weight, bias] {
            t.expect_dtype(DType::F32, "linear")?;
        }
        let (xd, wd) = (self.dims(), weight.dims());
        let (w_in, w_out) = match *wd {
            [a, b] if in_out => (a, b),
            [a, b] => (b, a),
            _ => (0, 0),
        };
        if xd.len() != 2 || wd.len() != 2 || xd[1] != w_in {
            return Err(Error::ShapeMismatch {
                op: "linear",
                lhs: self.shape().clone(),
                rhs: weight.shape().clone(),
                hint: if in_out {
                    " (inputs [rows, in] and weight [in, out])"
                } else {
                    " (inputs [rows, in] and weight [out, in])"
                },
            });
        }
        if bias.dims() != [w_out] {
            return Err(Error::ShapeMismatch {
                op: "linear",
                lhs: weight.shape().clone(),
                rhs: bias.shape().clone(),
                hint: " (a bias of one value per output)",
            });
        }
        if bias.shares_storage(self) || bias.shares_storage(weight) {
            // Locking one storage twice could wait behind a writer; such a model is
            // rare enough to take the unfused path.
            return unfused(self.matmul_t(weight, false, !in_out)?.add(bias));
        }
        let (m, k, n) = (xd[0], xd[1], w_out);
        let precision = compute_precision();
        let spec = GemmSpec::new(m, n, k, false, !in_out).with_precision(precision);
        let act = relu.then_some(UnaryOp::Relu);
        let storage = self.with_pair(weight, |x, w| {
            let b = bias.read();
            Ok(on_device!(self.device(), be => {
                let mut y = be.alloc(m * n)?;
                be.gemm_bias_act(&spec, buf(be, x)?, buf(be, w)?, buf(be, &b)?, act, &mut y)?;
                wrap(be, y)
            }))
        })?;
        let rec = record(&[self, weight, bias], || Op::Linear {
            x: self.clone(),
            weight: weight.clone(),
            bias: bias.clone(),
            in_out,
            relu,
            precision,
        });
        Ok(self.derived(storage, Shape::from((m, n)), rec))
    }

    /// A linear layer on an int8 weight through the backend's int8 product, when that
    /// applies: a weight stored `[out, in]`, f32 inputs `[rows, in]`, no gradient being
    /// recorded (a quantized weight is for inference; a recorded product widens it), an
    /// inner dimension the integer sums hold. `None` leaves it to the widening path,
    /// which also reports any shape error.
    fn linear_int8(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        in_out: bool,
        relu: bool,
    ) -> Option<Result<Tensor>> {
        let recording =
            crate::tensor::grad_enabled() && [self, weight].iter().any(|t| t.tracks_grad());
        let plain = |t: &Tensor| t.dtype() == DType::F32 && t.quantization().is_none();
        if in_out || recording || !plain(self) || !bias.is_none_or(plain) {
            return None;
        }
        if bias.is_some_and(|b| b.shares_storage(self)) {
            // Two read locks on one storage could wait behind a writer (as above).
            return None;
        }
        let &[m, k] = self.dims() else { return None };
        let &[n, wk] = weight.dims() else { return None };
        let fits = wk == k
            && k <= ringtrain_kernels::Q8_MAX_K
            && bias.is_none_or(|b| b.dims() == [n])
            && self.device().same_kind(weight.device())
            && bias.is_none_or(|b| self.device().same_kind(b.device()));
        if !fits {
            return None;
        }
        let spec = ringtrain_kernels::Q8Spec { m, n, k, relu };
        let x = self.read();
        let b = bias.map(|b| b.read());
        let storage = weight.with_int8(|values, scales, _, _| {
            Ok(on_device!(self.device(), be => {
                let mut y = be.alloc(m * n)?;
                let bias = match &b {
                    Some(b) => Some(buf(be, b)?),
                    None => None,
                };
                be.linear_q8(
                    &spec,
                    buf(be, &x)?,
                    crate::quantized::inner(be, values)?,
                    crate::quantized::inner(be, scales)?,
                    bias,
                    &mut y,
                )?;
                wrap(be, y)
            }))
        })?;
        Some(
            storage
                .map(|s| Tensor::from_storage(s, Shape::from((m, n)), self.device().clone(), None)),
        )
    }

    /// `op(self) x op(rhs)` where `op` transposes the last two dimensions when asked,
    /// without copying: the GEMM reads the operand transposed (`q.matmul_t(&k, false,
    /// true)` is `q k^T`). Batch dimensions broadcast as in [`Tensor::matmul`].
    ///
    /// Either operand may be an f16 or bf16 tensor: it is widened to f32 for the product
    /// (exactly; the copy lives for the product only), and when both are in one 16-bit
    /// format and no [`crate::with_precision`] says otherwise the product runs in that
    /// precision (rounding such values changes nothing, and a CPU with AVX512-BF16 then
    /// runs its bf16 kernel). The result is f32.
    pub fn matmul_t(&self, rhs: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        same_device("matmul", self, rhs)?;
        if self.quantization().is_some() || rhs.quantization().is_some() {
            return self
                .dequantized()?
                .matmul_t(&rhs.dequantized()?, trans_a, trans_b);
        }
        if self.dtype().half().is_some() || rhs.dtype().half().is_some() {
            return widened(&[self, rhs], |t| t[0].matmul_t(&t[1], trans_a, trans_b));
        }
        self.expect_dtype(DType::F32, "matmul")?;
        rhs.expect_dtype(DType::F32, "matmul")?;
        let (ra, rb) = (self.rank(), rhs.rank());
        if ra < 2 || rb < 2 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
                hint: " (both operands need at least two dimensions)",
            });
        }
        if ra <= 3 && ra == rb && (ra == 2 || self.dims()[0] == rhs.dims()[0]) {
            return self.matmul_core(rhs, trans_a, trans_b);
        }
        let (ad, bd) = (self.dims(), rhs.dims());
        let (m, k) = if trans_a {
            (ad[ra - 1], ad[ra - 2])
        } else {
            (ad[ra - 2], ad[ra - 1])
        };
        let n = if trans_b { bd[rb - 2] } else { bd[rb - 1] };
        if rb == 2 && !trans_a {
            // One matrix applied to a batch of rows: fold the batch into the rows.
            let rows = ad[..ra - 1].iter().product::<usize>();
            let flat = self.reshape((rows, k))?.matmul_core(rhs, false, trans_b)?;
            let mut out = ad[..ra - 1].to_vec();
            out.push(n);
            return flat.reshape(out);
        }
        let batch_a = Shape::from(ad[..ra - 2].to_vec());
        let batch_b = Shape::from(bd[..rb - 2].to_vec());
        let batch = batch_a
            .broadcast(&batch_b, "matmul")
            .map_err(|_| Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
                hint: " (their batch dimensions cannot be broadcast together)",
            })?;
        let count = batch.elem_count();
        let expand = |t: &Tensor, own: &Shape| -> Result<Tensor> {
            let (rows, cols) = (t.dims()[t.rank() - 2], t.dims()[t.rank() - 1]);
            let t = if own == &batch {
                t.clone()
            } else {
                let mut full = batch.dims().to_vec();
                full.extend([rows, cols]);
                t.broadcast_as(full)?
            };
            t.reshape((count, rows, cols))
        };
        let a3 = expand(self, &batch_a)?;
        let b3 = expand(rhs, &batch_b)?;
        let c = a3.matmul_core(&b3, trans_a, trans_b)?;
        let mut out = batch.dims().to_vec();
        out.extend([m, n]);
        c.reshape(out)
    }

    /// The GEMM itself: two 2-d tensors, or two 3-d ones with one batch size.
    fn matmul_core(&self, rhs: &Tensor, trans_a: bool, trans_b: bool) -> Result<Tensor> {
        let mismatch = |hint| Error::ShapeMismatch {
            op: "matmul",
            lhs: self.shape().clone(),
            rhs: rhs.shape().clone(),
            hint,
        };
        let (ad, bd) = (self.dims(), rhs.dims());
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
        let precision = compute_precision();
        let spec = GemmSpec {
            batch,
            stride_a: m * k,
            stride_b: k * n,
            precision,
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
            precision,
        });
        Ok(self.derived(storage, shape, rec))
    }

    // ---- reductions --------------------------------------------------------------------

    /// Sums over `dims` (negative ones count from the end), keeping each as a dimension
    /// of size 1.
    pub fn sum_keepdims<D: Dim>(&self, dims: &[D]) -> Result<Tensor> {
        self.expect_dtype(DType::F32, "sum")?;
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
        let storage = self.copy_view(&layout)?;
        Ok(self.typed(storage, Shape::from(dims), self.dtype(), self.0.bound, rec))
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
        let storage = self.copy_view(&layout)?;
        Ok(self.typed(storage, shape, self.dtype(), self.0.bound, rec))
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

    /// Log-softmax over `dim` (negative counts from the end; `-1` is the last, which runs
    /// as one kernel, any other moves `dim` last and back).
    pub fn log_softmax(&self, dim: impl Dim) -> Result<Tensor> {
        let dim = dim.index(self.rank(), "log_softmax")?;
        if dim + 1 == self.rank() {
            return self.log_softmax_last();
        }
        let last = self.rank() - 1;
        self.transpose(dim, last)?
            .log_softmax_last()?
            .transpose(dim, last)
    }

    /// Softmax over `dim` (negative counts from the end).
    pub fn softmax(&self, dim: impl Dim) -> Result<Tensor> {
        self.log_softmax(dim)?.exp()
    }

    fn log_softmax_last(&self) -> Result<Tensor> {
        self.expect_dtype(DType::F32, "log_softmax")?;
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

    /// Mean cross-entropy of logits `[.., classes]` against one class label per row, fused
    /// with the softmax (numerically stable, one pass). Returns a scalar. The labels are
    /// host data (`&[u32]`, uploaded) or a u32 tensor already on the device, of any shape
    /// with one label per row.
    pub fn cross_entropy(&self, labels: impl Labels) -> Result<Tensor> {
        let labels = labels.into_labels(self.device())?;
        self.cross_entropy_tensor(&labels)
    }

    fn cross_entropy_tensor(&self, labels: &Tensor) -> Result<Tensor> {
        const OP: &str = "cross_entropy";
        self.expect_dtype(DType::F32, OP)?;
        same_device(OP, self, labels)?;
        labels.expect_dtype(DType::U32, OP)?;
        let (rows, cols) = self.rows_cols(OP)?;
        if labels.elem_count() != rows {
            return Err(Error::InvalidShape {
                op: OP,
                reason: format!(
                    "{} labels for {rows} rows of logits (shape {})",
                    labels.elem_count(),
                    self.shape()
                ),
            });
        }
        if let Some((row, label)) = labels.first_out_of_range(cols)? {
            return Err(Error::InvalidArgument(format!(
                "cross_entropy: label {label} at row {row} is out of range for {cols} classes"
            )));
        }
        let (probs, loss) = self.with_pair(labels, |x, l| {
            Ok(on_device!(self.device(), b => {
                let mut probs = b.alloc(rows * cols)?;
                let mut loss = b.alloc(1)?;
                b.softmax_cross_entropy(buf(b, x)?, buf(b, l)?, &mut probs, &mut loss, rows, cols)?;
                (wrap(b, probs), wrap(b, loss))
            }))
        })?;
        let probs = Tensor::from_storage(probs, self.shape().clone(), self.device().clone(), None);
        let rec = record(&[self], || Op::CrossEntropy {
            logits: self.clone(),
            labels: labels.clone(),
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

/// Class labels for [`Tensor::cross_entropy`]: host slices (uploaded) or a u32 tensor.
pub trait Labels {
    fn into_labels(self, device: &crate::Device) -> Result<Tensor>;
}

impl Labels for &Tensor {
    fn into_labels(self, _: &crate::Device) -> Result<Tensor> {
        Ok(self.clone())
    }
}

impl Labels for &[u32] {
    fn into_labels(self, device: &crate::Device) -> Result<Tensor> {
        Tensor::from_slice_u32(self, self.len(), device)
    }
}

impl Labels for &Vec<u32> {
    fn into_labels(self, device: &crate::Device) -> Result<Tensor> {
        self.as_slice().into_labels(device)
    }
}

impl<const N: usize> Labels for &[u32; N] {
    fn into_labels(self, device: &crate::Device) -> Result<Tensor> {
        self.as_slice().into_labels(device)
    }
}

/// Runs the product `f` on `operands` with each f16 or bf16 one widened to f32, in the
/// operands' own 16-bit precision when all are in one format and the thread asks for
/// f32 (rounding values already in that format changes nothing).
fn widened(operands: &[&Tensor], f: impl FnOnce(&[Tensor]) -> Result<Tensor>) -> Result<Tensor> {
    let formats: Vec<_> = operands.iter().map(|t| t.dtype().half()).collect();
    let wide = operands
        .iter()
        .map(|t| t.to_dtype(DType::F32))
        .collect::<Result<Vec<_>>>()?;
    let shared = formats[0].filter(|p| formats.iter().all(|f| *f == Some(*p)));
    match shared {
        Some(p) if compute_precision() == Precision::F32 => with_precision(p, || f(&wide)),
        _ => f(&wide),
    }
}
