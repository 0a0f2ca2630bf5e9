//! Specs of the indexing, masking and attention kernels: element types, gathers by an
//! index buffer, three-operand selects, comparisons and fused attention. Every buffer is
//! a run of 4-byte words; what a word means (f32, u32, or two 16-bit values) is the op's
//! to say.

use crate::error::check_len;
use crate::validate::invalid;
use crate::{saturating_product, BinaryLayout, Result, StridedLayout};

/// What the 4-byte words of a buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    /// Indices, labels and masks (0 or 1).
    U32,
    /// IEEE binary16, two to a word: element `2i` in the low half of word `i`, `2i + 1`
    /// in the high half (the little-endian layout of a `u16` array), an odd count's last
    /// high half zero.
    F16,
    /// bfloat16 (the high half of an f32), laid out as [`DType::F16`].
    Bf16,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::U32 => "u32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }

    /// Words a buffer of `n` elements of this type takes.
    pub fn words(self, n: usize) -> usize {
        match self.size() {
            2 => n.div_ceil(2),
            _ => n,
        }
    }

    /// The type that stores values of `precision`.
    pub fn from_precision(precision: crate::Precision) -> DType {
        match precision {
            crate::Precision::F32 => DType::F32,
            crate::Precision::Bf16 => DType::Bf16,
            crate::Precision::F16 => DType::F16,
        }
    }

    /// The 16-bit floating-point format this type stores, if it is one.
    pub fn half(self) -> Option<crate::Precision> {
        match self {
            DType::F16 => Some(crate::Precision::F16),
            DType::Bf16 => Some(crate::Precision::Bf16),
            DType::F32 | DType::U32 => None,
        }
    }
}

impl From<crate::Precision> for DType {
    /// The storage type of a precision's values.
    fn from(p: crate::Precision) -> DType {
        match p {
            crate::Precision::F32 => DType::F32,
            crate::Precision::F16 => DType::F16,
            crate::Precision::Bf16 => DType::Bf16,
        }
    }
}

/// Checks a cast's buffers and returns its element count: the same number of words for
/// f32 and u32 each way, or f32 to and from a 16-bit type (half as many words, rounded
/// up), whose count is the f32 side's. Casts between two 16-bit types, and between u32
/// and one, are not kernels: they go through f32.
pub fn cast(x_len: usize, from: DType, to: DType, out_len: usize) -> Result<usize> {
    const OP: &str = "cast";
    let n = match (from.half(), to.half()) {
        (None, None) => x_len,
        (None, Some(_)) if from == DType::F32 => x_len,
        (Some(_), None) if to == DType::F32 => out_len,
        _ => {
            return Err(invalid(
                OP,
                format!("no kernel casts {from} to {to}; go through f32"),
            ))
        }
    };
    check_len(OP, "x", from.words(n), x_len)?;
    check_len(OP, "out", to.words(n), out_len)?;
    Ok(n)
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Comparisons, each producing a u32 mask of 0 and 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CompareOp {
    pub fn eval<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CompareOp::Eq => a == b,
            CompareOp::Ne => a != b,
            CompareOp::Lt => a < b,
            CompareOp::Le => a <= b,
            CompareOp::Gt => a > b,
            CompareOp::Ge => a >= b,
        }
    }
}

/// A gather along the middle axis of `x` viewed as `[outer, n, inner]`:
/// `out[o, j, i] = x[o, idx[o, j, i], i]` for `out` of shape `[outer, m, inner]`, the
/// index read at `o * idx_strides[0] + j * idx_strides[1] + i * idx_strides[2]`
/// (an embedding lookup, `index_select`, shares one index per row: strides `[0, 1, 0]`).
/// An index `>= n` reads 0; callers check ranges before they launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatherSpec {
    pub outer: usize,
    pub n: usize,
    pub m: usize,
    pub inner: usize,
    pub idx_strides: [usize; 3],
}

