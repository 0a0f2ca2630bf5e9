//! The contract every device implements. Ops take explicit element counts and layouts and
//! write into caller-provided outputs, so the runtime decides all allocation and a GPU
//! backend can enqueue each op without a round trip to the host.

use crate::{
    validate, AttentionSpec, BinaryLayout, CompareOp, DType, GatherSpec, Int8Rows, Precision,
    Q8Spec, Result, SelectLayout, StridedLayout, Window2d,
};

/// Elementwise functions with a closed-form derivative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqr,
    Sqrt,
    Relu,
    /// GELU, tanh approximation (GPT-2; PyTorch's `approximate="tanh"`).
    Gelu,
    Tanh,
    Sigmoid,
    /// 1 where `x` is infinite or NaN, else 0: the mask behind finiteness checks. Its
    /// derivative is 0 (it is constant wherever `x` is finite).
    NonFinite,
}

/// Elementwise functions of two operands, with broadcasting described by a [`BinaryLayout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// `C = alpha * op(A) * op(B) + beta * C` for `batch` independent products, all row-major.
///
/// `op(A)` is `m x k`: A is stored `m x k`, or `k x m` when `trans_a`. Likewise `op(B)` is
/// `k x n`, stored `k x n` or `n x k`. C is `m x n`, contiguous. Consecutive products in a
/// batch start `stride_a`/`stride_b`/`m*n` elements apart; a stride of 0 reuses one
/// operand for the whole batch. With `beta == 0`, C is written without being read.
/// `precision` is the format A's and B's values enter the product in (rounded to it,
/// the products summed in f32; see [`Precision`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GemmSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub precision: Precision,
}

impl GemmSpec {
    /// A single, plain `C = op(A) op(B)`.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Self {
        Self {
            m,
            n,
            k,
            trans_a,
            trans_b,
            alpha: 1.0,
            beta: 0.0,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            precision: Precision::F32,
        }
    }

    /// The same product with its inputs in `precision`.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// Elements of A, B and C the spec reads or writes (`usize::MAX` where that
    /// overflows, which no buffer matches).
    pub fn buffer_lens(&self) -> (usize, usize, usize) {
        let span = |stride: usize, one: Option<usize>| {
            if self.batch == 0 {
                return 0;
            }
            one.and_then(|one| (self.batch - 1).checked_mul(stride)?.checked_add(one))
                .unwrap_or(usize::MAX)
        };
        (
            span(self.stride_a, self.m.checked_mul(self.k)),
            span(self.stride_b, self.k.checked_mul(self.n)),
            crate::saturating_product(&[self.batch, self.m, self.n]),
        )
    }
}

/// Hyper-parameters of one SGD step (PyTorch semantics: weight decay is added to the
/// gradient, momentum buffer `v = momentum * v + g`, Nesterov optional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdParams {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

/// Hyper-parameters of one AdamW step (decoupled weight decay, Loshchilov & Hutter).
/// `step` counts from 1 and drives the bias corrections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u64,
}

impl AdamWParams {
    /// The update's per-step constants with both bias corrections folded in, computed in
    /// f64 once per step: `(decay, step_size, inv_sqrt_bc2)`, for
    /// `p = p * decay - step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps)`.
    pub fn folded(&self) -> (f32, f32, f32) {
        let t = self.step as f64;
        let bc1 = 1.0 - (self.beta1 as f64).powf(t);
        let bc2 = 1.0 - (self.beta2 as f64).powf(t);
        let step_size = (self.lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        (1.0 - self.lr * self.weight_decay, step_size, inv_sqrt_bc2)
    }
}

/// Device memory and the primitive ops that training needs.
///
/// Every op validates buffer lengths against its arguments and returns an error rather
/// than reading or writing out of bounds. Outputs are fully overwritten unless the op says
/// otherwise (GEMM with `beta != 0`, the optimizer steps, which update in place).
pub trait Backend: Clone + Send + Sync + 'static {
    type Buffer: Send + Sync + 'static;

