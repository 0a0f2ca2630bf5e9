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
use ringtrain::checkpoint::{Checkpoint, CheckpointDir};
use ringtrain::comm::RingConfig;
use ringtrain::data::{Batches, Mnist};
use ringtrain::eval::evaluate;
use ringtrain::parallel::{DataParallel, DataParallelConfig, NonFinitePolicy};
use ringtrain::prelude::*;
use ringtrain::zoo::{mlp, Activation, Cnn};
use run_checkpoints::{Every, Position};
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Training steps between two readbacks of the loss (and divergence checks).
const READ_LOSS_EVERY: usize = 20;

/// Steps skipped in a row (--on-nonfinite skip) after which a run stops: it is not
/// recovering, and would only report a model that no longer trains.
const MAX_SKIPPED_IN_A_ROW: u64 = 20;

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
enum OnNonFinite {
    Stop,
    Skip,
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
    /// Save checkpoints (model, optimizer, where the run stands, metrics so far) into this
    /// folder, as epoch-EEEE-step-SSSSSSSS.safetensors, every --checkpoint-every and at
    /// the end.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// How often to checkpoint: N or Nepochs (after every Nth epoch), or Nsteps (after
    /// every Nth step, also mid-epoch).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(Every))]
    checkpoint_every: Every,
    /// Checkpoints to keep, the newest.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    keep_checkpoints: u32,
    /// Continue from the newest checkpoint in --checkpoint-dir, with the flags of the run
    /// that wrote it (up to --epochs): the result is the uninterrupted run's.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// What a step whose loss or gradients hold an infinity or NaN does: stop the run
    /// naming the step, or skip it (no parameter changes) and go on. On one device,
    /// `stop` checks each step's loss, and the parameters whenever the loss is read
    /// (every 20 steps and before a checkpoint), which costs no extra pass per step and
    /// no wait; `skip` checks loss and gradients before every update.
    #[arg(long, value_enum, default_value = "stop")]
    on_nonfinite: OnNonFinite,
    /// Testing aid: puts a NaN into the input of global step N (from 1).
    #[arg(long, hide = true)]
    inject_nan: Option<u64>,
    /// Testing aid: the process dies (exit status 3) right after global step N, as if
    /// killed, writing nothing more.
    #[arg(long, hide = true)]
    crash_after_step: Option<u64>,
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
    /// Steps skipped for non-finite values (--on-nonfinite skip) in this epoch.
    #[serde(default)]
    skipped_steps: u64,
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

/// A step's mean loss: still on the device (read later, in groups), or on the host; or
/// nothing, for a step skipped for non-finite values.
enum StepLoss {
    OnDevice(Tensor),
    Host(f32),
    Skipped,
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

