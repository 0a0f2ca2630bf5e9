//! The indexing and mask ops of [`GpuBackend`]: argument checks shared with the CPU,
//! then one dispatch each.

use super::params::{self, u32_of};
use super::shaders::Shader;
use super::{check_rank, GpuBackend, GpuBuffer, WG};
use crate::layout::collapse;
use crate::{
    validate, Backend, BinaryLayout, CompareOp, DType, GatherSpec, Precision, Result, SelectLayout,
    StridedLayout,
};

/// Invocations the scatter-add aims for: rows are split into this many parts per column
/// so that a narrow table (an embedding's columns) still fills the device.
const SCATTER_INVOCATIONS: usize = 1 << 16;

impl GpuBackend {
    pub(super) fn gather_impl(
        &self,
        spec: &GatherSpec,
        x: &GpuBuffer,
        idx: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "gather";
        spec.validate(OP, x.len, idx.len, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let p = params::Gather::new(OP, spec, out.len, 1)?;
        if x.len == 0 {
            // Nothing to read (every index is out of range): zeros.
            return self.fill(out, 0.0);
        }
        self.dispatch(
            Shader::Gather,
            &p,
            &[x, idx, &*out],
            self.grid(out.len, WG)?,
        )
    }

    pub(super) fn scatter_add_impl(
        &self,
        spec: &GatherSpec,
        dy: &GpuBuffer,
        idx: &GpuBuffer,
        dx: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "scatter_add";
        spec.validate(OP, dx.len, idx.len, dy.len)?;
        if dx.len == 0 {
            return Ok(());
        }
        if dy.len == 0 {
            return self.fill(dx, 0.0);
        }
        let columns = spec.outer * spec.inner;
        let parts = SCATTER_INVOCATIONS.div_ceil(columns).clamp(1, spec.n);
        let len = columns * parts;
        let p = params::Gather::new(OP, spec, len, parts)?;
        self.dispatch(
            Shader::ScatterAdd,
            &p,
            &[dy, idx, &*dx],
            self.grid(len, WG)?,
        )
    }

    pub(super) fn copy_into_impl(
        &self,
        src: &GpuBuffer,
        dst: &mut GpuBuffer,
        layout: &StridedLayout,
    ) -> Result<()> {
        const OP: &str = "copy_into";
        validate::copy_into(layout, src.len, dst.len)?;
        if src.len == 0 {
            return Ok(());
        }
        let (shape, strides) = collapse(&layout.shape, &[&layout.strides]);
        check_rank(OP, shape.len())?;
        let p = params::CopyStrided {
            len: u32_of(OP, "len", src.len)?,
            rank: shape.len() as u32,
            offset: u32_of(OP, "offset", layout.offset)?,
            _pad: 0,
            shape: params::dims(OP, "shape", &shape)?,
            strides: params::dims(OP, "stride", &strides[0])?,
        };
        self.dispatch(Shader::CopyInto, &p, &[src, &*dst], self.grid(src.len, WG)?)
    }

    pub(super) fn select_impl(
        &self,
        layout: &SelectLayout,
        cond: &GpuBuffer,
        a: &GpuBuffer,
        b: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "select";
        layout.validate(cond.len, a.len, b.len, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let (shape, st) = collapse(
            &layout.shape,
            &[&layout.cond_strides, &layout.a_strides, &layout.b_strides],
        );
        check_rank(OP, shape.len())?;
        let p = params::Select {
            len: u32_of(OP, "len", out.len)?,
            rank: shape.len() as u32,
            _pad: [0; 2],
            shape: params::dims(OP, "shape", &shape)?,
            cond_strides: params::dims(OP, "stride", &st[0])?,
            a_strides: params::dims(OP, "stride", &st[1])?,
            b_strides: params::dims(OP, "stride", &st[2])?,
        };
        self.dispatch(
            Shader::Select,
            &p,
            &[cond, a, b, &*out],
            self.grid(out.len, WG)?,
        )
    }

    pub(super) fn compare_impl(
        &self,
        op: CompareOp,
        dtype: DType,
        layout: &BinaryLayout,
        lhs: &GpuBuffer,
        rhs: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "compare";
        crate::index::compare(dtype, layout, lhs.len, rhs.len, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let (shape, st) = collapse(&layout.shape, &[&layout.lhs_strides, &layout.rhs_strides]);
        check_rank(OP, shape.len())?;
        let p = params::Compare {
            len: u32_of(OP, "len", out.len)?,
            rank: shape.len() as u32,
            op: params::compare_code(op),
            is_f32: u32::from(dtype == DType::F32),
            shape: params::dims(OP, "shape", &shape)?,
            lhs_strides: params::dims(OP, "stride", &st[0])?,
            rhs_strides: params::dims(OP, "stride", &st[1])?,
        };
        self.dispatch(
            Shader::Compare,
            &p,
            &[lhs, rhs, &*out],
            self.grid(out.len, WG)?,
        )
    }

    pub(super) fn triangle_impl(
        &self,
        x: &GpuBuffer,
        out: &mut GpuBuffer,
        rows: usize,
        cols: usize,
        diagonal: i64,
        upper: bool,
    ) -> Result<()> {
        const OP: &str = "triangle";
        crate::index::triangle(x.len, out.len, rows, cols)?;
        if out.len == 0 {
            return Ok(());
        }
        // Beyond +-(rows + cols) every diagonal keeps all or nothing.
        let bound = (rows + cols) as i64;
        let p = params::Triangle {
            len: u32_of(OP, "len", out.len)?,
            rows: u32_of(OP, "rows", rows)?,
            cols: u32_of(OP, "cols", cols)?,
            diagonal: diagonal.clamp(-bound, bound) as i32,
            upper: u32::from(upper),
            _pad: [0; 3],
        };
        self.dispatch(Shader::Triangle, &p, &[x, &*out], self.grid(out.len, WG)?)
    }

    pub(super) fn arange_impl(&self, out: &mut GpuBuffer, start: u32, step: u32) -> Result<()> {
        if out.len == 0 {
            return Ok(());
        }
        let p = params::Words4 {
            len: u32_of("arange", "len", out.len)?,
            a: start,
            b: step,
            _pad: 0,
        };
        self.dispatch(Shader::Arange, &p, &[&*out], self.grid(out.len, WG)?)
    }

    pub(super) fn cast_impl(
        &self,
        x: &GpuBuffer,
        from: DType,
        to: DType,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "cast";
        let n = crate::index::cast(x.len, from, to, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        let mode = match (from, to) {
            (DType::U32, DType::F32) => 0,
            (DType::F32, DType::U32) => 1,
            (DType::F32, DType::Bf16) => 4,
            (DType::F32, DType::F16) => 5,
            (DType::Bf16, DType::F32) => 6,
            (DType::F16, DType::F32) => 7,
            _ => {
                let layout = StridedLayout::contiguous(&[x.len]);
                return self.copy_strided(x, &layout, out);
            }
        };
        self.cast_kernel(OP, x, out, mode, u32_of(OP, "elements", n)?)
    }

    /// The cast kernel (cast.wgsl) in `mode` over `out`'s words, of `n` elements.
    fn cast_kernel(
        &self,
        op: &'static str,
        x: &GpuBuffer,
        out: &mut GpuBuffer,
        mode: u32,
        n: u32,
    ) -> Result<()> {
        let p = params::Words4 {
            len: u32_of(op, "len", out.len)?,
            a: mode,
            b: n,
            _pad: 0,
        };
        self.dispatch(Shader::Cast, &p, &[x, &*out], self.grid(out.len, WG)?)
    }

    /// Each value rounded to `precision` and back: the cast kernel's modes 2 and 3.
    pub(super) fn round_impl(
        &self,
        precision: Precision,
        x: &GpuBuffer,
        out: &mut GpuBuffer,
    ) -> Result<()> {
        const OP: &str = "round_to";
        crate::error::check_len(OP, "out", x.len, out.len)?;
        if out.len == 0 {
            return Ok(());
        }
        if !precision.is_reduced() {
            let layout = StridedLayout::contiguous(&[x.len]);
            return self.copy_strided(x, &layout, out);
        }
        let n = u32_of(OP, "len", x.len)?;
        self.cast_kernel(OP, x, out, 1 + super::shaders::format_code(precision), n)
    }

    pub(super) fn argmax_impl(
        &self,
        x: &GpuBuffer,
        out: &mut GpuBuffer,
        outer: usize,
        axis: usize,
        inner: usize,
    ) -> Result<()> {
        const OP: &str = "argmax";
        crate::index::argmax_axis(x.len, out.len, outer, axis, inner)?;
        if out.len == 0 {
            return Ok(());
        }
        u32_of(OP, "elements", x.len)?;
        let p = params::Words4 {
            len: u32_of(OP, "len", out.len)?,
            a: u32_of(OP, "axis", axis)?,
            b: u32_of(OP, "inner", inner)?,
            _pad: 0,
        };
        self.dispatch(Shader::Argmax, &p, &[x, &*out], self.grid(out.len, WG)?)
    }
}
