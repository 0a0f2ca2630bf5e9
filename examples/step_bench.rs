//! One training step of a model docs/BENCHMARKS.md compares with PyTorch, timed, printed
//! as one JSON line in the schema of scripts/step_peer.py (PyTorch's same step);
//! scripts/compare.py and scripts/bench_gpt.sh interleave the two.
//!
//! - `mlp`: 784-512-256-10 with ReLU, batch 128, SGD with momentum 0.9, cross-entropy;
//! - `cnn`: `zoo::Cnn` on 1x28x28 images, batch 128, the same SGD;
//! - `gpt`: `zoo::Gpt` (GPT-2's block) on random tokens, batch 16 x block 64, AdamW.
//!
//! ```sh
//! cargo run --release --example step_bench -- --model cnn --threads 1
//! cargo run --release --example step_bench -- --model gpt --d-model 384 --layers 6 --heads 6 --block 256 --batch 4
//! cargo run --release --example step_bench -- --model mlp --device gpu --trace-out mlp.trace.json
//! cargo run --release --example step_bench -- --model cnn --precision bf16
//! ```
//!
//! `--precision bf16|f16` runs the step's products on rounded inputs, summed in f32 (as
//! the Trainer's `--precision`; no loss scaling here), beside PyTorch's
//! `torch.autocast("cpu", dtype=torch.bfloat16)` in step_peer.py.

use clap::{Parser, ValueEnum};
use rand::Rng as _;
use ringtrain::optim::{AdamW, AdamWConfig, Optimizer};
use ringtrain::prelude::*;
use ringtrain::trace::{self, TraceFile};
use ringtrain::zoo::{mlp, Activation, Cnn, Gpt, GptConfig};
use serde_json::json;
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Model {
    Mlp,
    Cnn,
    Gpt,
}

#[derive(Parser)]
#[command(about = "Time one of ringtrain's training steps")]
struct Args {
    #[arg(long, value_enum, default_value = "gpt")]
    model: Model,
    /// cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// CPU worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Samples per step [default: 128 for mlp and cnn, 16 sequences for gpt].
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value_t = 30)]
    steps: usize,
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Write a Chrome trace of the timed steps (open it in https://ui.perfetto.dev).
    #[arg(long, value_name = "FILE")]
    trace_out: Option<std::path::PathBuf>,
    #[arg(long, default_value = "f32")]
    precision: Precision,
    /// GPT: vocabulary size.
    #[arg(long, default_value_t = 94)]
    vocab: usize,
    /// GPT: width of the residual stream.
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    /// GPT: transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// GPT: attention heads per block.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// GPT: tokens per sequence.
    #[arg(long, default_value_t = 64)]
    block: usize,
}

/// A model with its optimizer and one fixed batch, ready to step.
struct Bench {
    step: Box<dyn FnMut() -> ringtrain::Result<f32> + Send>,
    shape: serde_json::Value,
    samples: usize,
    tokens: Option<usize>,
}

fn sgd(params: Vec<Var>) -> ringtrain::Result<Sgd> {
    let config = SgdConfig {
        lr: 0.01,
        momentum: 0.9,
        ..SgdConfig::default()
    };
    Sgd::new(params, config)
}

/// An image classifier's step on random 784-pixel rows and labels `i % 10`.
fn classifier<M: Module + Send + 'static>(
    model: M,
    batch: usize,
    device: &Device,
) -> ringtrain::Result<Bench> {
    let mut rng = rng_from_seed(1);
    let mut opt = sgd(model.parameters())?;
    let x = Tensor::randn(0.0, 1.0, (batch, 784), &mut rng, device)?;
    let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    Ok(Bench {
        step: Box::new(move || {
            let loss = model.forward(&x)?.cross_entropy(&labels)?;
            opt.step(&loss.backward()?)?;
            loss.to_scalar()
        }),
        shape: json!({ "batch": batch }),
        samples: batch,
        tokens: None,
    })
}

fn gpt(a: &Args, batch: usize, device: &Device) -> ringtrain::Result<Bench> {
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
    let model = Gpt::new(config, device, &mut rng)?;
    let adamw = AdamWConfig {
        lr: 1e-3,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(model.parameters(), adamw)?;
    let mut tokens = || -> Vec<u32> {
        (0..batch * a.block)
            .map(|_| rng.random_range(0..a.vocab as u32))
            .collect()
    };
    let ids = Tensor::from_u32(tokens(), (batch, a.block), device)?;
    let targets = Tensor::from_u32(tokens(), (batch, a.block), device)?;
    Ok(Bench {
        step: Box::new(move || {
            let loss = model.forward(&ids)?.cross_entropy(&targets)?;
            opt.step(&loss.backward()?)?;
            loss.to_scalar()
        }),
        shape: json!({"vocab": a.vocab, "d_model": a.d_model, "layers": a.layers,
                      "heads": a.heads, "block": a.block, "batch": batch}),
        samples: batch,
        tokens: Some(batch * a.block),
    })
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
    let mut rng = rng_from_seed(0);
    let (name, mut bench) = match a.model {
        Model::Mlp => {
            let batch = a.batch.unwrap_or(128);
            let model = mlp(784, &[512, 256], 10, Activation::Relu, &device, &mut rng)?;
            ("mlp", classifier(model, batch, &device)?)
        }
        Model::Cnn => {
            let batch = a.batch.unwrap_or(128);
            let model = Cnn::new((1, 28, 28), 10, &device, &mut rng)?;
            ("cnn", classifier(model, batch, &device)?)
        }
        Model::Gpt => ("gpt", gpt(&a, a.batch.unwrap_or(16), &device)?),
    };
    let mut times = Vec::with_capacity(a.steps);
    // On a pool thread, so the ops' parallel loops need no hand-off from outside the
    // pool, with the other workers spinning for work rather than sleeping, as the
    // Trainer runs a step.
    let precision = a.precision;
    ringtrain::kernels::cpu::with_awake_workers(|| -> ringtrain::Result<()> {
        let mut step = || with_precision(precision, || (bench.step)());
        for _ in 0..a.warmup {
            step()?;
        }
        let trace = a.trace_out.as_ref().map(TraceFile::start).transpose()?;
        for _ in 0..a.steps.max(1) {
            let t0 = Instant::now();
            let _span = trace::span("step", "train step");
            step()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        if let Some(t) = trace {
            eprintln!("{}", t.finish()?);
        }
        Ok(())
    })?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut line = json!({
        "impl": "ringtrain",
        "model": name,
        "device": device.name(),
        "threads": rayon::current_num_threads(),
        "precision": precision.name(),
        "shape": bench.shape,
        "median_ms": median * 1e3,
        "best_ms": times[0] * 1e3,
        "samples_per_sec": bench.samples as f64 / median,
    });
    if let Some(tokens) = bench.tokens {
        line["tokens_per_sec"] = json!(tokens as f64 / median);
    }
    println!("{line}");
    Ok(())
}
