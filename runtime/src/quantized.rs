//! Weights stored compactly for inference: int8 (symmetric, one scale per output row)
//! or f16 / bf16, inside a parameter that still reads as an f32 tensor.
//!
//! [`Var::quantize`] (or [`Var::set_int8`], from a checkpoint) swaps a parameter's
//! storage for the compact form in place, so a model built by its usual code runs on the
//! compact weights with no change to that code: a linear layer's product runs on int8
//! weights directly ([`Backend::linear_q8`]) when
//! no gradient is being recorded, and every other op that takes a weight (a convolution,
//! a `matmul`, a linear layer while training) widens it to a transient f32 copy first.
//! An op that would write it (an optimizer's step) gets an error saying it is quantized;
//! [`Var::set`] gives it f32 storage again.

use crate::device::{on_device, wrap, DeviceBackend, Storage};
use crate::{DType, Error, Result, Tensor, Var};
use ringtrain_kernels::{Backend, Int8Rows, Precision};
use std::fmt;
use std::str::FromStr;

/// A compact format for a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quantization {
    /// Int8, symmetric, one f32 scale per output row (`dims[0]`): a quarter of f32's
    /// memory, and integer products on the CPU.
    Int8,
    /// IEEE half precision: half of f32's memory, products in f32.
    F16,
    /// bfloat16: half of f32's memory, products in f32.
    Bf16,
}

impl Quantization {
    pub const ALL: [Quantization; 3] = [Quantization::Int8, Quantization::F16, Quantization::Bf16];

    pub fn name(self) -> &'static str {
        match self {
            Quantization::Int8 => "int8",
            Quantization::F16 => "f16",
            Quantization::Bf16 => "bf16",
        }
    }

    /// The 16-bit float format, for f16 and bf16.
    pub fn half(self) -> Option<Precision> {
        match self {
            Quantization::Int8 => None,
            Quantization::F16 => Some(Precision::F16),
            Quantization::Bf16 => Some(Precision::Bf16),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Quantization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Quantization::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown quantization `{s}`: expected int8, f16 or bf16"
                ))
            })
    }
}

/// A weight's compact storage: the backend's buffers and the `[rows, cols]` view of the
/// tensor they hold (rows are `dims[0]`, the output channels).
pub(crate) struct Packed {
    pub format: Quantization,
    pub values: Storage,
    /// Int8's per-row scales.
    pub scales: Option<Storage>,
    pub rows: usize,
    pub cols: usize,
}

/// `[rows, cols]` of a weight: its first dimension by the rest.
fn rows_cols(t: &Tensor, op: &str) -> Result<(usize, usize)> {
    match t.dims() {
        [rows, rest @ ..] if !rest.is_empty() && *rows > 0 && t.elem_count() > 0 => {
            Ok((*rows, t.elem_count() / rows))
        }
        _ => Err(Error::InvalidArgument(format!(
            "{op}: an int8 weight has at least two dimensions and no zero one (one scale per \
             row of its first), got shape {}",
            t.shape()
        ))),
    }
}

impl Tensor {
    /// The compact format this tensor's values are stored in, if they are (see
    /// [`Var::quantize`]).
    pub fn quantization(&self) -> Option<Quantization> {
        match &*self.read() {
            Storage::Packed(p) => Some(p.format),
            _ => None,
        }
    }

    /// The f32 values of a quantized tensor as a new tensor (`self` when it is not
    /// quantized): what an op that cannot read the compact form runs on.
    pub fn dequantized(&self) -> Result<Tensor> {
        let storage = {
            let guard = self.read();
            let Storage::Packed(p) = &*guard else {
                return Ok(self.clone());
            };
            on_device!(self.device(), b => {
                let mut out = b.alloc(p.rows * p.cols)?;
                match p.format.half() {
                    Some(precision) => {
                        let dtype = DType::from_precision(precision);
                        b.cast(inner(b, &p.values)?, dtype, DType::F32, &mut out)?;
                    }
                    None => {
                        let scales = p.scales.as_ref().ok_or_else(missing_scales)?;
                        b.dequantize_q8(p.rows, p.cols, inner(b, &p.values)?, inner(b, scales)?, &mut out)?;
                    }
                }
                wrap(b, out)
            })
        };
        Ok(Tensor::from_storage(
            storage,
            self.shape().clone(),
            self.device().clone(),
            None,
        ))
    }

