//! Train a classifier on MNIST: by default an MLP on the embedded 10k-digit subset, on the
//! best device this machine has.
//!
//!     cargo run --release --example mnist
//!     cargo run --release --example mnist -- --optimizer adamw --lr 1e-3 --hidden 256
//!     cargo run --release --example mnist -- --data-dir ~/mnist --epochs 20   # full MNIST
//!     cargo run --release --example mnist -- --devices 4     # data parallel, 4 replicas
//!     cargo run --release --example mnist -- --model cnn     # a small CNN
//!
//! Across processes and machines (built with `--features mpi`; see the README):
//!
//!     mpirun -np 4 target/release/examples/mnist --comm mpi
//!     mpirun -np 2 --map-by ppr:1:node target/release/examples/mnist --comm hierarchical --devices 4

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/run_checkpoints.rs"]
mod run_checkpoints;

use clap::{Parser, ValueEnum};
use cluster::{Cluster, CommArgs, CommKind};
use indicatif::{ProgressBar, ProgressStyle};
use ringtrain::checkpoint::Checkpoint;
use ringtrain::comm::RingConfig;
use ringtrain::data::{Batches, Mnist};
use ringtrain::eval::evaluate;
use ringtrain::parallel::{DataParallel, DataParallelConfig};
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation, Cnn};
use serde::{Deserialize, Serialize};
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
enum ModelKind {
    /// A multi-layer perceptron (see --hidden, --activation).
    Mlp,
    /// Two convolution blocks and a classifier (ringtrain::zoo::Cnn).
    Cnn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OptimizerKind {
    /// SGD with momentum (see --momentum).
    Sgd,
    Adamw,
}

#[derive(Parser, Debug)]
#[command(about = "Train an MLP or a CNN on MNIST with ringtrain")]
struct Args {
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelKind,
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
    /// Hidden layer sizes of the MLP, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value = "relu")]
    activation: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A folder with the four MNIST IDX files (gzipped or not) [default: data/mnist-10k].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Train on the first N training digits only (a quick run).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    train_limit: Option<u32>,
    /// Write one JSON object per epoch to this file (JSON lines).
    #[arg(long)]
    metrics_out: Option<PathBuf>,
    /// Replicas for data-parallel training, each a device of --backend [default: every
    /// hardware GPU; one CPU]. Several CPU replicas share the CPU's cores.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    devices: Option<u32>,
    /// Worker threads for the CPU backend [default: all cores, shared out among the
    /// MPI processes on this machine].
    #[arg(long)]
    threads: Option<usize>,
    /// Save checkpoints (model, optimizer, metrics so far) into this folder, as
    /// epoch-NNNN.safetensors, every --checkpoint-every epochs and after the last.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Epochs between two checkpoints.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    checkpoint_every: u32,
    /// Checkpoints to keep, the newest.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    keep_checkpoints: u32,
    /// Continue from the newest checkpoint in --checkpoint-dir, with the flags of the run
    /// that wrote it (up to --epochs): the result is the uninterrupted run's.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    #[command(flatten)]
    comm: CommArgs,
}

#[derive(Serialize, Deserialize)]
struct EpochMetrics {
    epoch: u32,
    train_loss: f32,
    test_loss: f32,
    test_accuracy: f32,
    samples_per_sec: f64,
    devices: usize,
    samples_per_sec_per_device: f64,
    seconds: f64,
}

fn main() {
    let args = Args::parse();
    Cluster::main(&args.comm, |cluster| run(&args, cluster));
}

fn default_data_dir() -> PathBuf {
    let relative = PathBuf::from("data/mnist-10k");
    if relative.is_dir() {
        relative
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-10k")
    }
}

/// The devices to train on: `--devices` of the chosen backend (by default every
/// hardware GPU, or one CPU worker); with `--comm mpi`, this process's one device (its
/// machine's GPU number local rank).
fn pick_devices(args: &Args, cluster: &Cluster) -> Result<Vec<Device>, Box<dyn Error>> {
    let n = args.devices.map(|n| n as usize);
    let gpu = || match args.backend {
        Backend::Cpu => false,
        Backend::Gpu => true,
        Backend::Auto => Device::hardware_gpu_count() > 0,
    };
    if cluster.kind == CommKind::Hierarchical && cluster.local_processes > 1 && gpu() {
        return Err(format!(
            "--comm hierarchical drives every GPU of a machine from one process, but {} \
             processes share this one: launch one per machine (mpirun --map-by ppr:1:node, \
             srun --ntasks-per-node=1), or use --comm mpi for one process per GPU",
            cluster.local_processes
        )
        .into());
    }
    if cluster.kind == CommKind::Mpi {
        if n.is_some_and(|n| n != 1) {
            return Err(
                "--comm mpi trains one device per process; launch more processes \
                        (mpirun -np N), or use --comm hierarchical --devices N"
                    .into(),
            );
        }
        return Ok(vec![if gpu() {
            Device::local_gpu(cluster.local_rank)?
        } else {
            Device::cpu()
        }]);
    }
    let cpus = |n: usize| (0..n).map(|_| Device::cpu()).collect::<Vec<_>>();
    Ok(match args.backend {
        Backend::Cpu => cpus(n.unwrap_or(1)),
        Backend::Gpu => Device::gpus(n)?,
        Backend::Auto if Device::hardware_gpu_count() > 0 => Device::gpus(n)?,
        Backend::Auto => {
            if cluster.is_root() {
                println!(
                    "auto: no hardware GPU found, training on the CPU (--backend gpu forces a GPU)"
                );
            }
            cpus(n.unwrap_or(1))
        }
    })
}

type BoxedOptimizer = Box<dyn Optimizer + Send>;
type Model = Box<dyn Module + Send + Sync>;

/// One device trains directly; several train as one through DataParallel, which moves
/// gradients through the host every step.
enum Trainer {
    Single {
        model: Model,
        optimizer: BoxedOptimizer,
        device: Device,
    },
    Parallel(DataParallel<Model, BoxedOptimizer>),
}

/// A step's mean loss: still on the device (read later, in groups), or on the host.
enum StepLoss {
    OnDevice(Tensor),
    Host(f32),
}

impl Trainer {
    /// The model and optimizer, as a checkpoint (replica 0's: all replicas are alike).
    fn checkpoint(&self) -> ringtrain::checkpoint::Result<Checkpoint> {
        let mut c = Checkpoint::new();
        let (model, optimizer): (&Model, &BoxedOptimizer) = match self {
            Trainer::Single {
                model, optimizer, ..
            } => (model, optimizer),
            Trainer::Parallel(dp) => (dp.model(), dp.optimizer()),
        };
        c.insert_module("model.", model.as_ref())?;
        c.insert_optimizer("optimizer.", optimizer.as_ref())?;
        Ok(c)
    }

