//! GPT, GPT-2's architecture with its parameter names and layouts: a GPT-2-shaped state
//! dict (`transformer.wte.weight`, `transformer.h.0.attn.c_attn.weight` `[d, 3d]`, ...,
//! `lm_head.weight`, tied to `wte`) maps onto it one to one.

use crate::nn::{BlockConfig, Dropout, Embedding, LayerNorm, Module, TransformerBlock, Var};
use rand::Rng as _;
use ringtrain_runtime::{no_grad, DType, Device, Error, Result, Rng, Tensor};

/// The size of a GPT. [`GptConfig::gpt2`] is GPT-2 small.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptConfig {
    pub vocab_size: usize,
    /// The longest sequence (the context) the model reads.
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub d_model: usize,
    pub dropout: f32,
    /// Seeds the dropout draws.
    pub seed: u64,
}

impl GptConfig {
    /// GPT-2 small: 124M parameters.
    pub fn gpt2() -> Self {
        Self {
            vocab_size: 50257,
            block_size: 1024,
            n_layer: 12,
            n_head: 12,
            d_model: 768,
            dropout: 0.0,
            seed: 0,
        }
    }
}

/// `transformer.*`: the embeddings, the blocks and the final norm.
#[derive(Module)]
pub struct GptTransformer {
    wte: Embedding,
    wpe: Embedding,
    drop: Dropout,
    h: Vec<TransformerBlock>,
    ln_f: LayerNorm,
}

/// The output projection, tied to the token embedding (one variable, two names).
#[derive(Module)]
pub struct LmHead {
    weight: Var,
}

/// A decoder-only transformer language model: token and position embeddings, `n_layer`
/// pre-LayerNorm blocks of causal self-attention and a GELU MLP, a final LayerNorm and
/// logits through the transposed token embedding. `forward` maps u32 token ids
/// `[batch, time]` to logits `[batch, time, vocab]`.
#[derive(Module)]
pub struct Gpt {
    #[module(skip)]
    config: GptConfig,
    transformer: GptTransformer,
    lm_head: LmHead,
}

/// How [`Gpt::generate`] picks each token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Logits are divided by it; 0 picks the most likely token.
    pub temperature: f32,
    /// Only the `top_k` most likely tokens are candidates (`None`: all).
    pub top_k: Option<usize>,
}

impl Gpt {
    /// GPT-2's initialisation: weights N(0, 0.02^2), residual projections scaled by
    /// `1 / sqrt(2 n_layer)`, biases zero, LayerNorms the identity.
    pub fn new(config: GptConfig, device: &Device, rng: &mut Rng) -> Result<Self> {
        if config.vocab_size == 0 || config.block_size == 0 || config.n_layer == 0 {
            return Err(Error::InvalidArgument(format!(
                "a GPT needs a vocabulary, a context and layers, got {config:?}"
            )));
        }
        let block = |i: usize| BlockConfig {
            d_model: config.d_model,
            n_head: config.n_head,
            causal: true,
            dropout: config.dropout,
            seed: config.seed.wrapping_add(1 + i as u64),
            init_std: 0.02,
            n_layer: config.n_layer,
        };
        let wte = Embedding::with_std(config.vocab_size, config.d_model, 0.02, device, rng)?;
        let lm_head = LmHead {
            weight: wte.weight().clone(),
        };
        let transformer = GptTransformer {
            wpe: Embedding::with_std(config.block_size, config.d_model, 0.02, device, rng)?,
            wte,
            drop: Dropout::new(config.dropout, config.seed)?,
            h: (0..config.n_layer)
                .map(|i| TransformerBlock::new(&block(i), device, rng))
                .collect::<Result<_>>()?,
            ln_f: LayerNorm::new(config.d_model, device)?,
        };
        Ok(Self {
            config,
            transformer,
            lm_head,
        })
    }

    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// `prompt` (u32 `[batch, time]`) followed by `new_tokens` generated ones, each
    /// sampled on the device from the logits of the last `block_size` tokens: only the
    /// tokens come back to the host, when the caller reads them. Records no gradients;
    /// put the model in evaluation mode first (`set_training(false)`, as a trainer's
    /// evaluation does), or its dropout stays on.
    pub fn generate(
        &self,
        prompt: &Tensor,
        new_tokens: usize,
        sampling: Sampling,
        rng: &mut Rng,
    ) -> Result<Tensor> {
        prompt.expect_dtype(DType::U32, "generate")?;
        if prompt.rank() != 2 || prompt.dims()[1] == 0 {
            return Err(Error::InvalidShape {
                op: "generate",
                reason: format!(
                    "the prompt must be [batch, time] with time > 0, got {}",
                    prompt.shape()
                ),
            });
        }
        if !(sampling.temperature.is_finite() && sampling.temperature >= 0.0) {
            return Err(Error::InvalidArgument(format!(
                "the temperature must be finite and >= 0, got {}",
                sampling.temperature
            )));
        }
        if sampling.top_k == Some(0) {
            return Err(Error::InvalidArgument("top_k must be at least 1".into()));
        }
        no_grad(|| {
            let mut ids = prompt.clone();
            let batch = prompt.dims()[0];
            for _ in 0..new_tokens {
                let t = ids.dims()[1];
                let ctx = ids.narrow(
                    1,
                    t.saturating_sub(self.config.block_size),
                    t.min(self.config.block_size),
                )?;
                let logits = self.forward(&ctx)?;
                let tc = ctx.dims()[1];
                let last = logits
                    .narrow(1, tc - 1, 1)?
                    .reshape((batch, self.config.vocab_size))?;
                let next = sample(&last, sampling, rng)?;
                ids = Tensor::cat(&[&ids, &next.reshape((batch, 1))?], 1)?;
            }
            Ok(ids)
        })
    }
}

