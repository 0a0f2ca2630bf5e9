//! Train a classifier on MNIST: by default an MLP on the embedded 10k-digit subset, on the
//! best device this machine has.
//!
//!     cargo run --release --example mnist
//!     cargo run --release --example mnist -- --optimizer adamw --lr 1e-3 --hidden 256
//!     cargo run --release --example mnist -- --data-dir ~/mnist --epochs 20   # full MNIST

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use ringtrain::data::{Batches, Mnist};
use ringtrain::eval::evaluate;
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation};
use serde::Serialize;
use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Training steps between two readbacks of the loss (and divergence checks).
const READ_LOSS_EVERY: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OptimizerKind {
    /// SGD with momentum (see --momentum).
    Sgd,
    Adamw,
}

#[derive(Parser, Debug)]
#[command(about = "Train an MLP on MNIST with ringtrain")]
struct Args {
    /// Device to train on.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Learning rate [default: 0.05 for sgd, 0.001 for adamw].
    #[arg(long)]
    lr: Option<f32>,
    #[arg(long, value_enum, default_value = "sgd")]
    optimizer: OptimizerKind,
    /// SGD momentum [default: 0.9]; only for --optimizer sgd.
    #[arg(long)]
    momentum: Option<f32>,
    /// Weight decay (L2 for sgd, decoupled for adamw).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Hidden layer sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value = "relu")]
    activation: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A folder with the four MNIST IDX files (gzipped or not) [default: data/mnist-10k].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write one JSON object per epoch to this file (JSON lines).
    #[arg(long)]
    metrics_out: Option<PathBuf>,
    /// Worker threads for the CPU backend [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Serialize)]
struct EpochMetrics {
    epoch: u32,
    train_loss: f32,
    test_loss: f32,
    test_accuracy: f32,
    samples_per_sec: f64,
    seconds: f64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn default_data_dir() -> PathBuf {
    let relative = PathBuf::from("data/mnist-10k");
    if relative.is_dir() {
        relative
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-10k")
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    let device = match args.backend {
        Backend::Auto => Device::from_name("auto")?,
        Backend::Cpu => Device::from_name("cpu")?,
        Backend::Gpu => Device::from_name("gpu")?,
    };
    if args.backend == Backend::Auto && matches!(device, Device::Cpu(_)) {
        println!("auto: no hardware GPU found, training on the CPU (--backend gpu forces a GPU)");
    }
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let mnist = Mnist::load(&data_dir)?;
    let (train, test) = (&mnist.train, &mnist.test);
    let activation: Activation = args.activation.parse()?;

    let mut rng = rng_from_seed(args.seed);
    let model = mlp(
        train.features(),
        &args.hidden,
        train.num_classes,
        activation,
        &device,
        &mut rng,
    )?;
    if args.momentum.is_some() && args.optimizer != OptimizerKind::Sgd {
        return Err(
            "--momentum applies to --optimizer sgd only (AdamW keeps its beta1 = 0.9)".into(),
        );
    }
    let mut optimizer: Box<dyn Optimizer> = match args.optimizer {
        OptimizerKind::Sgd => Box::new(Sgd::new(
            model.parameters(),
            SgdConfig {
                lr: args.lr.unwrap_or(0.05),
                momentum: args.momentum.unwrap_or(0.9),
                weight_decay: args.weight_decay,
                nesterov: false,
            },
        )?),
        OptimizerKind::Adamw => Box::new(AdamW::new(
            model.parameters(),
            AdamWConfig {
                lr: args.lr.unwrap_or(1e-3),
                weight_decay: args.weight_decay,
                ..AdamWConfig::default()
            },
        )?),
    };
    println!(
        "mnist: {} train / {} test digits from {} | model {}-{}-{} ({} parameters) | {:?} lr {} | {}",
        train.len,
        test.len,
        data_dir.display(),
        train.features(),
        args.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-"),
        train.num_classes,
        model.num_parameters(),
        args.optimizer,
        optimizer.learning_rate(),
        device.name()
    );

    let batch_size = args.batch_size as usize;
    let mut history = Vec::new();
    let started = Instant::now();
    for epoch in 1..=args.epochs {
        let epoch_start = Instant::now();
        // A fresh, seed-determined order every epoch.
        let batches = Batches::new(
            train,
            batch_size,
            Some(args.seed ^ (u64::from(epoch) << 32)),
        )?;
        let bar = ProgressBar::new(batches.len() as u64).with_style(ProgressStyle::with_template(
            "epoch {prefix:>3} [{bar:30}] {pos}/{len} batches {msg}",
        )?);
        bar.set_prefix(epoch.to_string());
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        // Reading a value back makes the host wait for the device, so the losses of
        // READ_LOSS_EVERY steps are summed where they were computed and read at once: a GPU
        // runs one step while the next is recorded.
        let (mut unread, mut unread_len) = (None::<Tensor>, 0usize);
        let steps = batches.len();
        for (step, batch) in batches.enumerate() {
            let x = Tensor::from_vec(batch.images, (batch.len, train.features()), &device)?;
            let loss = model.forward(&x)?.cross_entropy(&batch.labels)?;
            let grads = loss.backward()?;
            optimizer.step(&grads)?;
            let weighted = loss.detach().scale(batch.len as f32)?;
            unread = Some(match unread {
                Some(sum) => sum.add(&weighted)?,
                None => weighted,
            });
            unread_len += batch.len;
            bar.inc(1);
            if (step + 1) % READ_LOSS_EVERY != 0 && step + 1 != steps {
                continue;
            }
            let Some(sum) = unread.take() else { continue };
            let sum = sum.to_scalar()?;
            if !sum.is_finite() {
                return Err(format!(
                    "training diverged in epoch {epoch} (by batch {}): loss is {sum}; try a \
                     lower --lr",
                    step + 1
                )
                .into());
            }
            loss_sum += f64::from(sum);
            seen += std::mem::take(&mut unread_len);
            bar.set_message(format!("loss {:.4}", loss_sum / seen as f64));
        }
        bar.finish_and_clear();
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        let eval = evaluate(&model, test, 1000, &device)?;
        let metrics = EpochMetrics {
            epoch,
            train_loss: (loss_sum / seen.max(1) as f64) as f32,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            samples_per_sec: seen as f64 / train_seconds,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {:>3}  train loss {:.4}  test loss {:.4}  test acc {:6.2}%  {:>8.0} samples/s  {:.2}s",
            epoch,
            metrics.train_loss,
            metrics.test_loss,
            100.0 * metrics.test_accuracy,
            metrics.samples_per_sec,
            metrics.seconds
        );
        history.push(metrics);
        if let Some(path) = &args.metrics_out {
            write_metrics(path, &history)?;
        }
    }
    let last = history.last().ok_or("no epochs ran")?;
    let best = history.iter().map(|m| m.test_accuracy).fold(0.0, f32::max);
    let mean_throughput =
        history.iter().map(|m| m.samples_per_sec).sum::<f64>() / history.len() as f64;
    println!(
        "done: {} epochs in {:.1}s | test accuracy {:.2}% (best {:.2}%) | {:.0} train samples/s | {}",
        history.len(),
        started.elapsed().as_secs_f64(),
        100.0 * last.test_accuracy,
        100.0 * best,
        mean_throughput,
        device.name()
    );
    Ok(())
}

/// Rewrites the whole JSON-lines file through a temporary file and a rename, so a reader
/// (or a crash) never sees half a file. The temporary name carries the process id, so two
/// runs pointed at the same file do not write into each other's.
fn write_metrics(path: &Path, history: &[EpochMetrics]) -> Result<(), Box<dyn Error>> {
    let mut tmp_name = path
        .file_name()
        .ok_or("--metrics-out needs a file name")?
        .to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for m in history {
            serde_json::to_writer(&mut file, m)?;
            file.write_all(b"\n")?;
        }
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
