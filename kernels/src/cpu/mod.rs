//! The CPU backend: explicit FMA/SIMD kernels (AVX-512, AVX2+FMA, NEON, portable) picked
//! at run time, multi-threaded on rayon's pool for large shapes.

mod attention;
mod awake;
mod conv;
mod elementwise;
pub mod gemm;
mod half;
mod huge_pages;
mod index;
mod isa;
mod lanes;
pub mod math;
mod max_pool_2x2;
mod norm;
mod optim;
mod pool;
pub mod q8;
mod reduce;
mod round;
mod softmax;
mod window;

pub use awake::with_awake_workers;
pub use elementwise::PARALLEL_MIN_ELEMENTS;
pub use isa::{Isa, Simd};
pub use pool::{recycle, release_pooled, MIN_POOLED};

use crate::{trace, validate};
use crate::{
    AdamWParams, AttentionSpec, Backend, BinaryLayout, BinaryOp, CompareOp, DType, GatherSpec,
    GemmSpec, Int8Rows, KernelError, Precision, Q8Spec, Result, SelectLayout, SgdParams,
    StridedLayout, UnaryOp, Window2d,
};
use gemm::MatRef;
use index::words;

/// Runs every op on this CPU with the kernels of one instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuBackend {
    simd: Simd,
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// The best instruction set of this CPU (see [`Simd::detect`]).
    pub fn new() -> Self {
        Self {
            simd: Simd::detect(),
        }
    }

    pub fn with_simd(simd: Simd) -> Self {
        Self { simd }
    }

    pub fn simd(&self) -> Simd {
        self.simd
    }
}

