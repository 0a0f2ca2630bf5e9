//! Train a GPT (ringtrain::zoo::Gpt, GPT-2's architecture) with the Trainer. By default it
//! learns 2-digit addition written as tokens (`12+34=` then the sum's digits, least
//! significant first), made from the seed, and reports exact-match accuracy on held-out
//! problems; `--text FILE` trains a character model on any UTF-8 text instead.
//!
//!     cargo run --release --example gpt
//!     cargo run --release --example gpt -- --digits 3 --steps 6000
//!     cargo run --release --example gpt -- --text input.txt --block-size 128 --steps 3000 \
//!         --checkpoint-dir ckpt
//!     cargo run --release --example gpt -- --sample 500 --checkpoint-dir ckpt --top-k 10
//!     cargo run --release --example gpt -- --devices 2     # data parallel, 2 replicas
//!     mpirun -np 2 target/release/examples/gpt --comm mpi   # built with --features mpi

use clap::{CommandFactory, FromArgMatches, Parser};
use ringtrain::data::sequence::{Addition, ADDITION_VOCAB};
use ringtrain::data::{CharVocab, DataSource, TextCorpus, TokenBatch};
use ringtrain::nn::unique_parameters;
use ringtrain::prelude::*;
use ringtrain::train::{latest_settings, restore_model, Cluster, Scores};
use ringtrain::zoo::{Gpt, GptConfig, Sampling};
use serde_json::{json, Map, Value};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Train a GPT with ringtrain: n-digit addition, or a character model of a text")]
struct Args {
    /// Train a character model on this UTF-8 text instead of the addition task.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Digits of each addend (the addition task).
    #[arg(long, default_value_t = 2)]
    digits: usize,
    /// Addition problems held out to measure the accuracy on.
    #[arg(long, default_value_t = 1000)]
    held_out: usize,
    /// Tokens per training window of --text.
    #[arg(long, default_value_t = 64)]
    block_size: usize,
    /// The model's context [default: the block size, or an addition sequence].
    #[arg(long)]
    context: Option<usize>,
    #[arg(long, default_value_t = 2)]
    n_layer: usize,
    #[arg(long, default_value_t = 4)]
    n_head: usize,
    #[arg(long, default_value_t = 64)]
    d_model: usize,
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    /// Generate N tokens from the newest checkpoint in --checkpoint-dir, and stop.
    #[arg(long)]
    sample: Option<usize>,
    /// --sample: logits are divided by it (0 takes the most likely token).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// --sample: only the K most likely tokens are candidates.
    #[arg(long)]
    top_k: Option<usize>,
    /// --sample of a text model: the text to continue [default: a newline, or the
    /// first character of the vocabulary].
    #[arg(long)]
    prompt: Option<String>,
    #[command(flatten)]
    train: TrainArgs,
}

