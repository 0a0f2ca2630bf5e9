use super::Module;
use ringtrain_runtime::{DType, Device, Error, Result, Rng, Tensor, Var};

/// A table of `vocab` vectors of `dim` values, looked up by index: a u32 tensor of any
/// shape gives outputs of that shape plus `dim`. The lookup is a gather on the device
/// (`index_select`), its gradient a deterministic scatter-add; the indices are never read
/// back to the host (their range is known from how they were made, see
/// [`Tensor::index_select`]). Weight initialised N(0, 1), as PyTorch's.
#[derive(Module)]
pub struct Embedding {
    weight: Var,
}

impl Embedding {
    pub fn new(vocab: usize, dim: usize, device: &Device, rng: &mut Rng) -> Result<Self> {
        Self::with_std(vocab, dim, 1.0, device, rng)
    }

    /// A table initialised N(0, `std`^2) (GPT-2 uses 0.02).
    pub fn with_std(
        vocab: usize,
        dim: usize,
        std: f32,
        device: &Device,
        rng: &mut Rng,
    ) -> Result<Self> {
        if vocab == 0 || dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "Embedding needs a vocabulary and a dimension, got {vocab} x {dim}"
            )));
        }
        let w = Tensor::randn(0.0, std, (vocab, dim), rng, device)?;
        Ok(Self {
            weight: Var::from_tensor(&w)?,
        })
    }

    /// A table from an existing `[vocab, dim]` weight (pretrained vectors, or a `Var`
    /// shared with an output layer to tie the two).
    pub fn from_weight(weight: Var) -> Result<Self> {
        let (vocab, dim) = weight.shape().dims2("Embedding weight")?;
        if vocab == 0 || dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "Embedding needs a vocabulary and a dimension, got weight {}",
                weight.shape()
            )));
        }
        Ok(Self { weight })
    }

    pub fn weight(&self) -> &Var {
        &self.weight
    }

    pub fn vocab(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Embedding {
    /// `indices`: u32 of any shape. f32 indices (whole numbers) are accepted too, but are
    /// read back to the host to be checked and converted: use u32 tensors.
    fn forward(&self, indices: &Tensor) -> Result<Tensor> {
        let ids = match indices.dtype() {
            DType::U32 => indices.clone(),
            DType::F32 | DType::F16 | DType::Bf16 => {
                let values = indices.to_vec()?;
                let vocab = self.vocab();
                if let Some(row) = values
                    .iter()
                    .position(|&i| i.fract() != 0.0 || i < 0.0 || i >= vocab as f32)
                {
                    return Err(Error::InvalidArgument(format!(
                        "Embedding: index {} at position {row} is not in 0..{vocab}",
                        values[row]
                    )));
                }
                let ids = values.iter().map(|&i| i as u32).collect();
                Tensor::from_u32(ids, indices.shape().clone(), indices.device())?
            }
        };
        self.weight
            .as_tensor()
            .index_select(0, &ids)
            .map_err(|e| match e {
                Error::InvalidArgument(msg) => {
                    Error::InvalidArgument(format!("Embedding of {} rows: {msg}", self.vocab()))
                }
                other => other,
            })
    }
}