impl GatherSpec {
    /// `index_select`: one index per position of the axis.
    pub fn select(outer: usize, n: usize, m: usize, inner: usize) -> Self {
        Self {
            outer,
            n,
            m,
            inner,
            idx_strides: [0, 1, 0],
        }
    }

    /// `gather`: an index per output element (the index is `[outer, m, inner]` itself).
    pub fn per_element(outer: usize, n: usize, m: usize, inner: usize) -> Self {
        Self {
            outer,
            n,
            m,
            inner,
            idx_strides: [m * inner, inner, 1],
        }
    }

    pub fn src_len(&self) -> usize {
        saturating_product(&[self.outer, self.n, self.inner])
    }

    pub fn out_len(&self) -> usize {
        saturating_product(&[self.outer, self.m, self.inner])
    }

    pub(crate) fn idx_span(&self) -> usize {
        StridedLayout {
            shape: vec![self.outer, self.m, self.inner],
            strides: self.idx_strides.to_vec(),
            offset: 0,
        }
        .span()
    }

    pub(crate) fn validate(
        &self,
        op: &'static str,
        src: usize,
        idx: usize,
        out: usize,
    ) -> Result<()> {
        check_len(op, "src", self.src_len(), src)?;
        check_len(op, "out", self.out_len(), out)?;
        if self.idx_span() > idx {
            return Err(invalid(op, "the index view runs past the index buffer"));
        }
        Ok(())
    }

    /// Where the index of output `(o, j, i)` is.
    #[inline]
    pub(crate) fn idx_at(&self, o: usize, j: usize, i: usize) -> usize {
        o * self.idx_strides[0] + j * self.idx_strides[1] + i * self.idx_strides[2]
    }
}

/// Operands of `out = cond ? a : b` over a contiguous output of `shape`; each operand is
/// read through its strides (0 along broadcast dimensions). `cond` is u32, nonzero true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectLayout {
    pub shape: Vec<usize>,
    pub cond_strides: Vec<usize>,
    pub a_strides: Vec<usize>,
    pub b_strides: Vec<usize>,
}

impl SelectLayout {
    pub fn elem_count(&self) -> usize {
        saturating_product(&self.shape)
    }

    pub(crate) fn validate(&self, cond: usize, a: usize, b: usize, out: usize) -> Result<()> {
        const OP: &str = "select";
        let rank = self.shape.len();
        let strides = [&self.cond_strides, &self.a_strides, &self.b_strides];
        if strides.iter().any(|s| s.len() != rank) {
            return Err(invalid(OP, "strides and shape differ in rank"));
        }
        check_len(OP, "out", self.elem_count(), out)?;
        for (s, len) in strides.iter().zip([cond, a, b]) {
            let span = StridedLayout {
                shape: self.shape.clone(),
                strides: s.to_vec(),
                offset: 0,
            }
            .span();
            if span > len {
                return Err(invalid(OP, "an operand's strides run past its buffer"));
            }
        }
        Ok(())
    }
}

pub(crate) fn compare(
    dtype: DType,
    layout: &BinaryLayout,
    lhs: usize,
    rhs: usize,
    out: usize,
) -> Result<()> {
    if dtype.half().is_some() {
        return Err(invalid(
            "compare",
            format!("compares f32 or u32 words, not {dtype}"),
        ));
    }
    crate::validate::binary(layout, lhs, rhs, out).map_err(|e| match e {
        crate::KernelError::InvalidArgument { reason, .. } => invalid("compare", reason),
        other => other,
    })
}

pub(crate) fn triangle(x: usize, out: usize, rows: usize, cols: usize) -> Result<()> {
    check_len("triangle", "out", x, out)?;
    let plane = saturating_product(&[rows, cols]);
    if plane == 0 && x != 0 || plane != 0 && !x.is_multiple_of(plane) {
        return Err(invalid(
            "triangle",
            format!("{x} elements are not whole {rows} x {cols} matrices"),
        ));
    }
    Ok(())
}

