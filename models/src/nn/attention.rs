//! Multi-head self-attention and the pre-LayerNorm transformer block, laid out and named
//! as GPT-2's (`attn.c_attn`, `attn.c_proj`, `ln_1`, `mlp.c_fc`, `mlp.c_proj`, `ln_2`), on
//! the fused attention op.

use super::{Conv1D, Dropout, LayerNorm, Module, ModuleState, RngStream};
use ringtrain_runtime::{AttentionDropout, Device, Error, Result, Rng, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};

/// The shape and regularisation of a transformer block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockConfig {
    pub d_model: usize,
    pub n_head: usize,
    /// Each query sees only itself and earlier positions.
    pub causal: bool,
    /// Dropout of the attention weights, the residual branches and the MLP output.
    pub dropout: f32,
    /// Seeds the dropout draws (each layer offsets it).
    pub seed: u64,
    /// Weights are N(0, `init_std`^2); the projections back into the residual stream
    /// are scaled down by `1 / sqrt(2 * n_layer)`, as GPT-2's.
    pub init_std: f32,
    pub n_layer: usize,
}

impl BlockConfig {
    fn validate(&self) -> Result<()> {
        if self.d_model == 0 || self.n_head == 0 || !self.d_model.is_multiple_of(self.n_head) {
            return Err(Error::InvalidArgument(format!(
                "a transformer needs d_model divisible by n_head, got d_model {} and {} heads",
                self.d_model, self.n_head
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::InvalidArgument(format!(
                "dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Ok(())
    }

    fn proj_std(&self) -> f32 {
        self.init_std / (2.0 * self.n_layer.max(1) as f32).sqrt()
    }
}

/// Dropout of fused attention weights: a fresh seed per call in training, from the
/// layer's seed and a count of its calls (a stream a checkpoint keeps), none in
/// evaluation.
pub struct AttentionDropoutDraws {
    p: f32,
    seed: u64,
    draws: RngStream,
    training: AtomicBool,
}

impl AttentionDropoutDraws {
    pub fn new(p: f32, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&p) {
            return Err(Error::InvalidArgument(format!(
                "attention dropout must be in [0, 1), got {p}"
            )));
        }
        Ok(Self {
            p,
            seed,
            draws: RngStream::default(),
            training: AtomicBool::new(true),
        })
    }

    /// The dropout of this call, if any.
    pub fn next(&self) -> Option<AttentionDropout> {
        if self.p == 0.0 || !self.training.load(Ordering::Relaxed) {
            return None;
        }
        let call = self.draws.advance();
        let mixed = (self.seed ^ call.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Some(AttentionDropout {
            p: self.p,
            seed: (mixed >> 32) as u32 ^ mixed as u32,
        })
    }
}

impl ModuleState for AttentionDropoutDraws {
    fn named_rng_streams(&self) -> Vec<(String, RngStream)> {
        vec![("draws".into(), self.draws.clone())]
    }

    fn set_training(&self, training: bool) {
        self.training.store(training, Ordering::Relaxed);
    }
}

/// Multi-head self-attention: one fused projection to queries, keys and values
/// (`c_attn`, `[d, 3d]`), heads of `d / n_head`, the fused attention op (causal or not,
/// with dropout of its weights), and the output projection `c_proj`.
#[derive(Module)]
pub struct MultiheadAttention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    #[module(skip)]
    n_head: usize,
    #[module(skip)]
    causal: bool,
    attn_dropout: AttentionDropoutDraws,
    resid_dropout: Dropout,
}

impl MultiheadAttention {
    pub fn new(config: &BlockConfig, device: &Device, rng: &mut Rng) -> Result<Self> {
        config.validate()?;
        let d = config.d_model;
        Ok(Self {
            c_attn: Conv1D::new(d, 3 * d, config.init_std, device, rng)?,
            c_proj: Conv1D::new(d, d, config.proj_std(), device, rng)?,
            n_head: config.n_head,
            causal: config.causal,
            attn_dropout: AttentionDropoutDraws::new(config.dropout, config.seed)?,
            resid_dropout: Dropout::new(config.dropout, config.seed ^ 0x5eed)?,
        })
    }

    pub fn n_head(&self) -> usize {
        self.n_head
    }
}

impl Module for MultiheadAttention {
    /// `x`: `[batch, time, d_model]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let d = self.c_proj.out_features();
        let &[b, t, width] = x.dims() else {
            return Err(Error::InvalidShape {
                op: "MultiheadAttention",
                reason: format!("expected [batch, time, {d}], got shape {}", x.shape()),
            });
        };
        if width != d {
            return Err(Error::InvalidShape {
                op: "MultiheadAttention",
                reason: format!("expected [batch, time, {d}], got shape {}", x.shape()),
            });
        }
        let (h, hd) = (self.n_head, d / self.n_head);
        let qkv = self.c_attn.forward(x)?.reshape((b, t, 3, h, hd))?;
        // [3, b, h, t, hd]: one copy, then the three are slices of it.
        let qkv = qkv.permute(&[2, 0, 3, 1, 4])?;
        let parts = qkv.chunk(3, 0)?;
        let [q, k, v] = [0, 1, 2].map(|i| parts[i].reshape((b, h, t, hd)));
        let y = Tensor::scaled_dot_product_attention(
            &q?,
            &k?,
            &v?,
            self.causal,
            self.attn_dropout.next(),
        )?;
        let y = y.permute(&[0, 2, 1, 3])?.reshape((b, t, d))?;
        self.resid_dropout.forward(&self.c_proj.forward(&y)?)
    }
}

/// The MLP of a transformer block: `c_proj(gelu(c_fc(x)))` with a `4 d` hidden layer
/// (GELU in GPT-2's tanh form), then dropout.
#[derive(Module)]
pub struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    dropout: Dropout,
}

impl Mlp {
    pub fn new(config: &BlockConfig, device: &Device, rng: &mut Rng) -> Result<Self> {
        config.validate()?;
        let d = config.d_model;
        Ok(Self {
            c_fc: Conv1D::new(d, 4 * d, config.init_std, device, rng)?,
            c_proj: Conv1D::new(4 * d, d, config.proj_std(), device, rng)?,
            dropout: Dropout::new(config.dropout, config.seed ^ 0xd20b)?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.dropout
            .forward(&self.c_proj.forward(&self.c_fc.forward(x)?.gelu()?)?)
    }
}

/// A pre-LayerNorm transformer block, GPT-2's: `x + attn(ln_1(x))`, then
/// `x + mlp(ln_2(x))`.
#[derive(Module)]
pub struct TransformerBlock {
    ln_1: LayerNorm,
    attn: MultiheadAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl TransformerBlock {
    pub fn new(config: &BlockConfig, device: &Device, rng: &mut Rng) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::new(config.d_model, device)?,
            attn: MultiheadAttention::new(config, device, rng)?,
            ln_2: LayerNorm::new(config.d_model, device)?,
            mlp: Mlp::new(config, device, rng)?,
        })
    }
}

impl Module for TransformerBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.add(&self.attn.forward(&self.ln_1.forward(x)?)?)?;
        x.add(&self.mlp.forward(&self.ln_2.forward(&x)?)?)
    }
}