    /// A human-readable description, e.g. `cpu (avx512, 2 threads)`.
    fn name(&self) -> String;

    fn zeros(&self, len: usize) -> Result<Self::Buffer>;

    /// A buffer for an op to overwrite: its contents are unspecified (a GPU backend hands
    /// out a recycled buffer without clearing it).
    fn alloc(&self, len: usize) -> Result<Self::Buffer> {
        self.zeros(len)
    }

    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;
    fn download(&self, buf: &Self::Buffer) -> Result<Vec<f32>>;

    /// Several buffers' values, as [`Backend::download`] gives each. A GPU reads them
    /// back with one synchronization where separate downloads wait once each.
    fn download_many(&self, bufs: &[&Self::Buffer]) -> Result<Vec<Vec<f32>>> {
        bufs.iter().map(|b| self.download(b)).collect()
    }

    /// A buffer of u32 words (indices, labels, masks): the same memory, other bits.
    fn upload_u32(&self, data: &[u32]) -> Result<Self::Buffer> {
        self.upload(bytemuck::cast_slice(data))
    }

    fn download_u32(&self, buf: &Self::Buffer) -> Result<Vec<u32>> {
        let words = self.download(buf)?;
        Ok(words.into_iter().map(f32::to_bits).collect())
    }
    fn len(&self, buf: &Self::Buffer) -> usize;
    fn fill(&self, buf: &mut Self::Buffer, value: f32) -> Result<()>;

    fn gemm(
        &self,
        spec: &GemmSpec,
        a: &Self::Buffer,
        b: &Self::Buffer,
        c: &mut Self::Buffer,
    ) -> Result<()>;

    /// `C = act(alpha * op(A) op(B) + beta * C + bias)`, `bias` holding `n` elements added
    /// to every row: a linear layer's forward pass. Backends that can fuse the epilogue
    /// into the GEMM (the GPU) override this; the default composes three ops.
    fn gemm_bias_act(
        &self,
        spec: &GemmSpec,
        a: &Self::Buffer,
        b: &Self::Buffer,
        bias: &Self::Buffer,
        act: Option<UnaryOp>,
        c: &mut Self::Buffer,
    ) -> Result<()> {
        validate::bias(spec, self.len(bias))?;
        self.gemm(spec, a, b, c)?;
        let rows = spec.batch * spec.m;
        let layout = BinaryLayout {
            shape: vec![rows, spec.n],
            lhs_strides: vec![spec.n, 1],
            rhs_strides: vec![0, 1],
        };
        let mut biased = self.alloc(rows * spec.n)?;
        self.binary(BinaryOp::Add, &layout, c, bias, &mut biased)?;
        match act {
            Some(op) => self.unary(op, &biased, c),
            None => {
                *c = biased;
                Ok(())
            }
        }
    }

    /// `y = f(x)`.
    fn unary(&self, op: UnaryOp, x: &Self::Buffer, y: &mut Self::Buffer) -> Result<()>;

    /// Writes the number of infinite and NaN elements of `x` into the one-element `out`
    /// (exact up to 2^24). The default masks and sums; a backend may do it in one pass.
    fn count_nonfinite(&self, x: &Self::Buffer, out: &mut Self::Buffer) -> Result<()> {
        let len = self.len(x);
        crate::error::check_len("count_nonfinite", "out", 1, self.len(out))?;
        let mut mask = self.alloc(len)?;
        self.unary(UnaryOp::NonFinite, x, &mut mask)?;
        self.sum_axis(&mask, out, 1, len, 1)
    }

    /// `dx = dy * f'(x)`; `y = f(x)` is passed in so ops whose derivative is cheapest in
    /// terms of the output (exp, tanh, sigmoid, sqrt) use it.
    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Self::Buffer,
        y: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// `y = x * mul + add`.
    fn affine(&self, x: &Self::Buffer, y: &mut Self::Buffer, mul: f32, add: f32) -> Result<()>;

