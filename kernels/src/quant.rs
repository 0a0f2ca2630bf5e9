//! Int8 weights for inference: symmetric, one scale per output row (per output channel,
//! as PyTorch's `per_channel_symmetric` and ONNX's `QuantizeLinear` with an axis).
//!
//! A row `w` of a `[rows, cols]` weight is stored as `q = round(w / s)` in `-127..=127`
//! with `s = max|w| / 127`, so `w ≈ q * s` to within half a step. Activations are not
//! stored: a backend's [`Backend::linear_q8`](crate::Backend::linear_q8) meets them as
//! f32 (the GPU dequantizes the weights in its loads; the CPU quantizes each activation
//! row on the fly and runs integer dot products).

use crate::{KernelError, Result};

/// The largest inner dimension the int8 product takes: the CPU's 32-bit integer sums of
/// `u8 x i8` products cannot overflow below it (`255 * 127 * 65536 < 2^31`).
pub const Q8_MAX_K: usize = 65_536;

const OP: &str = "int8 weights";

/// A `[rows, cols]` weight in int8, row by row, with each row's scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Rows {
    rows: usize,
    cols: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
}

impl Int8Rows {
    /// Quantizes `values` (`rows * cols`, row-major) row by row. A row of zeros gets
    /// scale 0; a value that is not finite is an error (it has no int8 step).
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Result<Int8Rows> {
        check_dims(rows, cols, values.len(), "values")?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::InvalidArgument {
                op: OP,
                reason: format!(
                    "cannot quantize a weight holding {} (at row {}, column {})",
                    values[i],
                    i / cols,
                    i % cols
                ),
            });
        }
        let mut q = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(rows);
        for row in values.chunks_exact(cols) {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            scales.push(scale);
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            q.extend(
                row.iter()
                    .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8),
            );
        }
        Ok(Int8Rows {
            rows,
            cols,
            values: q,
            scales,
        })
    }

    /// Int8 values and scales as a file holds them, checked: the counts, no `-128` (the
    /// format is symmetric) and finite, non-negative scales.
    pub fn new(rows: usize, cols: usize, values: Vec<i8>, scales: Vec<f32>) -> Result<Int8Rows> {
        check_dims(rows, cols, values.len(), "int8 values")?;
        if scales.len() != rows {
            return Err(KernelError::InvalidArgument {
                op: OP,
                reason: format!(
                    "an int8 weight of {rows} rows needs {rows} scales, got {}",
                    scales.len()
                ),
            });
        }
        if values.contains(&i8::MIN) {
            return Err(KernelError::InvalidArgument {
                op: OP,
                reason: "int8 weights are symmetric (-127..=127); -128 is not a valid value".into(),
            });
        }
        if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
            return Err(KernelError::InvalidArgument {
                op: OP,
                reason: format!("an int8 weight's scales are finite and not negative, got {s}"),
            });
        }
        Ok(Int8Rows {
            rows,
            cols,
            values,
            scales,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The int8 values, row-major.
    pub fn values(&self) -> &[i8] {
        &self.values
    }

    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The f32 values the weight stands for, `q * scale`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .chunks_exact(self.cols)
            .zip(&self.scales)
            .flat_map(|(row, &s)| row.iter().map(move |&q| f32::from(q) * s))
            .collect()
    }
}

fn check_dims(rows: usize, cols: usize, len: usize, what: &str) -> Result<()> {
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(len) {
        return Err(KernelError::InvalidArgument {
            op: OP,
            reason: format!(
                "an int8 weight of {rows}x{cols} (neither zero) cannot hold {len} {what}"
            ),
        });
    }
    Ok(())
}

/// `out[m, n] = act(sum_k x[m, k] * w[n, k] * scale[n] + bias[n])`: a linear layer's
/// forward pass over int8 weights `w` stored `[n, k]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Q8Spec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A ReLU on the output (after the bias).
    pub relu: bool,
}

impl Q8Spec {
    /// Checks the shape against the lengths of `x`, the bias (if any) and `out`.
    pub fn check(&self, x: usize, bias: Option<usize>, out: usize) -> Result<()> {
        let Q8Spec { m, n, k, .. } = *self;
        if n == 0 || k == 0 || k > Q8_MAX_K {
            return Err(KernelError::InvalidArgument {
                op: OP,
                reason: format!(
                    "linear_q8: int8 weights of {n}x{k} (k at most {Q8_MAX_K}, neither zero)"
                ),
            });
        }
        let (Some(mk), Some(mn)) = (m.checked_mul(k), m.checked_mul(n)) else {
            return Err(KernelError::InvalidArgument {
                op: OP,
                reason: format!("linear_q8: {m} rows of {k} -> {n} overflow the address space"),
            });
        };
        let want = [(x, mk, "inputs"), (out, mn, "outputs")];
        for (got, want, what) in want {
            if got != want {
                return Err(KernelError::InvalidArgument {
                    op: OP,
                    reason: format!(
                        "linear_q8 {m}x{k} -> {m}x{n}: {what} hold {got} values, expected {want}"
                    ),
                });
            }
        }
        match bias {
            Some(b) if b != n => Err(KernelError::InvalidArgument {
                op: OP,
                reason: format!("linear_q8: a bias of {b} values for {n} outputs"),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_within_half_a_step_and_keeps_each_rows_extreme() {
        let w = [0.5, -1.0, 0.25, 0.0, 3.0, -0.01, 0.0, 0.0, 0.0];
        let q = Int8Rows::quantize(&w, 3, 3).unwrap();
        assert_eq!(q.values()[1], -127);
        assert_eq!(q.values()[4], 127);
        assert_eq!(q.scales()[2], 0.0);
        for (i, (a, b)) in w.iter().zip(q.dequantize()).enumerate() {
            let step = q.scales()[i / 3];
            assert!((a - b).abs() <= step / 2.0 + 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_weights_are_errors() {
        assert!(Int8Rows::quantize(&[1.0, f32::NAN], 1, 2).is_err());
        assert!(Int8Rows::quantize(&[1.0, 2.0], 2, 2).is_err());
        assert!(Int8Rows::new(1, 2, vec![1, -128], vec![1.0]).is_err());
        assert!(Int8Rows::new(1, 2, vec![1, 2], vec![-1.0]).is_err());
        assert!(Int8Rows::new(1, 2, vec![1, 2], vec![]).is_err());
    }
}