    /// Runs `f` on the int8 weight's buffers when this tensor is one.
    pub(crate) fn with_int8<T>(
        &self,
        f: impl FnOnce(&Storage, &Storage, usize, usize) -> Result<T>,
    ) -> Option<Result<T>> {
        match &*self.read() {
            Storage::Packed(p) if p.format == Quantization::Int8 => {
                let scales = p.scales.as_ref()?;
                Some(f(&p.values, scales, p.rows, p.cols))
            }
            _ => None,
        }
    }
}

fn missing_scales() -> Error {
    Error::InvalidArgument("an int8 weight without its scales".into())
}

/// The buffer inside a packed weight's parts (plain storage of the backend's kind).
pub(crate) fn inner<'a, B: DeviceBackend>(_: &B, s: &'a Storage) -> Result<&'a B::Buffer> {
    B::buffer(s)
}

impl Var {
    /// Stores this parameter's current values in `format`, in place: every handle to
    /// it (the layer that holds it) then runs on the compact form. Int8 takes one scale
    /// per row of the first dimension (a linear layer's output, a convolution's output
    /// channel) and needs at least two dimensions; a value that is not finite is an
    /// error.
    pub fn quantize(&self, format: Quantization) -> Result<()> {
        match format.half() {
            Some(precision) => {
                let half = self
                    .dequantized()?
                    .to_dtype(DType::from_precision(precision))?;
                // The words of the 16-bit copy, taken out of it.
                let values = match &mut *half.write() {
                    Storage::Half(words) => {
                        std::mem::replace(&mut **words, Storage::Cpu(Vec::new()))
                    }
                    _ => return Err(Error::InvalidArgument("quantize: no 16-bit words".into())),
                };
                self.set_packed(Packed {
                    format,
                    values,
                    scales: None,
                    rows: 1,
                    cols: self.elem_count(),
                })
            }
            None => {
                let (rows, cols) = rows_cols(self, "quantize")?;
                let w = Int8Rows::quantize(&self.to_vec()?, rows, cols)?;
                self.set_int8(&w)
            }
        }
    }

    /// Stores `w` (int8 values and scales, a checkpoint's) as this parameter's values,
    /// in place; `w` is `[dims[0], rest]` of the parameter's shape.
    pub fn set_int8(&self, w: &Int8Rows) -> Result<()> {
        let (rows, cols) = rows_cols(self, "set_int8")?;
        if (w.rows(), w.cols()) != (rows, cols) {
            return Err(Error::InvalidArgument(format!(
                "set_int8: an int8 weight of {}x{} for a parameter of shape {} ({rows}x{cols})",
                w.rows(),
                w.cols(),
                self.shape()
            )));
        }
        let (values, scales) = on_device!(self.device(), b => {
            let (values, scales) = b.pack_q8(w)?;
            (wrap(b, values), wrap(b, scales))
        });
        self.set_packed(Packed {
            format: Quantization::Int8,
            values,
            scales: Some(scales),
            rows,
            cols,
        })
    }

    /// The int8 values and scales of an int8 parameter (to save them).
    pub fn int8(&self) -> Result<Option<Int8Rows>> {
        let guard = self.read();
        let Storage::Packed(p) = &*guard else {
            return Ok(None);
        };
        let Some(scales) = &p.scales else {
            return Ok(None);
        };
        on_device!(self.device(), b => {
            let values = b.unpack_q8(inner(b, &p.values)?, p.rows, p.cols)?;
            let scales = b.download(inner(b, scales)?)?;
            Ok(Some(Int8Rows::new(p.rows, p.cols, values, scales)?))
        })
    }

    fn set_packed(&self, packed: Packed) -> Result<()> {
        *self.as_tensor().write() = Storage::Packed(Box::new(packed));
        Ok(())
    }
}
