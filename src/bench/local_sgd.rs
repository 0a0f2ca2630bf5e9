//! Local SGD against gradient averaging on MNIST: what each synchronization period `H`
//! costs in accuracy and saves in bytes. Every run trains the same MLP from the same seed
//! with the same data-parallel group in this process, so only the averaging differs; the
//! `local_sgd` example prints the table and draws the curves.

use crate::data::Mnist;
use crate::eval::evaluate;
use crate::nn::{Module, ModuleState};
use crate::optim::{ParamGroup, Sgd, SgdConfig};
use crate::parallel::{InnerState, LocalSgd, OuterOptimizer};
use crate::train::{Backend, Devices, Every, TrainConfig, Trainer};
use crate::zoo::{mlp, Activation};
use crate::{rng_from_seed, Device, Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::path::PathBuf;

/// What [`local_sgd_sweep`] trains.
#[derive(Debug, Clone)]
pub struct LocalSgdSweepConfig {
    /// MNIST's four IDX files (the embedded subset, or the full set).
    pub data_dir: PathBuf,
    /// CPU replicas in the group.
    pub replicas: usize,
    pub epochs: u32,
    /// Each run is repeated once per seed (initial weights and data order).
    pub seeds: Vec<u64>,
    /// The synchronization periods to try, each with the inner optimizer state averaged
    /// and kept per replica; the longest also with DiLoCo's outer optimizer.
    pub sync_every: Vec<usize>,
    pub hidden: Vec<usize>,
    pub batch_size: usize,
    /// The inner optimizer: SGD with this learning rate and momentum 0.9.
    pub lr: f32,
    pub show_progress: bool,
}

impl Default for LocalSgdSweepConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data/mnist-10k"),
            replicas: 4,
            epochs: 10,
            seeds: vec![0, 1, 2],
            sync_every: vec![1, 4, 16],
            hidden: vec![512, 256],
            batch_size: 128,
            lr: 0.05,
            show_progress: true,
        }
    }
}

/// One way of averaging, over every seed.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRun {
    pub label: String,
    /// `None`: gradients averaged every step.
    pub sync_every: Option<usize>,
    pub inner_state: Option<String>,
    pub outer: Option<String>,
    /// Final test accuracy (%) of each seed's run.
    pub accuracy: Vec<f64>,
    /// Test accuracy (%) after each epoch, the mean over seeds.
    pub accuracy_by_epoch: Vec<f64>,
    /// Payload bytes one replica sent per step, over the whole run.
    pub bytes_per_step: f64,
    /// Wall-clock seconds per run, the mean over seeds.
    pub seconds: f64,
}

impl SweepRun {
    pub fn mean_accuracy(&self) -> f64 {
        self.accuracy.iter().sum::<f64>() / self.accuracy.len().max(1) as f64
    }
}

/// The sweep's results, in the order run: gradient averaging first.
#[derive(Debug, Clone, Serialize)]
pub struct LocalSgdSweep {
    pub replicas: usize,
    pub epochs: u32,
    pub seeds: Vec<u64>,
    pub parameters: usize,
    pub runs: Vec<SweepRun>,
}

/// The ways of averaging the sweep compares, as labels and settings.
fn variants(config: &LocalSgdSweepConfig) -> Vec<(String, Option<LocalSgd>)> {
    let mut v = vec![("gradients every step".to_string(), None)];
    for &h in &config.sync_every {
        v.push((format!("H = {h}"), Some(LocalSgd::every(h))));
        let local = LocalSgd::every(h).with_inner_state(InnerState::Local);
        v.push((format!("H = {h}, local state"), Some(local)));
    }
    if let Some(&h) = config.sync_every.iter().max() {
        let diloco = LocalSgd::every(h)
            .with_outer(OuterOptimizer::diloco())
            .with_inner_state(InnerState::Local);
        v.push((format!("H = {h}, DiLoCo outer"), Some(diloco)));
    }
    v
}