/// One token per row of `logits` (`[batch, vocab]`), as u32 `[batch]` on the device:
/// the Gumbel-max trick over the temperature-scaled logits, with everything below the
/// `top_k`-th largest masked out first. The noise is drawn on the host and uploaded.
pub fn sample(logits: &Tensor, sampling: Sampling, rng: &mut Rng) -> Result<Tensor> {
    let &[batch, vocab] = logits.dims() else {
        return Err(Error::InvalidShape {
            op: "sample",
            reason: format!("expected logits [batch, vocab], got {}", logits.shape()),
        });
    };
    if sampling.temperature == 0.0 {
        return logits.argmax_dim(-1);
    }
    let mut scaled = logits.scale(1.0 / sampling.temperature)?;
    if let Some(k) = sampling.top_k.filter(|&k| k < vocab) {
        // The k-th largest of each row: take the largest k - 1 out, then the largest left.
        let mut rest = scaled.clone();
        for _ in 1..k {
            let top = rest.max_dim(-1)?.reshape((batch, 1))?;
            rest = rest.masked_fill(&rest.ge(&top)?, f32::NEG_INFINITY)?;
        }
        let kth = rest.max_dim(-1)?.reshape((batch, 1))?;
        scaled = scaled.masked_fill(&scaled.lt(&kth)?, f32::NEG_INFINITY)?;
    }
    let gumbel: Vec<f32> = (0..batch * vocab)
        .map(|_| {
            let u: f32 = rng.random_range(f32::MIN_POSITIVE..1.0);
            -(-u.ln()).ln()
        })
        .collect();
    let noise = Tensor::from_vec(gumbel, (batch, vocab), logits.device())?;
    scaled.add(&noise)?.argmax_dim(-1)
}

impl Module for Gpt {
    /// `ids`: u32 token ids `[batch, time]`, `time <= block_size`; returns logits
    /// `[batch, time, vocab]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let &[b, t] = ids.dims() else {
            return Err(Error::InvalidShape {
                op: "Gpt",
                reason: format!(
                    "expected token ids [batch, time], got shape {}",
                    ids.shape()
                ),
            });
        };
        if t > self.config.block_size {
            return Err(Error::InvalidArgument(format!(
                "Gpt: a sequence of {t} tokens is longer than the model's context of {}",
                self.config.block_size
            )));
        }
        let tr = &self.transformer;
        let positions = Tensor::arange(0, t as u32, ids.device())?;
        let mut x = tr
            .drop
            .forward(&tr.wte.forward(ids)?.add(&tr.wpe.forward(&positions)?)?)?;
        for block in &tr.h {
            x = block.forward(&x)?;
        }
        let x = tr.ln_f.forward(&x)?.reshape((b * t, self.config.d_model))?;
        x.linear(self.lm_head.weight.as_tensor(), None)?
            .reshape((b, t, self.config.vocab_size))
    }
}
