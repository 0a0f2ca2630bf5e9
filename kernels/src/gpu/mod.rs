//! The GPU backend: WGSL compute kernels (the `ringtrain-shaders` crate) run through wgpu
//! on Vulkan, Metal or DX12.
//!
//! Ops are recorded, not run: each validates its arguments, takes its kernel from the
//! pipeline cache and records one dispatch (a few for GEMMs past the grid limits).
//! Work reaches the GPU at sync points, and the host waits only where a value is read
//! back. Buffers come from a per-device pool, so a training step that has run once
//! allocates no device memory again.

mod adapter;
mod attention;
mod device;
mod indexing;
mod norm;
mod params;
mod pool;
mod quant;
mod shaders;
pub mod testing;

pub use adapter::AdapterSummary;
pub use pool::GpuBuffer;

use crate::{
    trace, validate, AdamWParams, AttentionSpec, Backend, BinaryLayout, BinaryOp, CompareOp, DType,
    GatherSpec, GemmSpec, Int8Rows, KernelError, Precision, Q8Spec, Result, SelectLayout,
    SgdParams, StridedLayout, UnaryOp, Window2d,
};
use device::Context;
use params::{u32_of, ACT_NONE, MAX_RANK, OP_AFFINE};
use shaders::{GemmVariant, Shader};
use std::sync::Arc;

/// Elementwise kernels run 256 invocations per workgroup.
const WG: usize = 256;
/// GEMM tiles are 64 x 64 (shaders/wgsl/gemm.wgsl).
const TILE: usize = 64;
/// Below this many outputs, a sum over a long axis gives each output a workgroup.
const FEW_OUTPUTS: usize = 2048;

/// One GPU device. Clones share it; two backends opened separately are two devices, even
/// on one adapter, and their buffers do not mix.
#[derive(Clone)]
pub struct GpuBackend {
    ctx: Arc<Context>,
    adapter: Arc<AdapterSummary>,
    /// f16 GEMMs stage their tiles as f16 (`enable f16`); set where the device has
    /// `SHADER_F16`.
    f16_kernels: bool,
}