/// Trains every variant once per seed and gathers accuracy and bytes.
pub fn local_sgd_sweep(config: &LocalSgdSweepConfig) -> Result<LocalSgdSweep> {
    if config.replicas < 2 || config.seeds.is_empty() || config.epochs == 0 {
        return Err(Error::InvalidArgument(
            "the local SGD sweep needs 2 or more replicas, a seed and an epoch".into(),
        ));
    }
    let mnist = Mnist::load(&config.data_dir)?;
    let (train, test) = (&mnist.train, &mnist.test);
    let variants = variants(config);
    let bar = if config.show_progress {
        ProgressBar::new((variants.len() * config.seeds.len()) as u64).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} runs, {elapsed} | {msg}")
                .expect("a valid template"),
        )
    } else {
        ProgressBar::hidden()
    };
    let mut runs = Vec::new();
    let mut parameters = 0;
    for (label, local_sgd) in variants {
        bar.set_message(label.clone());
        let mut accuracy = Vec::new();
        let mut curves: Vec<Vec<f64>> = Vec::new();
        let (mut bytes, mut steps, mut seconds) = (0.0, 0u64, 0.0);
        for &seed in &config.seeds {
            let train_config = TrainConfig {
                devices: Devices::of(Backend::Cpu, Some(config.replicas)),
                epochs: Some(config.epochs),
                batch_size: config.batch_size,
                seed,
                eval_every: Every::Epochs(1),
                local_sgd,
                quiet: true,
                ..TrainConfig::default()
            };
            let build = |device: &Device| -> Result<_> {
                let model = mlp(
                    train.features(),
                    &config.hidden,
                    train.num_classes,
                    Activation::Relu,
                    device,
                    &mut rng_from_seed(seed),
                )?;
                let groups = vec![ParamGroup::new(model.parameters())];
                let sgd = SgdConfig {
                    lr: config.lr,
                    momentum: 0.9,
                    ..SgdConfig::default()
                };
                Ok((model, Sgd::with_groups(groups, sgd)?))
            };
            let trained = Trainer::new(train_config)?.fit_with_eval(
                build,
                train,
                |model, device, batch| {
                    model
                        .forward(&batch.inputs(device)?)?
                        .cross_entropy(batch.labels()?)
                },
                |model, device| Ok(evaluate(model, test, 1000, device)?.scores("test")),
            )?;
            parameters = trained.model.num_parameters();
            let curve: Vec<f64> = trained
                .history
                .iter()
                .filter_map(|r| r.score("test_accuracy").map(|a| 100.0 * a))
                .collect();
            accuracy.push(*curve.last().ok_or_else(|| Error::msg("no evaluation"))?);
            curves.push(curve);
            for r in &trained.history {
                let epoch_steps = train.len.div_ceil(config.batch_size) as u64;
                bytes += r.bytes_sent_per_step.unwrap_or(0.0) * epoch_steps as f64;
                steps += epoch_steps;
                seconds += r.seconds;
            }
            bar.inc(1);
        }
        let epochs = curves.iter().map(Vec::len).min().unwrap_or(0);
        let accuracy_by_epoch = (0..epochs)
            .map(|e| curves.iter().map(|c| c[e]).sum::<f64>() / curves.len() as f64)
            .collect();
        runs.push(SweepRun {
            label,
            sync_every: local_sgd.map(|l| l.sync_every),
            inner_state: local_sgd.map(|l| format!("{:?}", l.inner_state).to_lowercase()),
            outer: local_sgd.map(|l| format!("{:?}", l.outer)),
            accuracy,
            accuracy_by_epoch,
            bytes_per_step: bytes / steps.max(1) as f64,
            seconds: seconds / config.seeds.len() as f64,
        });
    }
    bar.finish_and_clear();
    Ok(LocalSgdSweep {
        replicas: config.replicas,
        epochs: config.epochs,
        seeds: config.seeds.clone(),
        parameters,
        runs,
    })
}

impl std::fmt::Display for LocalSgdSweep {
    /// A markdown table: accuracy (mean and range over seeds) and bytes, each beside
    /// gradient averaging's.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "MNIST MLP ({} parameters), {} CPU replicas, {} epochs, seeds {:?}\n",
            self.parameters, self.replicas, self.epochs, self.seeds
        )?;
        writeln!(
            f,
            "| averaging | test accuracy, mean (range) | vs every step | sent per step | vs every step |"
        )?;
        writeln!(f, "| --- | --- | --- | --- | --- |")?;
        let base = self.runs.first();
        for r in &self.runs {
            let lo = r.accuracy.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.accuracy.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (acc_vs, bytes_vs) = match base {
                Some(b) => (
                    format!("{:+.2} pt", r.mean_accuracy() - b.mean_accuracy()),
                    format!("{:.3}x", r.bytes_per_step / b.bytes_per_step),
                ),
                None => (String::new(), String::new()),
            };
            writeln!(
                f,
                "| {} | {:.2}% ({lo:.2}-{hi:.2}) | {acc_vs} | {:.3} MB | {bytes_vs} |",
                r.label,
                r.mean_accuracy(),
                r.bytes_per_step / 1e6,
            )?;
        }
        Ok(())
    }
}