pub(crate) fn argmax_axis(
    x: usize,
    out: usize,
    outer: usize,
    axis: usize,
    inner: usize,
) -> Result<()> {
    if axis == 0 {
        return Err(invalid("argmax", "the reduced dimension is empty"));
    }
    check_len("argmax", "x", saturating_product(&[outer, axis, inner]), x)?;
    check_len("argmax", "out", saturating_product(&[outer, inner]), out)
}

/// Fused scaled dot-product attention over `batch` independent heads (batch and head
/// dimensions flattened): `q` is `[batch, tq, d]`, `k` and `v` `[batch, tk, d]`, the output
/// `[batch, tq, d]`, and the row log-sum-exp of the scaled scores `[batch, tq]` is kept
/// for the backward pass. With `causal`, query `i` sees keys `j <= i + (tk - tq)` (the
/// queries are the last `tq` positions). Dropout of the attention weights keeps each with
/// probability `1 - dropout`, decided by a counter-based hash of `(seed, batch, i, j)`,
/// so forward and backward, the CPU and the GPU, drop the same weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    pub batch: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub scale: f32,
    pub causal: bool,
    pub dropout: f32,
    pub seed: u32,
}

impl AttentionSpec {
    pub fn q_len(&self) -> usize {
        saturating_product(&[self.batch, self.tq, self.d])
    }
    pub fn kv_len(&self) -> usize {
        saturating_product(&[self.batch, self.tk, self.d])
    }
    pub fn lse_len(&self) -> usize {
        saturating_product(&[self.batch, self.tq])
    }

    /// The last key query `i` may see, plus one.
    #[inline]
    pub fn key_end(&self, i: usize) -> usize {
        if self.causal {
            (i + 1 + self.tk.saturating_sub(self.tq)).min(self.tk)
        } else {
            self.tk
        }
    }

    /// Dropout's threshold on the hash: a weight is kept when `hash >= threshold`.
    pub fn drop_threshold(&self) -> u32 {
        (f64::from(self.dropout) * 4_294_967_296.0).min(4_294_967_295.0) as u32
    }

    pub(crate) fn validate(&self, op: &'static str) -> Result<()> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                op,
                format!("dropout must be in [0, 1), got {}", self.dropout),
            ));
        }
        if !self.scale.is_finite() {
            return Err(invalid(
                op,
                format!("scale must be finite, got {}", self.scale),
            ));
        }
        if self.causal && self.tq > self.tk {
            return Err(invalid(
                op,
                format!(
                    "causal attention needs tq <= tk, got {} queries for {} keys",
                    self.tq, self.tk
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn validate_forward(
        &self,
        q: usize,
        k: usize,
        v: usize,
        out: usize,
        lse: usize,
    ) -> Result<()> {
        const OP: &str = "attention";
        self.validate(OP)?;
        check_len(OP, "q", self.q_len(), q)?;
        check_len(OP, "k", self.kv_len(), k)?;
        check_len(OP, "v", self.kv_len(), v)?;
        check_len(OP, "out", self.q_len(), out)?;
        check_len(OP, "lse", self.lse_len(), lse)
    }

    pub(crate) fn validate_backward(&self, lens: [(&'static str, usize); 9]) -> Result<()> {
        const OP: &str = "attention_backward";
        self.validate(OP)?;
        for (name, len) in lens {
            let want = match name {
                "k" | "v" | "dk" | "dv" => self.kv_len(),
                "lse" => self.lse_len(),
                _ => self.q_len(),
            };
            check_len(OP, name, want, len)?;
        }
        Ok(())
    }
}

/// The dropout hash (Wellons' lowbias32 on a counter): the same integer arithmetic in
/// `cpu/attention.rs` and `attention*.wgsl`.
#[inline]
pub fn dropout_hash(seed: u32, counter: u32) -> u32 {
    let mut x = counter ^ seed.wrapping_mul(0x9e37_79b9);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}
