//! Geometry of 2-D sliding windows over NCHW tensors: convolution (through im2col) and
//! pooling share it.

use crate::validate::invalid;
use crate::{Precision, Result};

/// A `kernel_h x kernel_w` window sliding over `batch x channels x height x width` (NCHW,
/// contiguous) with the given stride and zero padding on each side. A convolution's
/// products take their inputs in `precision` (see [`Precision`]; pooling ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window2d {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub precision: Precision,
}

impl Window2d {
    /// A window over `batch x channels` images of `size` (height, width); `kernel`,
    /// `stride` and `pad` are (vertical, horizontal), as PyTorch's tuples are.
    pub fn new(
        batch: usize,
        channels: usize,
        size: (usize, usize),
        kernel: (usize, usize),
        stride: (usize, usize),
        pad: (usize, usize),
    ) -> Self {
        Self {
            batch,
            channels,
            height: size.0,
            width: size.1,
            kernel_h: kernel.0,
            kernel_w: kernel.1,
            stride_h: stride.0,
            stride_w: stride.1,
            pad_h: pad.0,
            pad_w: pad.1,
            precision: Precision::F32,
        }
    }

    /// The same window, its convolution's products taking `precision` inputs.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// Output height: `(height + 2 pad - kernel) / stride + 1` (PyTorch's, rounding down).
    pub fn out_h(&self) -> usize {
        (self.height + 2 * self.pad_h).saturating_sub(self.kernel_h) / self.stride_h.max(1) + 1
    }

    pub fn out_w(&self) -> usize {
        (self.width + 2 * self.pad_w).saturating_sub(self.kernel_w) / self.stride_w.max(1) + 1
    }

    /// Elements of the input, `batch x channels x height x width`.
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Elements of a pooled output, `batch x channels x out_h x out_w`.
    pub fn output_len(&self) -> usize {
        self.batch * self.channels * self.out_h() * self.out_w()
    }

    /// Rows of one image's im2col matrix: `channels x kernel_h x kernel_w`.
    pub fn patch_len(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w
    }

    /// Elements of the im2col matrices of the batch: `batch x patch_len x (out_h out_w)`.
    pub fn cols_len(&self) -> usize {
        self.batch * self.patch_len() * self.out_h() * self.out_w()
    }

    /// Checks the geometry: positive kernel and stride, a window that fits the padded
    /// input, and sizes whose products do not overflow.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.kernel_h == 0 || self.kernel_w == 0 || self.stride_h == 0 || self.stride_w == 0 {
            return Err(invalid(
                op,
                format!("kernel and stride must be positive: {self:?}"),
            ));
        }
        if self.height + 2 * self.pad_h < self.kernel_h
            || self.width + 2 * self.pad_w < self.kernel_w
        {
            return Err(invalid(
                op,
                format!(
                    "a {}x{} window does not fit a {}x{} input padded by {}x{}",
                    self.kernel_h, self.kernel_w, self.height, self.width, self.pad_h, self.pad_w
                ),
            ));
        }
        let dims = [
            self.batch,
            self.channels,
            self.height + 2 * self.pad_h,
            self.width + 2 * self.pad_w,
            self.kernel_h * self.kernel_w,
        ];
        if dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1)))
            .is_none()
        {
            return Err(invalid(op, format!("sizes overflow: {self:?}")));
        }
        Ok(())
    }

    /// Pooling also needs every window to hold at least one real element (PyTorch: pad at
    /// most half the kernel).
    pub fn validate_pool(&self, op: &'static str) -> Result<()> {
        self.validate(op)?;
        if 2 * self.pad_h > self.kernel_h || 2 * self.pad_w > self.kernel_w {
            return Err(invalid(
                op,
                format!(
                    "padding {}x{} is more than half the {}x{} window",
                    self.pad_h, self.pad_w, self.kernel_h, self.kernel_w
                ),
            ));
        }
        Ok(())
    }
}