impl PartialEq for GpuBackend {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ctx, &other.ctx)
    }
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl GpuBackend {
    /// The best adapter there is (a discrete GPU over an integrated one, a hardware GPU
    /// over a software one), honouring `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
    pub fn new() -> Result<Self> {
        Self::with_adapter(0)
    }

    /// The `index`-th adapter of [`GpuBackend::adapters`]. Each call opens a new device,
    /// so several backends can run side by side on one adapter.
    pub fn with_adapter(index: usize) -> Result<Self> {
        let mut found = adapter::adapters()?;
        if found.is_empty() {
            return Err(adapter::no_adapter());
        }
        if index >= found.len() {
            return Err(KernelError::Device(format!(
                "there is no GPU adapter {index}: {} found",
                found.len()
            )));
        }
        let (mut ctx, summary) = adapter::open(found.swap_remove(index))?;
        // Each device opened gets its own row in a trace.
        static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ctx.trace_track = format!("GPU device {n}: {summary}");
        let f16_kernels = ctx.shader_f16();
        Ok(Self {
            ctx: Arc::new(ctx),
            adapter: Arc::new(summary),
            f16_kernels,
        })
    }

    /// Whether the device runs WGSL's `enable f16` (wgpu's `SHADER_F16`): then GEMMs
    /// with f16 inputs hold their workgroup tiles as f16, half the workgroup memory and
    /// its traffic, and still sum in f32. Without it they round the inputs on the bits
    /// and keep f32 tiles: the same results, bit for bit.
    pub fn has_shader_f16(&self) -> bool {
        self.ctx.shader_f16()
    }

    /// Whether this handle's f16 GEMMs use the `enable f16` kernel.
    pub fn f16_kernels(&self) -> bool {
        self.f16_kernels
    }

    /// A handle on the same device whose f16 GEMMs keep f32 tiles (as on a device
    /// without `SHADER_F16`): to compare the two.
    pub fn without_f16_kernels(&self) -> Self {
        Self {
            f16_kernels: false,
            ..self.clone()
        }
    }

    /// The best hardware GPU, or `None` where there is only a software implementation
    /// (or nothing).
    pub fn hardware() -> Result<Option<Self>> {
        match adapter::summaries()?.iter().position(|a| a.is_hardware) {
            Some(i) => Self::with_adapter(i).map(Some),
            None => Ok(None),
        }
    }

    /// Every adapter that can run the kernels, best first.
    pub fn adapters() -> Result<Vec<AdapterSummary>> {
        adapter::summaries()
    }

    pub fn adapter(&self) -> &AdapterSummary {
        &self.adapter
    }

    /// Submits every recorded op and waits for the GPU to finish them (a benchmark's
    /// sync point). Reports any error the device raised meanwhile.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.wait()
    }

    /// Whether [`GpuBackend::timed`] measures on the GPU (the adapter has timestamp
    /// queries; lavapipe and most desktop GPUs do).
    pub fn has_timestamps(&self) -> bool {
        self.ctx.has_timestamps()
    }

    /// Runs `f`, which records ops on this device, and returns its result with the GPU
    /// time its kernels took (from timestamps at the start and end of every compute
    /// pass; gaps between passes are not counted). The time is `None` where the adapter
    /// has no timestamp queries, or `f` ran more than 512 passes: time with a
    /// synchronized wall clock then. Ops recorded before the call run first, untimed; ops
    /// other threads record on this device during the call are timed with it.
    pub fn timed<T>(
        &self,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<(T, Option<std::time::Duration>)> {
        self.ctx.timed(f)
    }

    /// The limits the device was opened with (the adapter's own, not WebGPU's defaults):
    /// ops check sizes against them and split or refuse what does not fit.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.ctx.shared.limits
    }

    /// Device buffers created so far; stays put once a workload's sizes have all been
    /// seen, since dropped buffers are recycled.
    pub fn buffers_created(&self) -> usize {
        self.ctx.buffers_created()
    }

    fn buffer(&self, len: usize) -> Result<GpuBuffer> {
        let bytes = (len as u64).checked_mul(4).ok_or_else(|| {
            KernelError::Device(format!("a buffer of {len} floats is beyond any device"))
        })?;
        Ok(GpuBuffer {
            raw: self.ctx.take(bytes)?,
            len,
            pool: self.ctx.storage.clone(),
        })
    }

    /// Workgroups for `count` invocations (or workgroups, with `per_group` 1), spread over
    /// a 2-D grid when one dimension cannot hold them.
    fn grid(&self, count: usize, per_group: usize) -> Result<[u32; 3]> {
        let groups = count.div_ceil(per_group);
        let max = self.ctx.shared.limits.max_compute_workgroups_per_dimension as usize;
        let x = groups.min(max);
        let y = groups.div_ceil(x.max(1));
        if y > max {
            return Err(KernelError::Device(format!(
                "{count} elements need more workgroups than this device can launch"
            )));
        }
        Ok([x as u32, y as u32, 1])
    }

    /// Records `shader` over `buffers`, which must all belong to this device: wgpu would
    /// reject a foreign one only when the whole batch is submitted, losing every op in it.
    fn dispatch<P: bytemuck::Pod>(
        &self,
        shader: Shader,
        params: &P,
        buffers: &[&GpuBuffer],
        groups: [u32; 3],
    ) -> Result<()> {
        if buffers
            .iter()
            .any(|b| !Arc::ptr_eq(&b.pool, &self.ctx.storage))
        {
            return Err(KernelError::Device(format!(
                "{shader:?}: a buffer of another GPU device was passed to {}; move tensors \
                 between devices through the host",
                self.name()
            )));
        }
        let raw: Vec<&wgpu::Buffer> = buffers.iter().map(|b| &b.raw).collect();
        let kernel = self.ctx.kernel(shader)?;
        self.ctx.dispatch(&kernel, params, &raw, groups)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_impl(
        &self,
        spec: &GemmSpec,
        a: &GpuBuffer,
        b: &GpuBuffer,
        bias: Option<&GpuBuffer>,
        act: Option<UnaryOp>,
        c: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "gemm";
        if spec.batch == 0 || spec.m == 0 || spec.n == 0 {
            return Ok(());
        }
        // Quads along an operand's contiguous dimension are aligned vec4s when that
        // dimension (and the batch stride) is a multiple of four.
        let quads = |contiguous: usize, stride: usize| {
            contiguous.is_multiple_of(4) && (spec.batch == 1 || stride.is_multiple_of(4))
        };
        let variant = GemmVariant {
            trans_a: spec.trans_a,
            trans_b: spec.trans_b,
            vec4_a: quads(if spec.trans_a { spec.m } else { spec.k }, spec.stride_a),
            vec4_b: quads(if spec.trans_b { spec.k } else { spec.n }, spec.stride_b),
            inputs: spec.precision,
            f16_tiles: spec.precision == Precision::F16 && self.f16_kernels,
        };
        let max = self.ctx.shared.limits.max_compute_workgroups_per_dimension as usize;
        let (gx, gy) = (spec.n.div_ceil(TILE), spec.m.div_ceil(TILE));
        let mut p = params::Gemm {
            m: u32_of(OP, "m", spec.m)?,
            n: u32_of(OP, "n", spec.n)?,
            k: u32_of(OP, "k", spec.k)?,
            batch_base: 0,
            stride_a: u32_of(OP, "stride_a", spec.stride_a)?,
            stride_b: u32_of(OP, "stride_b", spec.stride_b)?,
            alpha: spec.alpha,
            beta: spec.beta,
            act: act.map_or(ACT_NONE, params::unary_code),
            has_bias: u32::from(bias.is_some()),
            row_base: 0,
            col_base: 0,
        };
        u32_of(OP, "batch * m * n", spec.batch * spec.m * spec.n)?;
        // Without a bias the shader still binds one; any buffer will do but `c`, which
        // is bound writable.
        let bias = bias.unwrap_or(a);
        // A launch holds at most `max` batch items, row tiles and column tiles; larger
        // products take several launches.
        for batch_base in (0..spec.batch).step_by(max) {
            let items = (spec.batch - batch_base).min(max);
            for row_tile in (0..gy).step_by(max) {
                let rows = (gy - row_tile).min(max);
                for col_tile in (0..gx).step_by(max) {
                    let cols = (gx - col_tile).min(max);
                    p.batch_base = batch_base as u32;
                    p.row_base = (row_tile * TILE) as u32;
                    p.col_base = (col_tile * TILE) as u32;
                    self.dispatch(
                        Shader::Gemm(variant),
                        &p,
                        &[a, b, &*c, bias],
                        [cols as u32, rows as u32, items as u32],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// One window kernel over `len` invocations (one per element it writes).
    fn window(
        &self,
        shader: Shader,
        op: &'static str,
        g: &Window2d,
        len: usize,
        buffers: &[&GpuBuffer],
    ) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let p = params::Window::new(op, g, len)?;
        self.dispatch(shader, &p, buffers, self.grid(len, WG)?)
    }

    /// Sums `x` viewed as `[outer, axis, inner]` over `axis`, times `scale`.
    fn sum_scaled(
        &self,
        x: &GpuBuffer,
        out: &GpuBuffer,
        (outer, axis, inner): (usize, usize, usize),
        scale: f32,
    ) -> Result<()> {
        const OP: &str = "sum_axis";
        let outputs = outer * inner;
        if outputs == 0 {
            return Ok(());
        }
        let p = params::SumAxis {
            outer: u32_of(OP, "outer", outer)?,
            axis: u32_of(OP, "axis", axis)?,
            inner: u32_of(OP, "inner", inner)?,
            scale,
        };
        if outputs < FEW_OUTPUTS && axis > 64 {
            let groups = self.grid(outputs, 1)?;
            self.dispatch(Shader::SumByWorkgroup, &p, &[x, out], groups)
        } else {
            let groups = self.grid(outputs, WG)?;
            self.dispatch(Shader::SumByThread, &p, &[x, out], groups)
        }
    }

    fn rows_params(op: &'static str, rows: usize, cols: usize) -> Result<params::Rows> {
        u32_of(op, "rows * cols", rows.saturating_mul(cols))?;
        Ok(params::Rows {
            rows: u32_of(op, "rows", rows)?,
            cols: u32_of(op, "cols", cols)?,
            _pad: [0; 2],
        })
    }
}

impl Backend for GpuBackend {
    type Buffer = GpuBuffer;

    fn name(&self) -> String {
        format!("gpu: {}", self.adapter)
    }

    fn zeros(&self, len: usize) -> Result<GpuBuffer> {
        let mut buf = self.buffer(len)?;
        self.fill(&mut buf, 0.0)?;
        Ok(buf)
    }

    fn alloc(&self, len: usize) -> Result<GpuBuffer> {
        self.buffer(len)
    }

    fn upload(&self, data: &[f32]) -> Result<GpuBuffer> {
        let buf = self.buffer(data.len())?;
        self.ctx.write(&buf.raw, bytemuck::cast_slice(data))?;
        Ok(buf)
    }

    fn download(&self, buf: &GpuBuffer) -> Result<Vec<f32>> {
        let bytes = self.ctx.read(&buf.raw, buf.len as u64 * 4)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    fn download_many(&self, bufs: &[&GpuBuffer]) -> Result<Vec<Vec<f32>>> {
        let srcs: Vec<_> = bufs.iter().map(|b| (&b.raw, b.len as u64 * 4)).collect();
        let parts = self.ctx.read_many(&srcs)?;
        Ok(parts
            .iter()
            .map(|p| bytemuck::pod_collect_to_vec(p))
            .collect())
    }

    fn len(&self, buf: &GpuBuffer) -> usize {
        buf.len
    }

    fn fill(&self, buf: &mut GpuBuffer, value: f32) -> Result<()> {
        if buf.len == 0 {
            return Ok(());
        }
        let p = params::Fill {
            len: u32_of("fill", "len", buf.len)?,
            value,
            _pad: [0; 2],
        };
        self.dispatch(Shader::Fill, &p, &[&*buf], self.grid(buf.len, WG)?)
    }

    fn gemm(&self, spec: &GemmSpec, a: &GpuBuffer, b: &GpuBuffer, c: &mut GpuBuffer) -> Result<()> {
        let _span = trace::span("gpu", "encode gemm")
            .arg("m", || spec.m)
            .arg("n", || spec.n)
            .arg("k", || spec.k)
            .arg("batch", || spec.batch);
        validate::gemm(spec, a.len, b.len, c.len)?;
        self.gemm_impl(spec, a, b, None, None, c)
    }

    fn gemm_bias_act(
        &self,
        spec: &GemmSpec,
        a: &GpuBuffer,
        b: &GpuBuffer,
        bias: &GpuBuffer,
        act: Option<UnaryOp>,
        c: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode gemm_bias_act")
            .arg("m", || spec.m)
            .arg("n", || spec.n)
            .arg("k", || spec.k)
            .arg("batch", || spec.batch);
        validate::gemm(spec, a.len, b.len, c.len)?;
        validate::bias(spec, bias.len)?;
        self.gemm_impl(spec, a, b, Some(bias), act, c)
    }

    fn unary(&self, op: UnaryOp, x: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
        let _span = trace::span("gpu", "encode unary");
        validate::unary(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let p = params::Unary {
            len: u32_of("unary", "len", x.len)?,
            op: params::unary_code(op),
            mul: 1.0,
            add: 0.0,
        };
        self.dispatch(Shader::Unary, &p, &[x, &*y], self.grid(x.len, WG)?)
    }

    fn unary_backward(
        &self,
        op: UnaryOp,
        x: &GpuBuffer,
        y: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode unary_backward");
        validate::unary_backward(x.len, y.len, dy.len, dx.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let p = params::UnaryBackward {
            len: u32_of("unary_backward", "len", x.len)?,
            op: params::unary_code(op),
            _pad: [0; 2],
        };
        let bufs = [x, y, dy, &*dx];
        self.dispatch(Shader::UnaryBackward, &p, &bufs, self.grid(x.len, WG)?)
    }

    fn affine(&self, x: &GpuBuffer, y: &mut GpuBuffer, mul: f32, add: f32) -> Result<()> {
        let _span = trace::span("gpu", "encode affine");
        validate::affine(x.len, y.len)?;
        if x.len == 0 {
            return Ok(());
        }
        let p = params::Unary {
            len: u32_of("affine", "len", x.len)?,
            op: OP_AFFINE,
            mul,
            add,
        };
        self.dispatch(Shader::Unary, &p, &[x, &*y], self.grid(x.len, WG)?)
    }

    fn binary(
        &self,
        op: BinaryOp,
        layout: &BinaryLayout,
        lhs: &GpuBuffer,
        rhs: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode binary");
        const OP: &str = "binary";
        validate::binary(layout, lhs.len, rhs.len, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let (shape, strides) =
            crate::layout::collapse(&layout.shape, &[&layout.lhs_strides, &layout.rhs_strides]);
        check_rank(OP, shape.len())?;
        let p = params::Binary {
            len: u32_of(OP, "len", out.len)?,
            rank: shape.len() as u32,
            op: match op {
                BinaryOp::Add => 0,
                BinaryOp::Sub => 1,
                BinaryOp::Mul => 2,
                BinaryOp::Div => 3,
            },
            _pad: 0,
            shape: params::dims(OP, "shape", &shape)?,
            lhs_strides: params::dims(OP, "stride", &strides[0])?,
            rhs_strides: params::dims(OP, "stride", &strides[1])?,
        };
        let bufs = [lhs, rhs, &*out];
        self.dispatch(Shader::Binary, &p, &bufs, self.grid(out.len, WG)?)
    }

    fn copy_strided(
        &self,
        src: &GpuBuffer,
        layout: &StridedLayout,
        dst: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode copy_strided");
        const OP: &str = "copy_strided";
        validate::copy_strided(layout, src.len, dst.len)?;
        if dst.len == 0 {
            return Ok(());
        }
        let (shape, strides) = crate::layout::collapse(&layout.shape, &[&layout.strides]);
        check_rank(OP, shape.len())?;
        let p = params::CopyStrided {
            len: u32_of(OP, "len", dst.len)?,
            rank: shape.len() as u32,
            offset: u32_of(OP, "offset", layout.offset)?,
            _pad: 0,
            shape: params::dims(OP, "shape", &shape)?,
            strides: params::dims(OP, "stride", &strides[0])?,
        };
        let bufs = [src, &*dst];
        self.dispatch(Shader::CopyStrided, &p, &bufs, self.grid(dst.len, WG)?)
    }

    fn sum_axis(
        &self,
        x: &GpuBuffer,
        out: &mut GpuBuffer,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode sum_axis");
        validate::sum_axis(x.len, out.len, outer, axis, inner)?;
        self.sum_scaled(x, &*out, (outer, axis, inner), 1.0)
    }

    fn log_softmax(
        &self,
        x: &GpuBuffer,
        y: &mut GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode log_softmax");
        const OP: &str = "log_softmax";
        validate::rows(OP, &[("x", x.len), ("y", y.len)], rows, cols)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let p = Self::rows_params(OP, rows, cols)?;
        self.dispatch(Shader::LogSoftmax, &p, &[x, &*y], self.grid(rows, 1)?)
    }

    fn log_softmax_backward(
        &self,
        y: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &mut GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode log_softmax_backward");
        const OP: &str = "log_softmax_backward";
        validate::rows(
            OP,
            &[("y", y.len), ("dy", dy.len), ("dx", dx.len)],
            rows,
            cols,
        )?;
        if rows * cols == 0 {
            return Ok(());
        }
        let p = Self::rows_params(OP, rows, cols)?;
        let bufs = [y, dy, &*dx];
        self.dispatch(Shader::LogSoftmaxBackward, &p, &bufs, self.grid(rows, 1)?)
    }

    fn softmax_cross_entropy(
        &self,
        logits: &GpuBuffer,
        labels: &GpuBuffer,
        probs: &mut GpuBuffer,
        loss: &mut GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode softmax_cross_entropy");
        const OP: &str = "softmax_cross_entropy";
        validate::rows(
            OP,
            &[("logits", logits.len), ("probs", probs.len)],
            rows,
            cols,
        )?;
        validate::scalar(OP, "loss", loss.len)?;
        crate::error::check_len(OP, "labels", rows, labels.len)?;
        if rows * cols == 0 {
            return self.fill(loss, 0.0);
        }
        let p = Self::rows_params(OP, rows, cols)?;
        let row_loss = self.buffer(rows)?;
        let bufs = [logits, labels, &*probs, &row_loss];
        self.dispatch(Shader::CrossEntropy, &p, &bufs, self.grid(rows, 1)?)?;
        self.sum_scaled(&row_loss, &*loss, (1, rows, 1), 1.0 / rows as f32)
    }

    fn softmax_cross_entropy_backward(
        &self,
        probs: &GpuBuffer,
        labels: &GpuBuffer,
        dloss: &GpuBuffer,
        dlogits: &mut GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode softmax_cross_entropy_backward");
        const OP: &str = "softmax_cross_entropy_backward";
        validate::rows(
            OP,
            &[("probs", probs.len), ("dlogits", dlogits.len)],
            rows,
            cols,
        )?;
        validate::scalar(OP, "dloss", dloss.len)?;
        crate::error::check_len(OP, "labels", rows, labels.len)?;
        if rows * cols == 0 {
            return Ok(());
        }
        let p = Self::rows_params(OP, rows, cols)?;
        let bufs = [probs, labels, dloss, &*dlogits];
        let groups = self.grid(rows * cols, WG)?;
        self.dispatch(Shader::CrossEntropyBackward, &p, &bufs, groups)
    }

    fn layer_norm(
        &self,
        x: &GpuBuffer,
        gamma: &GpuBuffer,
        beta: &GpuBuffer,
        y: &mut GpuBuffer,
        stats: &mut GpuBuffer,
        rows: usize,
        cols: usize,
        eps: f32,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode layer_norm");
        self.layer_norm_impl([x, gamma, beta], y, stats, rows, cols, eps)
    }

    fn layer_norm_backward(
        &self,
        x: &GpuBuffer,
        gamma: &GpuBuffer,
        stats: &GpuBuffer,
        dy: &GpuBuffer,
        dx: &mut GpuBuffer,
        dgamma: &mut GpuBuffer,
        dbeta: &mut GpuBuffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode layer_norm_backward");
        self.layer_norm_backward_impl([x, gamma, stats, dy], dx, dgamma, dbeta, rows, cols)
    }

    fn gather(
        &self,
        spec: &GatherSpec,
        x: &GpuBuffer,
        idx: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode gather");
        self.gather_impl(spec, x, idx, out)
    }

    fn scatter_add(
        &self,
        spec: &GatherSpec,
        dy: &GpuBuffer,
        idx: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode scatter_add");
        self.scatter_add_impl(spec, dy, idx, dx)
    }

    fn copy_into(
        &self,
        src: &GpuBuffer,
        dst: &mut GpuBuffer,
        layout: &StridedLayout,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode copy_into");
        self.copy_into_impl(src, dst, layout)
    }

    fn select(
        &self,
        layout: &SelectLayout,
        cond: &GpuBuffer,
        a: &GpuBuffer,
        b: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode select");
        self.select_impl(layout, cond, a, b, out)
    }

    fn compare(
        &self,
        op: CompareOp,
        dtype: DType,
        layout: &BinaryLayout,
        lhs: &GpuBuffer,
        rhs: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode compare");
        self.compare_impl(op, dtype, layout, lhs, rhs, out)
    }

    fn triangle(
        &self,
        x: &GpuBuffer,
        out: &mut GpuBuffer,
        rows: usize,
        cols: usize,
        diagonal: i64,
        upper: bool,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode triangle");
        self.triangle_impl(x, out, rows, cols, diagonal, upper)
    }

    fn arange(&self, out: &mut GpuBuffer, start: u32, step: u32) -> Result<()> {
        self.arange_impl(out, start, step)
    }

    fn cast(&self, x: &GpuBuffer, from: DType, to: DType, out: &mut GpuBuffer) -> Result<()> {
        let _span = trace::span("gpu", "encode cast");
        self.cast_impl(x, from, to, out)
    }

    fn pack_q8(&self, w: &Int8Rows) -> Result<(GpuBuffer, GpuBuffer)> {
        self.pack_q8_impl(w)
    }

    fn unpack_q8(&self, packed: &GpuBuffer, n: usize, k: usize) -> Result<Vec<i8>> {
        self.unpack_q8_impl(packed, n, k)
    }

    fn linear_q8(
        &self,
        spec: &Q8Spec,
        x: &GpuBuffer,
        packed: &GpuBuffer,
        scales: &GpuBuffer,
        bias: Option<&GpuBuffer>,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode linear_q8");
        self.linear_q8_impl(spec, x, packed, scales, bias, out)
    }

    fn dequantize_q8(
        &self,
        n: usize,
        k: usize,
        packed: &GpuBuffer,
        scales: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode dequantize_q8");
        self.dequantize_q8_impl(n, k, packed, scales, out)
    }

    fn round_to(&self, precision: Precision, x: &GpuBuffer, y: &mut GpuBuffer) -> Result<()> {
        let _span = trace::span("gpu", "encode round_to").arg("to", || precision.name());
        self.round_impl(precision, x, y)
    }

    fn argmax_axis(
        &self,
        x: &GpuBuffer,
        out: &mut GpuBuffer,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode argmax_axis");
        self.argmax_impl(x, out, outer, axis, inner)
    }

    fn attention(
        &self,
        spec: &AttentionSpec,
        q: &GpuBuffer,
        k: &GpuBuffer,
        v: &GpuBuffer,
        out: &mut GpuBuffer,
        lse: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode attention");
        self.attention_impl(spec, q, k, v, out, lse)
    }

    fn attention_backward(
        &self,
        spec: &AttentionSpec,
        q: &GpuBuffer,
        k: &GpuBuffer,
        v: &GpuBuffer,
        out: &GpuBuffer,
        lse: &GpuBuffer,
        dout: &GpuBuffer,
        dq: &mut GpuBuffer,
        dk: &mut GpuBuffer,
        dv: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode attention_backward");
        self.attention_backward_impl(spec, [q, k, v, out, lse, dout], dq, dk, dv)
    }

    fn im2col(&self, x: &GpuBuffer, cols: &mut GpuBuffer, g: &Window2d) -> Result<()> {
        let _span = trace::span("gpu", "encode im2col");
        validate::im2col(g, x.len, cols.len)?;
        self.window(Shader::Im2col, "im2col", g, cols.len, &[x, cols])
    }

    fn col2im(&self, cols: &GpuBuffer, x: &mut GpuBuffer, g: &Window2d) -> Result<()> {
        let _span = trace::span("gpu", "encode col2im");
        validate::col2im(g, cols.len, x.len)?;
        self.window(Shader::Col2im, "col2im", g, x.len, &[cols, x])
    }

    fn max_pool2d(
        &self,
        x: &GpuBuffer,
        y: &mut GpuBuffer,
        argmax: &mut GpuBuffer,
        g: &Window2d,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode max_pool2d");
        const OP: &str = "max_pool2d";
        validate::pool(OP, g, ("x", x.len), &[("y", y.len), ("argmax", argmax.len)])?;
        self.window(Shader::MaxPool, OP, g, y.len, &[x, y, argmax])
    }

    fn max_pool2d_backward(
        &self,
        dy: &GpuBuffer,
        argmax: &GpuBuffer,
        dx: &mut GpuBuffer,
        g: &Window2d,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode max_pool2d_backward");
        const OP: &str = "max_pool2d_backward";
        validate::pool(
            OP,
            g,
            ("dx", dx.len),
            &[("dy", dy.len), ("argmax", argmax.len)],
        )?;
        self.window(Shader::MaxPoolBackward, OP, g, dx.len, &[dy, argmax, dx])
    }

    fn avg_pool2d(&self, x: &GpuBuffer, y: &mut GpuBuffer, g: &Window2d) -> Result<()> {
        let _span = trace::span("gpu", "encode avg_pool2d");
        const OP: &str = "avg_pool2d";
        validate::pool(OP, g, ("x", x.len), &[("y", y.len)])?;
        self.window(Shader::AvgPool, OP, g, y.len, &[x, y])
    }

    fn avg_pool2d_backward(&self, dy: &GpuBuffer, dx: &mut GpuBuffer, g: &Window2d) -> Result<()> {
        let _span = trace::span("gpu", "encode avg_pool2d_backward");
        const OP: &str = "avg_pool2d_backward";
        validate::pool(OP, g, ("dx", dx.len), &[("dy", dy.len)])?;
        self.window(Shader::AvgPoolBackward, OP, g, dx.len, &[dy, dx])
    }

    fn sgd_step(
        &self,
        p: &SgdParams,
        param: &mut GpuBuffer,
        grad: &GpuBuffer,
        momentum: Option<&mut GpuBuffer>,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode sgd_step");
        validate::sgd(p, param.len, grad.len, momentum.as_ref().map(|m| m.len))?;
        if param.len == 0 {
            return Ok(());
        }
        let uses_momentum = p.momentum != 0.0;
        let params = params::Sgd {
            len: u32_of("sgd_step", "len", param.len)?,
            lr: p.lr,
            momentum: p.momentum,
            weight_decay: p.weight_decay,
            nesterov: u32::from(p.nesterov),
            _pad: [0; 3],
        };
        // Without momentum the kernel never touches its buffer, but a binding needs
        // one: a scratch buffer of one element, distinct from the bound parameter.
        let scratch;
        let buf = match momentum {
            Some(m) if uses_momentum => &*m,
            _ => {
                scratch = self.buffer(1)?;
                &scratch
            }
        };
        let groups = self.grid(param.len, WG)?;
        self.dispatch(Shader::Sgd, &params, &[&*param, grad, buf], groups)
    }

    fn adamw_step(
        &self,
        p: &AdamWParams,
        param: &mut GpuBuffer,
        grad: &GpuBuffer,
        m: &mut GpuBuffer,
        v: &mut GpuBuffer,
    ) -> Result<()> {
        let _span = trace::span("gpu", "encode adamw_step");
        validate::adamw(p, param.len, grad.len, m.len, v.len)?;
        if param.len == 0 {
            return Ok(());
        }
        let (decay, step_size, inv_sqrt_bc2) = p.folded();
        let params = params::AdamW {
            len: u32_of("adamw_step", "len", param.len)?,
            decay,
            step_size,
            beta1: p.beta1,
            beta2: p.beta2,
            inv_sqrt_bc2,
            eps: p.eps,
            _pad: 0,
        };
        let bufs = [&*param, grad, &*m, &*v];
        self.dispatch(Shader::AdamW, &params, &bufs, self.grid(param.len, WG)?)
    }
}

fn check_rank(op: &'static str, rank: usize) -> Result<()> {
    if rank > MAX_RANK {
        return Err(validate::invalid(
            op,
            format!(
                "the view has {rank} dimensions that cannot be merged; the GPU kernels take \
                 at most {MAX_RANK}"
            ),
        ));
    }
    Ok(())
}
