//! Train a classifier on MNIST: by default an MLP on the embedded 10k-digit subset, on the
//! best device this machine has. Everything around the model and the data (devices, data
//! parallelism, schedules, checkpoints, evaluation, metrics) is ringtrain's `Trainer`, and
//! every flag but the first five below is its `TrainArgs`.
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

use clap::{Parser, ValueEnum};
use ringtrain::data::Mnist;
use ringtrain::eval::evaluate;
use ringtrain::prelude::*;
use ringtrain::train::{Cluster, OptimizerKind};
use ringtrain::zoo::{Activation, ModelSpec, ZooModel};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelKind {
    /// A multi-layer perceptron (see --hidden, --activation).
    Mlp,
    /// Two convolution blocks and a classifier (ringtrain::zoo::Cnn).
    Cnn,
}

#[derive(Parser, Debug)]
#[command(about = "Train an MLP or a CNN on MNIST with ringtrain")]
struct Args {
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelKind,
    /// Hidden layer sizes of the MLP, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "512,256")]
    hidden: Vec<usize>,
    #[arg(long, default_value = "relu")]
    activation: Activation,
    /// A folder with the four MNIST IDX files (gzipped or not) [default: data/mnist-10k].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Train on the first N training digits only (a quick run).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    train_limit: Option<u32>,
    #[command(flatten)]
    train: TrainArgs,
}

fn main() {
    let args = Args::parse();
    // On an error: `error: ...` (with the rank under MPI), exit status 1, and an MPI job
    // ended at once rather than left waiting.
    Cluster::main(&args.train.comm.config(), |cluster| run(&args, cluster));
}

fn default_data_dir() -> PathBuf {
    let relative = PathBuf::from("data/mnist-10k");
    if relative.is_dir() {
        relative
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/mnist-10k")
    }
}

/// The learning rate without `--lr`.
fn default_lr(kind: OptimizerKind) -> f32 {
    match kind {
        OptimizerKind::Sgd => 0.05,
        OptimizerKind::Adamw => 1e-3,
    }
}

fn run(args: &Args, cluster: &Cluster) -> ringtrain::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let mut mnist = Mnist::load(&data_dir)?;
    if let Some(n) = args.train_limit {
        let train = &mut mnist.train;
        train.len = train.len.min(n as usize);
        train.images.truncate(train.len * train.features());
        train.labels.truncate(train.len);
    }
    let (train, test) = (&mnist.train, &mnist.test);
    let spec = match args.model {
        ModelKind::Mlp => ModelSpec::Mlp {
            inputs: train.features(),
            hidden: args.hidden.clone(),
            outputs: train.num_classes,
            activation: args.activation,
        },
        ModelKind::Cnn => ModelSpec::Cnn {
            channels: 1,
            height: train.rows,
            width: train.cols,
            classes: train.num_classes,
        },
    };
    // The checkpoints name the model, so that `infer` rebuilds it from a file alone.
    let mut config = args.train.config()?;
    config.model = Some(spec.clone());
    let mut trainer = Trainer::with_cluster(config, cluster.clone())?;
    trainer.println(format!(
        "mnist: {} train / {} test digits from {} | model {} | {:?}",
        train.len,
        test.len,
        data_dir.display(),
        spec.describe(),
        args.train.optimizer,
    ));

    // Every replica is built from the same seed (data parallelism also broadcasts replica
    // 0's parameters), so one device and N devices start from the same weights.
    let build = |device: &Device| -> ringtrain::Result<(ZooModel, Box<dyn Optimizer + Send>)> {
        let model = spec.build(device, &mut rng_from_seed(args.train.seed))?;
        let optimizer = args
            .train
            .optimizer(vec![ParamGroup::new(model.parameters())], default_lr)?;
        Ok((model, optimizer))
    };
    trainer.fit_with_eval(
        build,
        train,
        |model, device, batch: &InMemoryBatch| {
            model
                .forward(&batch.inputs(device)?)?
                .cross_entropy(batch.labels()?)
        },
        |model, device| Ok(evaluate(model, test, 1000, device)?.scores("test")),
    )?;
    Ok(())
}