/// Room for `len` floats of host memory (on huge pages when large: `huge_pages`), or
/// an error that says so.
fn reserve(len: usize) -> Result<Vec<f32>> {
    huge_pages::reserve(len)
        .ok_or_else(|| KernelError::Device(format!("cannot allocate {len} floats of host memory")))
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;

    fn name(&self) -> String {
        format!(
            "cpu ({}, {} threads)",
            self.simd,
            rayon::current_num_threads()
        )
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        if let Some(mut buf) = pool::take(len) {
            buf.fill(0.0);
            return Ok(buf);
        }
        let mut buf = reserve(len)?;
        buf.resize(len, 0.0);
        Ok(buf)
    }

    /// A recycled buffer of this length when one is idle (old contents, no page faults),
    /// else a fresh zeroed one.
    fn alloc(&self, len: usize) -> Result<Vec<f32>> {
        match pool::take(len) {
            Some(buf) => Ok(buf),
            None => self.zeros(len),
        }
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        match pool::take(data.len()) {
            Some(mut buf) => {
                buf.copy_from_slice(data);
                Ok(buf)
            }
            None => {
                let mut buf = reserve(data.len())?;
                buf.extend_from_slice(data);
                Ok(buf)
            }
        }
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn fill(&self, buf: &mut Vec<f32>, value: f32) -> Result<()> {
        buf.fill(value);
        Ok(())
    }

    fn gemm(&self, spec: &GemmSpec, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>) -> Result<()> {
        validate::gemm(spec, a.len(), b.len(), c.len())?;
        let _span = trace::span("cpu", "batched gemm").arg("batch", || spec.batch);
        let (m, n, k) = (spec.m, spec.n, spec.k);
        for_each_product(spec, c, |i, c| {
            let a = MatRef::row_major(&a[i * spec.stride_a..], m, k, spec.trans_a);
            let b = MatRef::row_major(&b[i * spec.stride_b..], k, n, spec.trans_b);
            let (alpha, beta, none) = (spec.alpha, spec.beta, gemm::Epilogue::default());
            gemm::gemm_mixed(
                self.simd,
                spec.precision,
                m,
                n,
                k,
                alpha,
                a,
                b,
                beta,
                c,
                n,
                none,
            )
        })
    }

    /// The bias and a ReLU run in the micro-kernel's epilogue, on the last slice's sums
    /// (no pass of their own); another activation is one pass after.
    fn gemm_bias_act(
        &self,
        spec: &GemmSpec,
        a: &Vec<f32>,
        b: &Vec<f32>,
        bias: &Vec<f32>,
        act: Option<UnaryOp>,
        c: &mut Vec<f32>,
    ) -> Result<()> {
        validate::bias(spec, bias.len())?;
        validate::gemm(spec, a.len(), b.len(), c.len())?;
        let (m, n, k) = (spec.m, spec.n, spec.k);
        let relu = act == Some(UnaryOp::Relu);
        let epilogue = gemm::Epilogue {
            bias: Some(bias),
            relu,
        };
        for_each_product(spec, c, |i, c| {
            let a = MatRef::row_major(&a[i * spec.stride_a..], m, k, spec.trans_a);
            let b = MatRef::row_major(&b[i * spec.stride_b..], k, n, spec.trans_b);
            let (alpha, beta, inputs) = (spec.alpha, spec.beta, spec.precision);
            gemm::gemm_mixed(
                self.simd, inputs, m, n, k, alpha, a, b, beta, c, n, epilogue,
            )
        })?;
        if let Some(op) = act.filter(|_| !relu) {
            let mut y = self.alloc(c.len())?;
            self.unary(op, c, &mut y)?;
            *c = y;
        }
        Ok(())
    }

    fn pack_q8(&self, w: &Int8Rows) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((q8::pack(w), self.upload(w.scales())?))
    }

    fn unpack_q8(&self, packed: &Vec<f32>, n: usize, k: usize) -> Result<Vec<i8>> {
        crate::error::check_len("unpack_q8", "packed", q8::packed_len(n, k), packed.len())?;
        Ok(q8::unpack(packed, n, k))
    }

    fn linear_q8(
        &self,
        spec: &Q8Spec,
        x: &Vec<f32>,
        packed: &Vec<f32>,
        scales: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let path = q8::Q8Path::for_simd(self.simd);
        let _span = trace::span("cpu", "linear_q8")
            .arg("shape", || format!("{}x{}x{}", spec.m, spec.n, spec.k))
            .arg("path", || path.name());
        spec.check(x.len(), bias.map(Vec::len), out.len())?;
        crate::error::check_len(
            "linear_q8",
            "packed",
            q8::packed_len(spec.n, spec.k),
            packed.len(),
        )?;
        crate::error::check_len("linear_q8", "scales", spec.n, scales.len())?;
        q8::linear(path, spec, x, packed, scales, bias.map(Vec::as_slice), out);
        Ok(())
    }

    fn dequantize_q8(
        &self,
        n: usize,
        k: usize,
        packed: &Vec<f32>,
        scales: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        crate::error::check_len("dequantize_q8", "scales", n, scales.len())?;
        crate::error::check_len("dequantize_q8", "out", n * k, out.len())?;
        let values = self.unpack_q8(packed, n, k)?;
        for ((out, q), &s) in out
            .chunks_exact_mut(k)
            .zip(values.chunks_exact(k))
            .zip(scales)
        {
            for (o, &q) in out.iter_mut().zip(q) {
                *o = f32::from(q) * s;
            }
        }
        Ok(())
    }

    fn round_to(&self, precision: Precision, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        let _span = trace::span("cpu", "round_to")
            .arg("to", || precision.name())
            .arg("len", || x.len());
        crate::error::check_len("round_to", "y", x.len(), y.len())?;
        round::round_slice(self.simd, precision, x, y);
        Ok(())
    }

    fn unary(&self, op: UnaryOp, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        let _span = trace::span("cpu", "unary")
            .arg("op", || format!("{op:?}"))
            .arg("len", || x.len());
        validate::unary(x.len(), y.len())?;
        elementwise::unary(self.simd, op, x, y);
        Ok(())
    }

    fn count_nonfinite(&self, x: &Vec<f32>, out: &mut Vec<f32>) -> Result<()> {
        let _span = trace::span("cpu", "count_nonfinite").arg("len", || x.len());
        crate::error::check_len("count_nonfinite", "out", 1, out.len())?;
        out[0] = reduce::count_nonfinite(self.simd, x) as f32;
        Ok(())
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &Vec<f32>,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "unary_backward")
            .arg("op", || format!("{op:?}"))
            .arg("len", || x.len());
        validate::unary_backward(x.len(), y.len(), dy.len(), dx.len())?;
        elementwise::unary_backward(self.simd, op, x, y, dy, dx);
        Ok(())
    }

    fn affine(&self, x: &Vec<f32>, y: &mut Vec<f32>, mul: f32, add: f32) -> Result<()> {
        let _span = trace::span("cpu", "affine").arg("len", || x.len());
        validate::affine(x.len(), y.len())?;
        elementwise::affine(self.simd, x, y, mul, add);
        Ok(())
    }

    fn binary(
        &self,
        op: BinaryOp,
        layout: &BinaryLayout,
        lhs: &Vec<f32>,
        rhs: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "binary")
            .arg("op", || format!("{op:?}"))
            .arg("shape", || format!("{:?}", layout.shape));
        validate::binary(layout, lhs.len(), rhs.len(), out.len())?;
        elementwise::binary(self.simd, op, layout, lhs, rhs, out);
        Ok(())
    }

    fn copy_strided(
        &self,
        src: &Vec<f32>,
        layout: &StridedLayout,
        dst: &mut Vec<f32>,
    ) -> Result<()> {
        let _span =
            trace::span("cpu", "copy_strided").arg("shape", || format!("{:?}", layout.shape));
        validate::copy_strided(layout, src.len(), dst.len())?;
        elementwise::copy_strided(src, layout, dst);
        Ok(())
    }

    fn sum_axis(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()> {
        let _span =
            trace::span("cpu", "sum_axis").arg("shape", || format!("[{outer}, {axis}, {inner}]"));
        validate::sum_axis(x.len(), out.len(), outer, axis, inner)?;
        reduce::sum_axis(self.simd, x, out, outer, axis, inner);
        Ok(())
    }

    fn log_softmax(&self, x: &Vec<f32>, y: &mut Vec<f32>, rows: usize, cols: usize) -> Result<()> {
        let _span = trace::span("cpu", "log_softmax").arg("shape", || format!("[{rows}, {cols}]"));
        validate::rows("log_softmax", &[("x", x.len()), ("y", y.len())], rows, cols)?;
        softmax::log_softmax(self.simd, x, y, cols);
        Ok(())
    }

    fn log_softmax_backward(
        &self,
        y: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("cpu", "log_softmax_backward");
        let bufs = [("y", y.len()), ("dy", dy.len()), ("dx", dx.len())];
        validate::rows("log_softmax_backward", &bufs, rows, cols)?;
        softmax::log_softmax_backward(self.simd, y, dy, dx, cols);
        Ok(())
    }

    fn softmax_cross_entropy(
        &self,
        logits: &Vec<f32>,
        labels: &Vec<f32>,
        probs: &mut Vec<f32>,
        loss: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("cpu", "softmax_cross_entropy");
        const OP: &str = "softmax_cross_entropy";
        validate::rows(
            OP,
            &[("logits", logits.len()), ("probs", probs.len())],
            rows,
            cols,
        )?;
        validate::scalar(OP, "loss", loss.len())?;
        crate::error::check_len(OP, "labels", rows, labels.len())?;
        let labels = words(labels);
        loss[0] = softmax::softmax_cross_entropy(self.simd, logits, labels, probs, cols);
        Ok(())
    }

    fn softmax_cross_entropy_backward(
        &self,
        probs: &Vec<f32>,
        labels: &Vec<f32>,
        dloss: &Vec<f32>,
        dlogits: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("cpu", "softmax_cross_entropy_backward");
        const OP: &str = "softmax_cross_entropy_backward";
        validate::rows(
            OP,
            &[("probs", probs.len()), ("dlogits", dlogits.len())],
            rows,
            cols,
        )?;
        validate::scalar(OP, "dloss", dloss.len())?;
        crate::error::check_len(OP, "labels", rows, labels.len())?;
        let labels = words(labels);
        softmax::softmax_cross_entropy_backward(self.simd, probs, labels, dloss[0], dlogits, cols);
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        y: &mut Vec<f32>,
        stats: &mut Vec<f32>,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let _span = trace::span("cpu", "layer_norm");
        validate::layer_norm(
            "layer_norm",
            &[("x", x.len()), ("y", y.len())],
            &[("gamma", gamma.len()), ("beta", beta.len())],
            stats.len(),
            rows,
            cols,
        )?;
        norm::layer_norm(self.simd, x, gamma, beta, y, stats, cols, eps);
        Ok(())
    }

    fn layer_norm_backward(
        &self,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        stats: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        dgamma: &mut Vec<f32>,
        dbeta: &mut Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("cpu", "layer_norm_backward");
        validate::layer_norm(
            "layer_norm_backward",
            &[("x", x.len()), ("dy", dy.len()), ("dx", dx.len())],
            &[
                ("gamma", gamma.len()),
                ("dgamma", dgamma.len()),
                ("dbeta", dbeta.len()),
            ],
            stats.len(),
            rows,
            cols,
        )?;
        norm::layer_norm_backward(self.simd, x, gamma, stats, dy, dx, dgamma, dbeta, cols);
        Ok(())
    }

    fn gather(
        &self,
        spec: &GatherSpec,
        x: &Vec<f32>,
        idx: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "gather");
        spec.validate("gather", x.len(), idx.len(), out.len())?;
        index::gather(spec, x, words(idx), out);
        Ok(())
    }

    fn scatter_add(
        &self,
        spec: &GatherSpec,
        dy: &Vec<f32>,
        idx: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "scatter_add");
        spec.validate("scatter_add", dx.len(), idx.len(), dy.len())?;
        index::scatter_add(self.simd, spec, dy, words(idx), dx);
        Ok(())
    }

    fn copy_into(&self, src: &Vec<f32>, dst: &mut Vec<f32>, layout: &StridedLayout) -> Result<()> {
        let _span = trace::span("cpu", "copy_into").arg("shape", || format!("{:?}", layout.shape));
        validate::copy_into(layout, src.len(), dst.len())?;
        index::copy_into(src, dst, layout);
        Ok(())
    }

    fn select(
        &self,
        layout: &SelectLayout,
        cond: &Vec<f32>,
        a: &Vec<f32>,
        b: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "select");
        layout.validate(cond.len(), a.len(), b.len(), out.len())?;
        index::select(layout, words(cond), a, b, out);
        Ok(())
    }

    fn compare(
        &self,
        op: CompareOp,
        dtype: DType,
        layout: &BinaryLayout,
        lhs: &Vec<f32>,
        rhs: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "compare");
        crate::index::compare(dtype, layout, lhs.len(), rhs.len(), out.len())?;
        index::compare(op, dtype, layout, lhs, rhs, out);
        Ok(())
    }

    fn triangle(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        rows: usize,
        cols: usize,
        diagonal: i64,
        upper: bool,
    ) -> Result<()> {
        let _span = trace::span("cpu", "triangle");
        crate::index::triangle(x.len(), out.len(), rows, cols)?;
        index::triangle(x, out, rows, cols, diagonal, upper);
        Ok(())
    }

    fn arange(&self, out: &mut Vec<f32>, start: u32, step: u32) -> Result<()> {
        index::arange(out, start, step);
        Ok(())
    }

    fn cast(&self, x: &Vec<f32>, from: DType, to: DType, out: &mut Vec<f32>) -> Result<()> {
        let _span = trace::span("cpu", "cast").arg("len", || x.len());
        crate::index::cast(x.len(), from, to, out.len())?;
        index::cast(x, from, to, out);
        Ok(())
    }

    fn argmax_axis(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()> {
        let _span = trace::span("cpu", "argmax_axis");
        crate::index::argmax_axis(x.len(), out.len(), outer, axis, inner)?;
        index::argmax_axis(x, out, outer, axis, inner);
        Ok(())
    }

    fn attention(
        &self,
        spec: &AttentionSpec,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "attention").arg("shape", || format!("{spec:?}"));
        spec.validate_forward(q.len(), k.len(), v.len(), out.len(), lse.len())?;
        attention::forward(self.simd, spec, q, k, v, out, lse);
        Ok(())
    }

    fn attention_backward(
        &self,
        spec: &AttentionSpec,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dout: &Vec<f32>,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "attention_backward").arg("shape", || format!("{spec:?}"));
        spec.validate_backward([
            ("q", q.len()),
            ("k", k.len()),
            ("v", v.len()),
            ("out", out.len()),
            ("lse", lse.len()),
            ("dout", dout.len()),
            ("dq", dq.len()),
            ("dk", dk.len()),
            ("dv", dv.len()),
        ])?;
        attention::backward(self.simd, spec, q, k, v, out, lse, dout, dq, dk, dv);
        Ok(())
    }

    fn im2col(&self, x: &Vec<f32>, cols: &mut Vec<f32>, g: &Window2d) -> Result<()> {
        let _span = trace::span("cpu", "im2col").arg("geometry", || format!("{g:?}"));
        validate::im2col(g, x.len(), cols.len())?;
        window::im2col(x, cols, g);
        Ok(())
    }

    /// Image by image, the columns of each in cache (see `cpu::conv`).
    fn conv2d(
        &self,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        bias: Option<&Vec<f32>>,
        relu: bool,
        y: &mut Vec<f32>,
        g: &Window2d,
        out_channels: usize,
    ) -> Result<()> {
        let _span = trace::span("cpu", "conv2d")
            .arg("geometry", || format!("{g:?}"))
            .arg("out_channels", || out_channels)
            .arg("relu", || u64::from(relu));
        let lens = (x.len(), weight.len(), y.len());
        validate::conv2d(g, out_channels, lens, bias.map(|b| b.len()))?;
        let bias = bias.map(|b| b.as_slice());
        conv::forward(self.simd, x, weight, bias, relu, y, g, out_channels)
    }

    fn conv2d_backward(
        &self,
        x: &Vec<f32>,
        weight: &Vec<f32>,
        dy: &Vec<f32>,
        relu_out: Option<&Vec<f32>>,
        g: &Window2d,
        out_channels: usize,
        dx: Option<&mut Vec<f32>>,
        dweight: &mut Vec<f32>,
        dbias: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "conv2d_backward")
            .arg("geometry", || format!("{g:?}"))
            .arg("out_channels", || out_channels);
        validate::conv2d_backward(
            g,
            out_channels,
            [x.len(), weight.len(), dy.len(), dweight.len()],
            dx.as_ref().map(|b| b.len()),
            dbias.as_ref().map(|b| b.len()),
        )?;
        if let Some(y) = relu_out {
            crate::error::check_len("conv2d_backward", "relu_out", dy.len(), y.len())?;
        }
        let grads = conv::Grads {
            dx: dx.map(|b| b.as_mut_slice()),
            dweight,
            dbias: dbias.map(|b| b.as_mut_slice()),
        };
        let relu_out = relu_out.map(|y| y.as_slice());
        conv::backward(self.simd, x, weight, dy, relu_out, g, out_channels, grads)
    }

    fn col2im(&self, cols: &Vec<f32>, x: &mut Vec<f32>, g: &Window2d) -> Result<()> {
        let _span = trace::span("cpu", "col2im").arg("geometry", || format!("{g:?}"));
        validate::col2im(g, cols.len(), x.len())?;
        window::col2im(cols, x, g);
        Ok(())
    }

    fn max_pool2d(
        &self,
        x: &Vec<f32>,
        y: &mut Vec<f32>,
        argmax: &mut Vec<f32>,
        g: &Window2d,
    ) -> Result<()> {
        let _span = trace::span("cpu", "max_pool2d").arg("geometry", || format!("{g:?}"));
        let outs = [("y", y.len()), ("argmax", argmax.len())];
        validate::pool("max_pool2d", g, ("x", x.len()), &outs)?;
        window::max_pool2d(self.simd, x, y, argmax, g);
        Ok(())
    }

    fn max_pool2d_backward(
        &self,
        dy: &Vec<f32>,
        argmax: &Vec<f32>,
        dx: &mut Vec<f32>,
        g: &Window2d,
    ) -> Result<()> {
        let _span = trace::span("cpu", "max_pool2d_backward").arg("geometry", || format!("{g:?}"));
        let outs = [("dy", dy.len()), ("argmax", argmax.len())];
        validate::pool("max_pool2d_backward", g, ("dx", dx.len()), &outs)?;
        window::max_pool2d_backward(dy, argmax, dx, g);
        Ok(())
    }

    fn avg_pool2d(&self, x: &Vec<f32>, y: &mut Vec<f32>, g: &Window2d) -> Result<()> {
        let _span = trace::span("cpu", "avg_pool2d").arg("geometry", || format!("{g:?}"));
        validate::pool("avg_pool2d", g, ("x", x.len()), &[("y", y.len())])?;
        window::avg_pool2d(x, y, g);
        Ok(())
    }

    fn avg_pool2d_backward(&self, dy: &Vec<f32>, dx: &mut Vec<f32>, g: &Window2d) -> Result<()> {
        let _span = trace::span("cpu", "avg_pool2d_backward").arg("geometry", || format!("{g:?}"));
        validate::pool(
            "avg_pool2d_backward",
            g,
            ("dx", dx.len()),
            &[("dy", dy.len())],
        )?;
        window::avg_pool2d_backward(dy, dx, g);
        Ok(())
    }

    fn sgd_step(
        &self,
        p: &SgdParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        momentum: Option<&mut Vec<f32>>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "sgd_step").arg("len", || param.len());
        validate::sgd(
            p,
            param.len(),
            grad.len(),
            momentum.as_ref().map(|m| m.len()),
        )?;
        let momentum = momentum
            .filter(|_| p.momentum != 0.0)
            .map(|b| b.as_mut_slice());
        optim::sgd(self.simd, p, param, grad, momentum);
        Ok(())
    }

    fn adamw_step(
        &self,
        p: &AdamWParams,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        m: &mut Vec<f32>,
        v: &mut Vec<f32>,
    ) -> Result<()> {
        let _span = trace::span("cpu", "adamw_step").arg("len", || param.len());
        validate::adamw(p, param.len(), grad.len(), m.len(), v.len())?;
        optim::adamw(self.simd, p, param, grad, m, v);
        Ok(())
    }
}

/// Runs `product(i, c_i)` for every product of a batched GEMM, `c_i` its `m x n` block of
/// `c`. Products too small for the GEMM to share out (a convolution's per-image GEMMs)
/// run side by side, several per task; larger ones one after another, each on all
/// threads. Each product's bits are the same either way.
fn for_each_product(
    spec: &GemmSpec,
    c: &mut [f32],
    product: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<()> {
    let len = spec.m * spec.n;
    if len == 0 {
        return Ok(());
    }
    let c = &mut c[..spec.batch * len];
    let macs = spec.m * spec.n * spec.k;
    let per_task = gemm::products_per_task(macs);
    if spec.batch > per_task && rayon::current_num_threads() > 1 && macs < gemm::PARALLEL_MIN_MACS {
        use rayon::prelude::*;
        c.par_chunks_mut(len)
            .with_min_len(per_task)
            .enumerate()
            .try_for_each(|(i, c)| product(i, c))
    } else {
        c.chunks_mut(len)
            .enumerate()
            .try_for_each(|(i, c)| product(i, c))
    }
}