    /// `out = lhs op rhs` over `layout.shape`, reading operands through their strides.
    fn binary(
        &self,
        op: BinaryOp,
        layout: &BinaryLayout,
        lhs: &Self::Buffer,
        rhs: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// Gathers a strided view (transpose, broadcast) into a contiguous buffer.
    fn copy_strided(
        &self,
        src: &Self::Buffer,
        layout: &StridedLayout,
        dst: &mut Self::Buffer,
    ) -> Result<()>;

    /// Sums the middle axis of `x` viewed as `[outer, axis, inner]` into `[outer, inner]`.
    fn sum_axis(
        &self,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()>;

    /// Row-wise log-softmax of `[rows, cols]`.
    fn log_softmax(
        &self,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<()>;

    /// `dx = dy - exp(y) * rowsum(dy)`, where `y` is the log-softmax output.
    fn log_softmax_backward(
        &self,
        y: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<()>;

    /// Mean cross-entropy of `[rows, cols]` logits against class `labels` (a u32 buffer,
    /// one per row, each `< cols`: a label out of range makes the loss NaN where it cannot
    /// be checked without a readback). Writes the loss into `loss` (one element) and the
    /// row softmax into `probs`, which the backward pass reuses.
    fn softmax_cross_entropy(
        &self,
        logits: &Self::Buffer,
        labels: &Self::Buffer,
        probs: &mut Self::Buffer,
        loss: &mut Self::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<()>;

    /// `dlogits = (probs - onehot(labels)) * dloss / rows`; `dloss` holds one element.
    fn softmax_cross_entropy_backward(
        &self,
        probs: &Self::Buffer,
        labels: &Self::Buffer,
        dloss: &Self::Buffer,
        dlogits: &mut Self::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<()>;

    /// Layer norm of each row of `[rows, cols]`: `y = (x - mean) * rstd * gamma + beta`
    /// with `rstd = 1 / sqrt(var + eps)` (biased variance). `stats` receives each row's
    /// `(mean, rstd)`, `2 * rows` values, for the backward pass.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        beta: &Self::Buffer,
        y: &mut Self::Buffer,
        stats: &mut Self::Buffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()>;

    /// The gradients of [`Backend::layer_norm`] from its input, `gamma`, `stats` and
    /// `dy`: `dx`, and `dgamma`, `dbeta` summed over the rows in a fixed order.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm_backward(
        &self,
        x: &Self::Buffer,
        gamma: &Self::Buffer,
        stats: &Self::Buffer,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
        dgamma: &mut Self::Buffer,
        dbeta: &mut Self::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<()>;

    /// Gathers along an axis by a u32 index buffer (see [`GatherSpec`]): embedding
    /// lookups, `index_select`, `gather`, the max over a dimension.
    fn gather(
        &self,
        spec: &GatherSpec,
        x: &Self::Buffer,
        idx: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// The adjoint of [`Backend::gather`]: `dx` (overwritten, `[outer, n, inner]`) receives
    /// at each index the sum of the `dy` entries gathered from there. Summed in a fixed
    /// order (increasing `j`), with no atomics, so results are the same on every run.
    fn scatter_add(
        &self,
        spec: &GatherSpec,
        dy: &Self::Buffer,
        idx: &Self::Buffer,
        dx: &mut Self::Buffer,
    ) -> Result<()>;

    /// Writes the contiguous `src` into the view `layout` of `dst`, leaving the rest of
    /// `dst` as it was (concatenation, the gradient of a slice). The view must not write
    /// an element twice.
    fn copy_into(
        &self,
        src: &Self::Buffer,
        dst: &mut Self::Buffer,
        layout: &StridedLayout,
    ) -> Result<()>;

    /// `out = cond ? a : b` elementwise, with broadcasting; works on the words' bits, so
    /// any dtype.
    fn select(
        &self,
        layout: &SelectLayout,
        cond: &Self::Buffer,
        a: &Self::Buffer,
        b: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// `out = lhs op rhs` as a u32 mask (1 true, 0 false), operands of `dtype`.
    fn compare(
        &self,
        op: CompareOp,
        dtype: DType,
        layout: &BinaryLayout,
        lhs: &Self::Buffer,
        rhs: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// Keeps the lower (`upper == false`: `col - row <= diagonal`) or upper (`col - row >=
    /// diagonal`) triangle of each `[rows, cols]` matrix of `x` and zeroes the rest.
    fn triangle(
        &self,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
        rows: usize,
        cols: usize,
        diagonal: i64,
        upper: bool,
    ) -> Result<()>;

    /// `out[i] = start + i * step` as u32 (wrapping).
    fn arange(&self, out: &mut Self::Buffer, start: u32, step: u32) -> Result<()>;

    /// Converts each element between dtypes: u32 to f32 by value, f32 to u32 truncating
    /// toward zero (negative and NaN to 0, saturating above), f32 to f16 or bf16 rounding
    /// to nearest even (packed two to a word: `out` holds `n.div_ceil(2)` words), and
    /// back exactly. `index::cast` says which casts exist and checks the lengths.
    fn cast(&self, x: &Self::Buffer, from: DType, to: DType, out: &mut Self::Buffer) -> Result<()>;

    /// Int8 weights in this backend's layout for [`Backend::linear_q8`]: the packed
    /// values and the `n` scales.
    fn pack_q8(&self, w: &Int8Rows) -> Result<(Self::Buffer, Self::Buffer)>;

    /// The int8 values of a weight [`Backend::pack_q8`] packed, `[n, k]` row-major.
    fn unpack_q8(&self, packed: &Self::Buffer, n: usize, k: usize) -> Result<Vec<i8>>;

    /// A linear layer over int8 weights (see [`Q8Spec`]): `x` `[m, k]` f32, the weight
    /// as [`Backend::pack_q8`] packed it, an optional bias of `n` values, `out` `[m, n]`.
    /// The CPU quantizes each row of `x` to int8 on the fly (integer dot products); the
    /// GPU dequantizes the weights in its loads and multiplies in f32.
    #[allow(clippy::too_many_arguments)]
    fn linear_q8(
        &self,
        spec: &Q8Spec,
        x: &Self::Buffer,
        packed: &Self::Buffer,
        scales: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// `out[n, k] = q[n, k] * scale[n]`: the f32 values of a packed int8 weight.
    fn dequantize_q8(
        &self,
        n: usize,
        k: usize,
        packed: &Self::Buffer,
        scales: &Self::Buffer,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// `y[i] = precision.round(x[i])`: each value rounded to a 16-bit format and back (a
    /// copy for f32), as mixed precision treats the inputs of the products it does not
    /// run through [`Backend::gemm`] (convolutions, attention).
    fn round_to(&self, precision: Precision, x: &Self::Buffer, y: &mut Self::Buffer) -> Result<()>;

    /// Index (u32) of the first largest value along the middle axis of `[outer, axis,
    /// inner]`; a NaN counts as largest.
    fn argmax_axis(
        &self,
        x: &Self::Buffer,
        out: &mut Self::Buffer,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()>;

    /// Fused scaled dot-product attention (see [`AttentionSpec`]): `out` and the row
    /// log-sum-exp `lse`, without materialising the `[tq, tk]` scores of a head.
    fn attention(
        &self,
        spec: &AttentionSpec,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        out: &mut Self::Buffer,
        lse: &mut Self::Buffer,
    ) -> Result<()>;

    /// Gradients of [`Backend::attention`] from its inputs, output, `lse` and `dout`,
    /// recomputing the weights block by block.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        spec: &AttentionSpec,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        out: &Self::Buffer,
        lse: &Self::Buffer,
        dout: &Self::Buffer,
        dq: &mut Self::Buffer,
        dk: &mut Self::Buffer,
        dv: &mut Self::Buffer,
    ) -> Result<()>;

    /// Unfolds each image's windows into columns: `cols` is `batch` matrices of
    /// `patch_len` rows (channel, kernel row, kernel column) by `out_h * out_w` columns,
    /// zero where a window covers padding. A convolution is then one GEMM per image.
    fn im2col(&self, x: &Self::Buffer, cols: &mut Self::Buffer, g: &Window2d) -> Result<()>;

    /// The adjoint of [`Backend::im2col`]: each input element receives the sum of the
    /// column entries it was copied to (a convolution's input gradient).
    fn col2im(&self, cols: &Self::Buffer, x: &mut Self::Buffer, g: &Window2d) -> Result<()>;

    /// A convolution (cross-correlation): `y = weight * x + bias`, then a ReLU when `relu`,
    /// `x` holding `g`'s `[batch, channels, height, width]`, `weight` `[out_channels,
    /// patch_len]`, `bias` `[out_channels]`, `y` `[batch, out_channels, out_h, out_w]`.
    /// The default unfolds the whole batch with [`Backend::im2col`] and runs one GEMM per
    /// image; the CPU overrides it to unfold and multiply image by image while the
    /// columns are in cache, adding the bias and clamping there too.
    #[allow(clippy::too_many_arguments)]
    fn conv2d(
        &self,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        bias: Option<&Self::Buffer>,
        relu: bool,
        y: &mut Self::Buffer,
        g: &Window2d,
        out_channels: usize,
    ) -> Result<()> {
        if relu {
            let mut pre = self.alloc(self.len(y))?;
            self.conv2d(x, weight, bias, false, &mut pre, g, out_channels)?;
            return self.unary(UnaryOp::Relu, &pre, y);
        }
        let lens = (self.len(x), self.len(weight), self.len(y));
        validate::conv2d(g, out_channels, lens, bias.map(|b| self.len(b)))?;
        let (k, area) = (g.patch_len(), g.out_h() * g.out_w());
        let mut cols = self.alloc(g.cols_len())?;
        self.im2col(x, &mut cols, g)?;
        let spec = GemmSpec {
            batch: g.batch,
            stride_a: 0,
            stride_b: k * area,
            precision: g.precision,
            ..GemmSpec::new(out_channels, area, k, false, false)
        };
        let Some(bias) = bias else {
            return self.gemm(&spec, weight, &cols, y);
        };
        let mut product = self.alloc(self.len(y))?;
        self.gemm(&spec, weight, &cols, &mut product)?;
        let layout = BinaryLayout {
            shape: vec![g.batch, out_channels, area],
            lhs_strides: vec![out_channels * area, area, 1],
            rhs_strides: vec![0, 1, 0],
        };
        self.binary(BinaryOp::Add, &layout, &product, bias, y)
    }

    /// The gradients of [`Backend::conv2d`] for the output gradient `dy`: `dweight`
    /// (summed over the batch), and `dx` and `dbias` where asked for; `relu_out` is the
    /// output of a convolution run with `relu`, whose zeros mask `dy`. The default
    /// unfolds `x` again (columns are not kept from the forward pass: they are the
    /// largest tensor of a convolutional network), then one GEMM per image for each
    /// gradient.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(
        &self,
        x: &Self::Buffer,
        weight: &Self::Buffer,
        dy: &Self::Buffer,
        relu_out: Option<&Self::Buffer>,
        g: &Window2d,
        out_channels: usize,
        dx: Option<&mut Self::Buffer>,
        dweight: &mut Self::Buffer,
        dbias: Option<&mut Self::Buffer>,
    ) -> Result<()> {
        if let Some(y) = relu_out {
            crate::error::check_len("conv2d_backward", "relu_out", self.len(dy), self.len(y))?;
            let mut masked = self.alloc(self.len(dy))?;
            // ReLU's gradient from its output: y > 0 exactly where its input was.
            self.unary_backward(UnaryOp::Relu, y, y, dy, &mut masked)?;
            return self.conv2d_backward(
                x,
                weight,
                &masked,
                None,
                g,
                out_channels,
                dx,
                dweight,
                dbias,
            );
        }
        let lens = [x, weight, dy].map(|b| self.len(b));
        validate::conv2d_backward(
            g,
            out_channels,
            [lens[0], lens[1], lens[2], self.len(dweight)],
            dx.as_ref().map(|b| self.len(b)),
            dbias.as_ref().map(|b| self.len(b)),
        )?;
        let (batch, k, area) = (g.batch, g.patch_len(), g.out_h() * g.out_w());
        let mut cols = self.alloc(g.cols_len())?;
        self.im2col(x, &mut cols, g)?;
        let per_image_spec = GemmSpec {
            batch,
            stride_a: out_channels * area,
            stride_b: k * area,
            precision: g.precision,
            ..GemmSpec::new(out_channels, k, area, false, true)
        };
        let mut per_image = self.alloc(batch * out_channels * k)?;
        self.gemm(&per_image_spec, dy, &cols, &mut per_image)?;
        self.sum_axis(&per_image, dweight, 1, batch, out_channels * k)?;
        if let Some(dbias) = dbias {
            let mut per_channel = self.alloc(batch * out_channels)?;
            self.sum_axis(dy, &mut per_channel, batch * out_channels, area, 1)?;
            self.sum_axis(&per_channel, dbias, 1, batch, out_channels)?;
        }
        if let Some(dx) = dx {
            let spec = GemmSpec {
                batch,
                stride_a: 0,
                stride_b: out_channels * area,
                precision: g.precision,
                ..GemmSpec::new(k, area, out_channels, true, false)
            };
            self.gemm(&spec, weight, dy, &mut cols)?;
            self.col2im(&cols, dx, g)?;
        }
        Ok(())
    }

    /// Max over each window (padding never wins); `argmax` receives the position of the
    /// first maximum within its window, `kernel_row * kernel_w + kernel_col`, as f32.
    fn max_pool2d(
        &self,
        x: &Self::Buffer,
        y: &mut Self::Buffer,
        argmax: &mut Self::Buffer,
        g: &Window2d,
    ) -> Result<()>;

    /// Routes each window's gradient to the input element that was its maximum.
    fn max_pool2d_backward(
        &self,
        dy: &Self::Buffer,
        argmax: &Self::Buffer,
        dx: &mut Self::Buffer,
        g: &Window2d,
    ) -> Result<()>;

    /// Mean over each window, padding counted as zeros (PyTorch's default
    /// `count_include_pad=True`).
    fn avg_pool2d(&self, x: &Self::Buffer, y: &mut Self::Buffer, g: &Window2d) -> Result<()>;

    fn avg_pool2d_backward(
        &self,
        dy: &Self::Buffer,
        dx: &mut Self::Buffer,
        g: &Window2d,
    ) -> Result<()>;

    /// Fused SGD update of `param` in place; `momentum` is required iff `p.momentum != 0`.
    fn sgd_step(
        &self,
        p: &SgdParams,
        param: &mut Self::Buffer,
        grad: &Self::Buffer,
        momentum: Option<&mut Self::Buffer>,
    ) -> Result<()>;

    /// Fused AdamW update of `param` and its moment estimates `m`, `v`, in place.
    fn adamw_step(
        &self,
        p: &AdamWParams,
        param: &mut Self::Buffer,
        grad: &Self::Buffer,
        m: &mut Self::Buffer,
        v: &mut Self::Buffer,
    ) -> Result<()>;
}