    /// Sets the model and optimizer (every replica's) from `c`.
    fn restore(&mut self, c: &Checkpoint) -> ringtrain::checkpoint::Result<()> {
        let restore_one = |model: &Model, optimizer: &mut BoxedOptimizer| {
            c.restore(model.as_ref(), "model.")?;
            c.restore_optimizer("optimizer.", optimizer.as_mut())
        };
        match self {
            Trainer::Single {
                model, optimizer, ..
            } => restore_one(model, optimizer),
            Trainer::Parallel(dp) => dp
                .replicas_mut()
                .try_for_each(|(model, optimizer)| restore_one(model, optimizer)),
        }
    }

    fn model(&self) -> &Model {
        match self {
            Trainer::Single { model, .. } => model,
            Trainer::Parallel(dp) => dp.model(),
        }
    }

    fn device(&self) -> &Device {
        match self {
            Trainer::Single { device, .. } => device,
            Trainer::Parallel(dp) => dp.devices()[0],
        }
    }

    fn step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        features: usize,
    ) -> ringtrain::Result<StepLoss> {
        let rows = labels.len();
        match self {
            Trainer::Single {
                model,
                optimizer,
                device,
            } => {
                let x = Tensor::from_slice(images, (rows, features), device)?;
                let loss = model.forward(&x)?.cross_entropy(labels)?;
                optimizer.step(&loss.backward()?)?;
                Ok(StepLoss::OnDevice(loss.detach()))
            }
            Trainer::Parallel(dp) => dp
                .step(rows, |model, device, shard| {
                    let x = Tensor::from_slice(
                        &images[shard.start * features..shard.end * features],
                        (shard.len(), features),
                        device,
                    )?;
                    model.forward(&x)?.cross_entropy(&labels[shard])
                })
                .map(StepLoss::Host),
        }
    }
}