    /// Whether every parameter is finite (one pass over them and one wait; replica 0's,
    /// all being alike). With SGD and AdamW a gradient that is infinite or NaN makes the
    /// parameters it reaches so.
    fn parameters_finite(&self) -> ringtrain::Result<bool> {
        let mut total: Option<Tensor> = None;
        for p in self.model().parameters() {
            let n = p.as_tensor().count_nonfinite()?;
            total = Some(match total {
                Some(t) => t.add(&n)?,
                None => n,
            });
        }
        Ok(match total {
            Some(t) => t.to_scalar()? == 0.0,
            None => true,
        })
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

    /// One step. On one device, under `Skip` the loss and gradients are checked for
    /// infinities and NaN before the update (the step waits for the answer); under
    /// `Stop` the loss is checked when it is read, and a gradient
    /// that is not finite shows in the parameters it reaches (see `parameters_finite`).
    /// Several devices check the averaged loss and gradients on the host, where they are
    /// anyway.
    fn step(
        &mut self,
        images: &[f32],
        labels: &[u32],
        features: usize,
        policy: OnNonFinite,
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
                let grads = loss.backward()?;
                if policy == OnNonFinite::Skip {
                    // Counted on the device, read back once.
                    let mut bad = loss.count_nonfinite()?;
                    if let Some(n) = grads.count_nonfinite()? {
                        bad = bad.add(&n)?;
                    }
                    if bad.to_scalar()? > 0.0 {
                        return Ok(StepLoss::Skipped);
                    }
                }
                optimizer.step(&grads)?;
                Ok(StepLoss::OnDevice(loss.detach()))
            }
            Trainer::Parallel(dp) => {
                let skipped = dp.skipped_steps();
                let loss = dp.step(rows, |model, device, shard| {
                    let x = Tensor::from_slice(
                        &images[shard.start * features..shard.end * features],
                        (shard.len(), features),
                        device,
                    )?;
                    model.forward(&x)?.cross_entropy(&labels[shard])
                })?;
                Ok(if dp.skipped_steps() > skipped {
                    StepLoss::Skipped
                } else {
                    StepLoss::Host(loss)
                })
            }
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
    let checkpoint_dir = args
        .checkpoint_dir
        .as_ref()
        .map(|d| CheckpointDir::new(d, args.keep_checkpoints as usize));
    if let (Some(dir), true) = (&checkpoint_dir, cluster.is_root()) {
        // Now, not after the first epoch's work.
        std::fs::create_dir_all(dir.path()).map_err(|e| {
            format!(
                "cannot create the checkpoint folder {}: {e}",
                dir.path().display()
            )
        })?;
    }
    if let (Some(dir), false) = (&checkpoint_dir, args.resume) {
        if !dir.list()?.is_empty() {
            return Err(format!(
                "{} already holds a run's checkpoints: add --resume to continue it, or give \
                 a new --checkpoint-dir (a new run there would prune the old one's files)",
                dir.path().display()
            )
            .into());
        }
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
            on_nonfinite: match args.on_nonfinite {
                OnNonFinite::Stop => NonFinitePolicy::Stop,
                OnNonFinite::Skip => NonFinitePolicy::Skip,
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
    let mut position = Position::start();
    if args.resume {
        let dir = checkpoint_dir.as_ref().expect("clap requires it");
        let (at, checkpoint) = run_checkpoints::latest(dir, &settings)?;
        trainer.restore(&checkpoint)?;
        history = serde_json::from_str(
            checkpoint
                .metadata(run_checkpoints::HISTORY)
                .unwrap_or("[]"),
        )?;
        position = at;
        if root {
            println!(
                "resumed from {} at step {} (epoch {}, batch {})",
                dir.path().display(),
                at.step,
                at.epoch,
                at.batch
            );
        }
    }
    let batches_per_epoch = train.len.div_ceil(batch_size);
    if position.batch >= batches_per_epoch {
        position = position.next_epoch();
    }
    if position.epoch > args.epochs && root {
        let done = position.epoch - 1;
        if done > args.epochs {
            return Err(format!(
                "--resume: the checkpoint is after epoch {done}, past --epochs {}",
                args.epochs
            )
            .into());
        }
        println!("the run is complete ({done} epochs); raise --epochs to train on");
        if let Some(path) = &args.metrics_out {
            write_metrics(path, &history)?;
        }
    }
    let checkpoints = checkpoint_dir.as_ref().filter(|_| root);
    let save = |position: &Position,
                history: &[EpochMetrics],
                trainer: &Trainer|
     -> Result<(), Box<dyn Error>> {
        let Some(dir) = checkpoints else {
            return Ok(());
        };
        let mut c = trainer.checkpoint()?;
        // Finite parameters can sit beside an overflowed optimizer moment.
        if let Some(name) = c.first_nonfinite() {
            return Err(format!(
                "training diverged by step {}: `{name}` holds infinite or NaN values, so \
                 no checkpoint was written; try a lower --lr",
                position.step
            )
            .into());
        }
        c.set_metadata(run_checkpoints::SETTINGS, settings.clone());
        c.set_metadata(run_checkpoints::HISTORY, serde_json::to_string(history)?);
        run_checkpoints::save(dir, position, c)?;
        Ok(())
    };
    let started = Instant::now();
    for epoch in position.epoch..=args.epochs {
        let epoch_start = Instant::now();
        // A fresh, seed-determined order every epoch; a resumed epoch skips what it did.
        let batches = Batches::new(
            train,
            batch_size,
            Some(args.seed ^ (u64::from(epoch) << 32)),
        )?;
        let mut at = if epoch == position.epoch {
            position
        } else {
            position.next_epoch()
        };
        let first_batch = at.batch;
        let bar = if root {
            ProgressBar::new(batches.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(ProgressStyle::with_template(
            "epoch {prefix:>3} [{bar:30}] {pos}/{len} batches {msg}",
        )?);
        bar.set_prefix(epoch.to_string());
        bar.set_position(first_batch as u64);
        let mut loss_sum = f64::from_bits(at.loss_sum_bits);
        let mut losses = UnreadLosses::resumed(&at, trainer.device())?;
        let mut checked_step = at.step;
        let trained_from = at.seen + at.unread_samples;
        for (index, batch) in batches.enumerate().skip(first_batch) {
            at.step += 1;
            at.batch = index + 1;
            let mut images = batch.images;
            if args.inject_nan == Some(at.step) {
                images[0] = f32::NAN;
            }
            let step = trainer
                .step(&images, &batch.labels, features, args.on_nonfinite)
                .map_err(|e| match e {
                    ringtrain::Error::NonFinite(what) => diverged(&at, &what, args.on_nonfinite),
                    e => e.into(),
                })?;
            if !matches!(step, StepLoss::Skipped) {
                at.skipped_in_a_row = 0;
            }
            match step {
                StepLoss::Host(loss) => {
                    loss_sum += f64::from(loss) * batch.len as f64;
                    at.seen += batch.len;
                }
                StepLoss::OnDevice(loss) => losses.push(&at, loss, batch.len)?,
                StepLoss::Skipped => {
                    at.skipped += 1;
                    at.epoch_skipped += 1;
                    at.skipped_in_a_row += 1;
                    if at.skipped_in_a_row == MAX_SKIPPED_IN_A_ROW {
                        return Err(diverged(
                            &at,
                            &format!(
                                "{MAX_SKIPPED_IN_A_ROW} steps in a row had infinite or NaN \
                                 values, so were skipped"
                            ),
                            args.on_nonfinite,
                        ));
                    }
                }
            }
            bar.inc(1);
            if args.crash_after_step == Some(at.step) {
                eprintln!("simulated crash after step {}", at.step);
                std::process::exit(3);
            }
            let read_now = at.batch % READ_LOSS_EVERY == 0 || at.batch == batches_per_epoch;
            let checkpoint_now = matches!(args.checkpoint_every, Every::Steps(n) if at.step % n == 0)
                && at.batch < batches_per_epoch;
            if !read_now && !checkpoint_now {
                continue;
            }
            // A checkpoint between readbacks keeps the group's sum as it stands, so that
            // where checkpoints fall never changes how losses are summed.
            let losses_seen = if read_now {
                losses.read(&mut loss_sum, &mut at.seen)?
            } else {
                losses.peek()?
            };
            match losses_seen {
                ControlFlow::Break(bad) => {
                    return Err(diverged(
                        &bad,
                        "its loss is infinite or NaN (from its batch, or from parameters an \
                         earlier step made so)",
                        args.on_nonfinite,
                    ))
                }
                ControlFlow::Continue((unread, samples)) => {
                    at.unread_sum_bits = unread.to_bits();
                    at.unread_samples = samples;
                }
            }
            // Also catches what no step check can: an update of finite gradients that
            // overflowed (a learning rate far too high).
            if !trainer.parameters_finite()? {
                return Err(format!(
                    "training diverged between steps {} and {} (epoch {}): parameters are \
                     now infinite or NaN, from a gradient that was or from an update that \
                     overflowed; try a lower --lr",
                    checked_step + 1,
                    at.step,
                    at.epoch
                )
                .into());
            }
            checked_step = at.step;
            if !loss_sum.is_finite() {
                return Err(diverged(
                    &at,
                    &format!("the loss summed to {loss_sum}"),
                    args.on_nonfinite,
                ));
            }
            bar.set_message(format!("loss {:.4}", loss_sum / at.seen.max(1) as f64));
            if checkpoint_now {
                at.loss_sum_bits = loss_sum.to_bits();
                save(&at, &history, &trainer)?;
            }
        }
        bar.finish_and_clear();
        at.loss_sum_bits = loss_sum.to_bits();
        position = at;
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        if !root {
            // Every rank holds the same parameters: rank 0 evaluates and reports.
            continue;
        }
        let eval = evaluate(trainer.model(), test, 1000, trainer.device())?;
        let samples_per_sec = (at.seen - trained_from) as f64 / train_seconds;
        let metrics = EpochMetrics {
            epoch,
            // NaN (null in the metrics file) for an epoch whose every step was skipped.
            train_loss: (loss_sum / at.seen as f64) as f32,
            test_loss: eval.loss,
            test_accuracy: eval.accuracy,
            samples_per_sec,
            devices: n_devices,
            samples_per_sec_per_device: samples_per_sec / n_devices as f64,
            seconds: epoch_start.elapsed().as_secs_f64(),
            skipped_steps: at.epoch_skipped,
        };
        let per_device = if n_devices > 1 {
            format!(" ({:.0} per device)", metrics.samples_per_sec_per_device)
        } else {
            String::new()
        };
        let skipped = match metrics.skipped_steps {
            0 => String::new(),
            1 => "  1 step skipped (non-finite)".into(),
            n => format!("  {n} steps skipped (non-finite)"),
        };
        println!(
            "epoch {:>3}  train loss {:.4}  test loss {:.4}  test acc {:6.2}%  {:>8.0} samples/s{per_device}  {:.2}s{skipped}",
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
        let due = match args.checkpoint_every {
            Every::Epochs(n) => epoch % n == 0,
            Every::Steps(n) => at.step % n == 0,
        };
        if due || epoch == args.epochs {
            save(&at, &history, &trainer)?;
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

/// The error that stops a run at a non-finite step.
fn diverged(at: &Position, what: &str, policy: OnNonFinite) -> Box<dyn Error> {
    let hint = match policy {
        OnNonFinite::Stop => "try a lower --lr, or --on-nonfinite skip to skip such steps",
        OnNonFinite::Skip => "try a lower --lr",
    };
    format!(
        "training diverged at step {} (epoch {}, batch {}): {what}; {hint}",
        at.step, at.epoch, at.batch
    )
    .into()
}

/// Losses of steps on one device, summed where they were computed and read back in one
/// go (reading makes the host wait for the device: a GPU runs one step while the next is
/// recorded). A sum that is not finite is taken apart to find the step.
#[derive(Default)]
struct UnreadLosses {
    sum: Option<Tensor>,
    samples: usize,
    steps: Vec<(Position, Tensor)>,
}

/// What a readback finds: the first step whose loss is not finite, or the sum (f32) and
/// samples left unread.
type Readback = ControlFlow<Position, (f32, usize)>;

impl UnreadLosses {
    /// The group a checkpoint at `at` left unread, on `device`.
    fn resumed(at: &Position, device: &Device) -> ringtrain::Result<Self> {
        if at.unread_samples == 0 {
            return Ok(Self::default());
        }
        let sum = f32::from_bits(at.unread_sum_bits);
        Ok(Self {
            sum: Some(Tensor::from_vec(vec![sum], Vec::<usize>::new(), device)?),
            samples: at.unread_samples,
            steps: Vec::new(),
        })
    }

    /// Adds a step's mean `loss` over `samples` samples.
    fn push(&mut self, at: &Position, loss: Tensor, samples: usize) -> ringtrain::Result<()> {
        let weighted = loss.scale(samples as f32)?;
        self.sum = Some(match self.sum.take() {
            Some(sum) => sum.add(&weighted)?,
            None => weighted,
        });
        self.samples += samples;
        self.steps.push((*at, loss));
        Ok(())
    }

    /// The group's sum so far, checked, leaving the group as it is.
    fn peek(&mut self) -> ringtrain::Result<Readback> {
        let Some(sum) = &self.sum else {
            return Ok(ControlFlow::Continue((0.0, 0)));
        };
        let sum = sum.to_scalar()?;
        if !sum.is_finite() {
            for (at, loss) in &self.steps {
                if !loss.to_scalar()?.is_finite() {
                    return Ok(ControlFlow::Break(*at));
                }
            }
        }
        Ok(ControlFlow::Continue((sum, self.samples)))
    }

    /// Adds the group to `loss_sum` and `seen` and starts a new one, or breaks with the
    /// first step whose loss was not finite.
    fn read(&mut self, loss_sum: &mut f64, seen: &mut usize) -> ringtrain::Result<Readback> {
        let (sum, samples) = match self.peek()? {
            ControlFlow::Continue(group) => group,
            brk => return Ok(brk),
        };
        *self = Self::default();
        *loss_sum += f64::from(sum);
        *seen += samples;
        Ok(ControlFlow::Continue((0.0, 0)))
    }
}
