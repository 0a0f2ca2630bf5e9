use super::Module;
use ringtrain_runtime::{Device, Error, Result, Rng, Tensor, Var};

/// A table of `vocab` vectors of `dim` values, looked up by index: inputs of any shape
/// holding indices (as f32, exact below 2^24) give outputs of that shape plus `dim`. The
/// lookup runs as a one-hot matrix times the table, so its gradient is the GEMM's; that
/// costs `rows x vocab` memory and reads the indices back to the host, which suits
/// vocabularies of thousands, not millions. Weight initialised N(0, 1), as PyTorch's.
#[derive(Module)]
pub struct Embedding {
    weight: Var,
}

impl Embedding {
    pub fn new(vocab: usize, dim: usize, device: &Device, rng: &mut Rng) -> Result<Self> {
        if vocab == 0 || dim == 0 {
            return Err(Error::InvalidArgument(format!(
                "Embedding needs a vocabulary and a dimension, got {vocab} x {dim}"
            )));
        }
        let w = Tensor::randn(0.0, 1.0, (vocab, dim), rng, device)?;
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
}

impl Module for Embedding {
    fn forward(&self, indices: &Tensor) -> Result<Tensor> {
        let (vocab, dim) = (self.weight.dims()[0], self.weight.dims()[1]);
        let idx = indices.to_vec()?;
        let mut onehot = vec![0.0f32; idx.len() * vocab];
        for (row, &i) in idx.iter().enumerate() {
            if i.fract() != 0.0 || i < 0.0 || i >= vocab as f32 {
                return Err(Error::InvalidArgument(format!(
                    "Embedding: index {i} at position {row} is not in 0..{vocab}"
                )));
            }
            onehot[row * vocab + i as usize] = 1.0;
        }
        let rows = Tensor::from_vec(onehot, (idx.len(), vocab), indices.device())?;
        let mut shape = indices.dims().to_vec();
        shape.push(dim);
        rows.matmul(&self.weight)?.reshape(shape)
    }
}