/// The Trainer's defaults, set for a transformer: AdamW with decoupled weight decay, a
/// linear warm-up into a cosine decay, clipping at norm 1, a smaller batch, a report
/// every 250 steps.
fn parse_args() -> Args {
    let command = Args::command()
        .mut_arg("optimizer", |a| a.default_value("adamw"))
        .mut_arg("lr", |a| a.default_value("0.002"))
        .mut_arg("weight_decay", |a| a.default_value("0.1"))
        .mut_arg("schedule", |a| a.default_value("cosine"))
        .mut_arg("warmup_steps", |a| a.default_value("100"))
        .mut_arg("clip_grad_norm", |a| a.default_value("1.0"))
        .mut_arg("batch_size", |a| a.default_value("64"))
        .mut_arg("eval_every", |a| a.default_value("250steps"));
    let matches = command.get_matches();
    Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() {
    let args = parse_args();
    Cluster::main(&args.train.comm.config(), |cluster| match args.sample {
        Some(n) if cluster.is_root() => sample(&args, n),
        Some(_) => Ok(()),
        None => train(&args, cluster),
    });
}

/// The data of a run: the addition task, or a text.
enum Task {
    Addition { train: Addition, test: Addition },
    Text(TextCorpus),
}

impl Task {
    fn load(args: &Args) -> ringtrain::Result<Task> {
        Ok(match &args.text {
            Some(path) => Task::Text(TextCorpus::load(path, args.block_size, 0.1)?),
            None => {
                let (train, test) = Addition::split(args.digits, args.held_out, args.train.seed)?;
                Task::Addition { train, test }
            }
        })
    }

    fn vocab_size(&self) -> usize {
        match self {
            Task::Addition { .. } => ADDITION_VOCAB,
            Task::Text(c) => c.vocab.len(),
        }
    }

    /// Tokens a training sample feeds the model.
    fn window(&self) -> usize {
        match self {
            Task::Addition { train, .. } => train.prompt_len() + train.answer_len() - 1,
            Task::Text(c) => c.train.block_size(),
        }
    }
}

fn model_config(args: &Args, vocab_size: usize, window: usize) -> ringtrain::Result<GptConfig> {
    let context = args.context.unwrap_or(window);
    if window > context {
        return Err(ringtrain::Error::msg(format!(
            "--block-size {window} is above the model's context of {context} (--context)"
        )));
    }
    Ok(GptConfig {
        vocab_size,
        block_size: context,
        n_layer: args.n_layer,
        n_head: args.n_head,
        d_model: args.d_model,
        dropout: args.dropout,
        seed: args.train.seed,
    })
}

fn train(args: &Args, cluster: &Cluster) -> ringtrain::Result<()> {
    let task = Task::load(args)?;
    let gpt = model_config(args, task.vocab_size(), task.window())?;
    let mut config = args.train.config()?;
    if args.train.epochs.is_none() && args.train.steps.is_none() {
        (config.epochs, config.steps) = (None, Some(2000));
    }
    config.tokens_per_sample = Some(task.window());
    config.settings.extend(settings(args, &task, &gpt));
    let mut trainer = Trainer::with_cluster(config, cluster.clone())?;
    trainer.println(match &task {
        Task::Addition { train, test } => format!(
            "gpt: {}-digit addition, {} problems to train on, {} held out",
            train.digits(),
            train.len(),
            test.len()
        ),
        Task::Text(c) => format!(
            "gpt: {} ({} characters, vocabulary of {}), {} train / {} validation windows of {}",
            args.text
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
            c.train.tokens().len() + c.val.tokens().len(),
            c.vocab.len(),
            c.train.len(),
            c.val.len(),
            c.train.block_size()
        ),
    });

    let build = |device: &Device| -> ringtrain::Result<(Gpt, Box<dyn Optimizer + Send>)> {
        let model = Gpt::new(gpt, device, &mut rng_from_seed(args.train.seed))?;
        // Weight decay on matrices only, not on biases and LayerNorm gains (GPT-2's way).
        let groups = ParamGroup::split(
            unique_parameters(model.named_parameters()),
            |_, v| v.rank() >= 2,
            |g| g.with_weight_decay(0.0),
        );
        let optimizer = args.train.optimizer(groups, |_| 1e-3)?;
        Ok((model, optimizer))
    };
    let loss = |model: &Gpt, device: &Device, batch: &TokenBatch| {
        batch.loss(&model.forward(&batch.inputs(device)?)?, device)
    };
    match &task {
        Task::Addition { train, test } => {
            trainer.fit_with_eval(build, train, loss, |model, device| {
                addition_scores(model, test, device)
            })?;
        }
        Task::Text(c) => {
            let eval = |model: &Gpt, device: &Device| {
                text_scores(model, &c.val, args.train.batch_size as usize, device)
            };
            trainer.fit_with_eval(build, &c.train, loss, eval)?;
        }
    }
    Ok(())
}

/// What a checkpoint must record to be resumed, or sampled from without the flags.
fn settings(args: &Args, task: &Task, gpt: &GptConfig) -> Map<String, Value> {
    let mut s = Map::new();
    s.insert("n_layer".into(), gpt.n_layer.into());
    s.insert("n_head".into(), gpt.n_head.into());
    s.insert("d_model".into(), gpt.d_model.into());
    s.insert("context".into(), gpt.block_size.into());
    s.insert("dropout".into(), json!(gpt.dropout));
    match task {
        Task::Addition { .. } => {
            s.insert("task".into(), "addition".into());
            s.insert("digits".into(), args.digits.into());
            s.insert("held_out".into(), args.held_out.into());
        }
        Task::Text(c) => {
            s.insert("task".into(), "text".into());
            s.insert("vocab".into(), c.vocab.as_string().into());
            s.insert("block_size".into(), c.train.block_size().into());
        }
    }
    s
}

/// Held-out loss (teacher forced) and exact-match accuracy of greedy answers.
fn addition_scores(model: &Gpt, test: &Addition, device: &Device) -> ringtrain::Result<Scores> {
    let all: Vec<usize> = (0..test.len()).collect();
    let batch = test.batch(&all)?;
    let val_loss = batch
        .loss(&model.forward(&batch.inputs(device)?)?, device)?
        .to_scalar()?;
    let correct = addition_correct(model, test, 0..test.len(), device)?.len();
    Ok(vec![
        ("val_loss".into(), f64::from(val_loss)),
        ("accuracy".into(), correct as f64 / test.len().max(1) as f64),
    ])
}

/// Indices of the problems `range` whose greedy answer is right.
fn addition_correct(
    model: &Gpt,
    test: &Addition,
    range: std::ops::Range<usize>,
    device: &Device,
) -> ringtrain::Result<Vec<usize>> {
    let (prompts, answers) = test.prompts(range.clone());
    let n = range.len();
    let prompts = Tensor::from_u32(prompts, (n, test.prompt_len()), device)?;
    let greedy = Sampling {
        temperature: 0.0,
        top_k: None,
    };
    let out = model.generate(&prompts, test.answer_len(), greedy, &mut rng_from_seed(0))?;
    let got = out
        .narrow(1, test.prompt_len(), test.answer_len())?
        .to_vec_u32()?;
    let a = test.answer_len();
    Ok((0..n)
        .filter(|&i| got[i * a..(i + 1) * a] == answers[i * a..(i + 1) * a])
        .map(|i| range.start + i)
        .collect())
}

/// Mean loss over up to 8 batches of validation windows spread over the text.
fn text_scores(
    model: &Gpt,
    val: &impl DataSource<Batch = TokenBatch>,
    batch_size: usize,
    device: &Device,
) -> ringtrain::Result<Scores> {
    let windows = (8 * batch_size).min(val.len());
    let stride = val.len() / windows.max(1);
    let picks: Vec<usize> = (0..windows).map(|i| i * stride).collect();
    let mut total = 0.0;
    let chunks: Vec<&[usize]> = picks.chunks(batch_size).collect();
    for chunk in &chunks {
        let batch = val.batch(chunk)?;
        total += f64::from(
            batch
                .loss(&model.forward(&batch.inputs(device)?)?, device)?
                .to_scalar()?,
        );
    }
    Ok(vec![(
        "val_loss".into(),
        total / chunks.len().max(1) as f64,
    )])
}

/// `--sample N`: the newest checkpoint's model, rebuilt from its settings, generating.
fn sample(args: &Args, n: usize) -> ringtrain::Result<()> {
    let dir = args.train.checkpoint_dir.as_ref().ok_or_else(|| {
        ringtrain::Error::msg("--sample needs --checkpoint-dir (a run's checkpoints)")
    })?;
    let s = latest_settings(dir)?;
    let get = |k: &str| {
        s.get(k)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| {
                ringtrain::Error::msg(format!(
                    "{}: not a checkpoint of this example (no `{k}`)",
                    dir.display()
                ))
            })
    };
    let task = s.get("task").and_then(Value::as_str).unwrap_or("");
    let vocab = match task {
        "text" => Some(CharVocab::from_chars(
            s.get("vocab").and_then(Value::as_str).unwrap_or(""),
        )?),
        _ => None,
    };
    let config = GptConfig {
        vocab_size: vocab.as_ref().map_or(ADDITION_VOCAB, CharVocab::len),
        block_size: get("context")?,
        n_layer: get("n_layer")?,
        n_head: get("n_head")?,
        d_model: get("d_model")?,
        dropout: 0.0,
        seed: 0,
    };
    let device = args
        .train
        .config()?
        .devices
        .open(&Cluster::local(), false)?
        .remove(0);
    let model = Gpt::new(config, &device, &mut rng_from_seed(0))?;
    restore_model(dir, &model)?;
    model.set_training(false);
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
    };
    let mut rng = rng_from_seed(args.train.seed);
    match vocab {
        Some(vocab) => {
            let prompt = args.prompt.clone().unwrap_or_else(|| {
                if vocab.encode("\n").is_ok() {
                    "\n".into()
                } else {
                    vocab.decode(&[0])
                }
            });
            let ids = vocab.encode(&prompt)?;
            let ids = Tensor::from_u32(ids.clone(), (1, ids.len()), &device)?;
            let out = model.generate(&ids, n, sampling, &mut rng)?;
            println!("{}", vocab.decode(&out.to_vec_u32()?));
        }
        None => {
            // Addition: answer held-out problems (as many as N tokens allow).
            let (_, test) = Addition::split(get("digits")?, get("held_out")?, args.train.seed)?;
            let count = (n / test.answer_len()).clamp(1, test.len());
            let (prompts, _) = test.prompts(0..count);
            let prompts = Tensor::from_u32(prompts, (count, test.prompt_len()), &device)?;
            let out = model
                .generate(&prompts, test.answer_len(), sampling, &mut rng)?
                .to_vec_u32()?;
            let right = addition_correct(&model, &test, 0..count, &device)?;
            let width = test.prompt_len() + test.answer_len();
            for (i, row) in out.chunks(width).enumerate() {
                let mark = if right.contains(&i) {
                    ""
                } else {
                    "  (greedy answer wrong)"
                };
                println!("{}{mark}", test.describe(row));
            }
        }
    }
    Ok(())
}
