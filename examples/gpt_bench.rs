//! One GPT training step (forward, cross-entropy, backward, AdamW), timed: the ringtrain
//! side of docs/BENCHMARKS.md's GPT table, printed as one JSON line in the schema of
//! scripts/gpt_peer.py (PyTorch's same step). scripts/bench_gpt.sh interleaves the two.
//!
//!     cargo run --release --example gpt_bench -- --threads 1
//!     cargo run --release --example gpt_bench -- --d-model 384 --layers 6 --heads 6 --block 256
//!     cargo run --release --example gpt_bench -- --device gpu

use clap::Parser;
use rand::Rng as _;
use ringtrain::optim::{AdamW, AdamWConfig, Optimizer};
use ringtrain::prelude::*;
use ringtrain::zoo::{Gpt, GptConfig};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Time ringtrain's GPT training step")]
struct Args {
    /// cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 94)]
    vocab: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    #[arg(long, default_value_t = 64)]
    block: usize,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
}

fn main() -> ringtrain::Result<()> {
    let a = Args::parse();
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(ringtrain::Error::msg)?;
    }
    let device = Device::from_name(&a.device)?;
    let config = GptConfig {
        vocab_size: a.vocab,
        block_size: a.block,
        n_layer: a.layers,
        n_head: a.heads,
        d_model: a.d_model,
        dropout: 0.0,
        seed: 0,
    };
    let mut rng = rng_from_seed(0);
    let model = Gpt::new(config, &device, &mut rng)?;
    let adamw = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(model.parameters(), adamw)?;
    let tokens = |rng: &mut Rng| -> Vec<u32> {
        (0..a.batch * a.block)
            .map(|_| rng.random_range(0..a.vocab as u32))
            .collect()
    };
    let ids = Tensor::from_u32(tokens(&mut rng), (a.batch, a.block), &device)?;
    let targets = Tensor::from_u32(tokens(&mut rng), (a.batch, a.block), &device)?;
    let mut step = || -> ringtrain::Result<f32> {
        let loss = model.forward(&ids)?.cross_entropy(&targets)?;
        opt.step(&loss.backward()?)?;
        loss.to_scalar()
    };
    let mut times = Vec::with_capacity(a.steps);
    // On a pool thread, so the ops' parallel loops need no hand-off from outside the
    // pool (a futex wake and wait per op).
    rayon::scope(|_| -> ringtrain::Result<()> {
        for _ in 0..a.warmup {
            step()?;
        }
        for _ in 0..a.steps {
            let t0 = Instant::now();
            step()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        Ok(())
    })?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let line = serde_json::json!({
        "impl": "ringtrain",
        "device": device.name(),
        "threads": rayon::current_num_threads(),
        "shape": {"vocab": a.vocab, "d_model": a.d_model, "layers": a.layers, "heads": a.heads,
                  "block": a.block, "batch": a.batch},
        "median_ms": median * 1e3,
        "best_ms": times[0] * 1e3,
        "tokens_per_sec": (a.batch * a.block) as f64 / median,
    });
    println!("{line}");
    Ok(())
}