fn run(args: &Args, cluster: &Cluster) -> Result<(), Box<dyn Error>> {
    // Processes sharing a machine share its cores: by default each takes its part.
    let threads = args.threads.or_else(|| {
        (cluster.local_processes > 1).then(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / cluster.local_processes).max(1)
        })
    });
    if let Some(n) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()?;
    }
    if args.momentum.is_some() && args.optimizer != OptimizerKind::Sgd {
        return Err(
            "--momentum applies to --optimizer sgd only (AdamW keeps its beta1 = 0.9)".into(),
        );
    }
    let activation: Activation = args.activation.parse()?;
    let devices = pick_devices(args, cluster)?;
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut mnist = Mnist::load(&data_dir)?;
    if let Some(n) = args.train_limit {
        let train = &mut mnist.train;
        train.len = train.len.min(n as usize);
        train.images.truncate(train.len * train.features());
        train.labels.truncate(train.len);
    }
    let (train, test) = (&mnist.train, &mnist.test);

    // Every replica is built from the same seed (DataParallel also broadcasts replica 0's
    // parameters), so one device and N devices start from the same weights.
    let build = |device: &Device| -> ringtrain::Result<(Model, BoxedOptimizer)> {
        let mut rng = rng_from_seed(args.seed);
        let model: Model = match args.model {
            ModelKind::Mlp => Box::new(mlp(
                train.features(),
                &args.hidden,
                train.num_classes,
                activation,
                device,
                &mut rng,
            )?),
            ModelKind::Cnn => Box::new(Cnn::new(
                (1, train.rows, train.cols),
                train.num_classes,
                device,
                &mut rng,
            )?),
        };
        let optimizer: BoxedOptimizer = match args.optimizer {
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
        Ok((model, optimizer))
    };
    let root = cluster.is_root();
    let n_local = devices.len();
    let device_names = {
        let names: Vec<String> = devices.iter().map(Device::name).collect();
        if names.iter().all(|n| *n == names[0]) && n_local > 1 {
            format!("{n_local} x {}", names[0])
        } else {
            names.join(", ")
        }
    };
    let comms = cluster.communicators(&args.comm, n_local)?;
    let (lr, mut trainer) = if n_local == 1 && comms.is_none() {
        let device = devices.into_iter().next().expect("one device");
        let (model, optimizer) = build(&device)?;
        (
            optimizer.learning_rate(),
            Trainer::Single {
                model,
                optimizer,
                device,
            },
        )
    } else {
        let mut lr = 0.0;
        let build = |d: &Device| {
            let built = build(d)?;
            lr = built.1.learning_rate();
            Ok(built)
        };
        let config = DataParallelConfig {
            ring: RingConfig {
                timeout: args.comm.timeout(),
                ..RingConfig::default()
            },
            ..DataParallelConfig::default()
        };
        let dp = match comms {
            None => DataParallel::new(devices, build, config)?,
            Some(comms) => DataParallel::with_communicators(devices, comms, build, config)?,
        };
        (lr, Trainer::Parallel(dp))
    };
    // Replicas in the whole run, across processes.
    let n_devices = match &trainer {
        Trainer::Single { .. } => 1,
        Trainer::Parallel(dp) => dp.group_size(),
    };
    let device_names = if cluster.processes > 1 {
        format!(
            "{n_devices} replicas: {device_names} on rank 0 | {}",
            cluster.describe()
        )
    } else {
        device_names
    };
    let model_name = match args.model {
        ModelKind::Mlp => format!(
            "mlp {}-{}-{}",
            train.features(),
            args.hidden
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join("-"),
            train.num_classes
        ),
        ModelKind::Cnn => format!(
            "cnn 1x{}x{} -> {}",
            train.rows, train.cols, train.num_classes
        ),
    };
    if root {
        println!(
        "mnist: {} train / {} test digits from {} | model {model_name} ({} parameters) | {:?} lr {} | {}",
        train.len,
        test.len,
        data_dir.display(),
        trainer.model().num_parameters(),
        args.optimizer,
        lr,
        device_names
    );
    }

    let batch_size = args.batch_size as usize;
    let features = train.features();
    let mut history: Vec<EpochMetrics> = Vec::new();
    // What a resumed run must share with the run that wrote its checkpoint.
    let settings = serde_json::json!({
        "model": format!("{:?}", args.model),
        "hidden": &args.hidden,
        "activation": &args.activation,
        "optimizer": format!("{:?}", args.optimizer),
        "lr": lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_digits": train.len,
        "replicas": n_devices,
    })
    .to_string();
    let mut first_epoch = 1;
    if args.resume {
        let dir = args.checkpoint_dir.as_deref().expect("clap requires it");
        let (epoch, checkpoint) = run_checkpoints::latest(dir, &settings)?;
        trainer.restore(&checkpoint)?;
        history = serde_json::from_str(
            checkpoint
                .metadata(run_checkpoints::HISTORY)
                .unwrap_or("[]"),
        )?;
        first_epoch = epoch + 1;
        if root {
            println!("resumed from {} after epoch {epoch}", dir.display());
        }
    }
    let started = Instant::now();
    for epoch in first_epoch..=args.epochs {
        let epoch_start = Instant::now();
        // A fresh, seed-determined order every epoch.
        let batches = Batches::new(
            train,
            batch_size,
            Some(args.seed ^ (u64::from(epoch) << 32)),
        )?;
        let bar = if root {
            ProgressBar::new(batches.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(ProgressStyle::with_template(
            "epoch {prefix:>3} [{bar:30}] {pos}/{len} batches {msg}",
        )?);
        bar.set_prefix(epoch.to_string());
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        // Reading a value back makes the host wait for the device, so on one device the
        // losses of READ_LOSS_EVERY steps are summed where they were computed and read
        // at once: a GPU runs one step while the next is recorded. (Several devices
        // bring their gradients to the host every step anyway.)
        let (mut unread, mut unread_len) = (None::<Tensor>, 0usize);
        let steps = batches.len();
        for (step, batch) in batches.enumerate() {
            match trainer.step(&batch.images, &batch.labels, features)? {
                StepLoss::Host(loss) => {
                    loss_sum += f64::from(loss) * batch.len as f64;
                    seen += batch.len;
                }
                StepLoss::OnDevice(loss) => {
                    let weighted = loss.scale(batch.len as f32)?;
                    unread = Some(match unread {
                        Some(sum) => sum.add(&weighted)?,
                        None => weighted,
                    });
                    unread_len += batch.len;
                }
            }
            bar.inc(1);
            if (step + 1) % READ_LOSS_EVERY != 0 && step + 1 != steps {
                continue;
            }
            if let Some(sum) = unread.take() {
                loss_sum += f64::from(sum.to_scalar()?);
                seen += std::mem::take(&mut unread_len);
            }
            if !loss_sum.is_finite() {
                return Err(format!(
                    "training diverged in epoch {epoch} (by batch {}): loss is {loss_sum}; \
                     try a lower --lr",
                    step + 1
                )
                .into());
            }
            bar.set_message(format!("loss {:.4}", loss_sum / seen.max(1) as f64));
        }
        bar.finish_and_clear();
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        if !root {
            // Every rank holds the same parameters: rank 0 evaluates and reports.
            continue;
        }
        let eval = evaluate(trainer.model(), test, 1000, trainer.device())?;
        let samples_per_sec = seen as f64 / train_seconds;
        let metrics = EpochMetrics {
            epoch,
            train_loss: (loss_sum / seen.max(1) as f64) as f32,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            samples_per_sec,
            devices: n_devices,
            samples_per_sec_per_device: samples_per_sec / n_devices as f64,
            seconds: epoch_start.elapsed().as_secs_f64(),
        };
        let per_device = if n_devices > 1 {
            format!(" ({:.0} per device)", metrics.samples_per_sec_per_device)
        } else {
            String::new()
        };
        println!(
            "epoch {:>3}  train loss {:.4}  test loss {:.4}  test acc {:6.2}%  {:>8.0} samples/s{per_device}  {:.2}s",
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
        if let Some(dir) = &args.checkpoint_dir {
            if epoch % args.checkpoint_every == 0 || epoch == args.epochs {
                let mut c = trainer.checkpoint()?;
                c.set_metadata(run_checkpoints::EPOCH, epoch.to_string());
                c.set_metadata(run_checkpoints::SETTINGS, settings.clone());
                c.set_metadata(run_checkpoints::HISTORY, serde_json::to_string(&history)?);
                run_checkpoints::save(dir, epoch, &c, args.keep_checkpoints as usize)?;
            }
        }
    }
    if !root {
        return Ok(());
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
        device_names
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
