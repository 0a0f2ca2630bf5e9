//! The training loop as a library: [`Trainer`] trains any [`Module`](crate::nn::Module)
//! from a builder of the model and its optimizer, a [`DataSource`](crate::data::DataSource)
//! and a loss function, and owns what a run needs around them:
//!
//! - devices (`auto`, `cpu`, `gpu`, a count or a list) and how replicas talk: one device
//!   directly, several as data-parallel replicas on the in-process ring, over MPI (one
//!   process per device) or two levels ([`Cluster`], from how the process was launched);
//! - a learning-rate [`Schedule`] per step, gradient clipping by global norm (under data
//!   parallelism on the averaged gradient, alike on every replica), gradient
//!   accumulation over micro-batches;
//! - the non-finite policy, checkpoints every N steps or epochs with a bit-exact resume
//!   (data position, random streams, optimizer, buffers, reports so far), refusing a
//!   resume with other settings;
//! - evaluation every N steps or epochs through a closure, metrics as JSON lines, and
//!   progress (a bar on a terminal, report lines always);
//! - sharded optimizer state (ZeRO-1: `--zero 1`, [`TrainConfig::zero`]) and replicas of
//!   different speeds sharing each batch by measured throughput (`--devices cpu,gpu
//!   --balance auto`, [`TrainConfig::balance`]), the weights kept in checkpoints;
//! - faults put in on purpose for tests ([`Faults`]).
//!
//! [`TrainArgs`] gives a program the same command line as every example.
//!
//! ```
//! use ringtrain_models::data::{InMemory, InMemoryBatch};
//! use ringtrain_models::nn::{Linear, Module, ModuleState};
//! use ringtrain_models::train::{TrainConfig, Trainer};
//! use ringtrain_runtime::optim::{Sgd, SgdConfig};
//! use ringtrain_runtime::{rng_from_seed, Device};
//!
//! # fn main() -> ringtrain_runtime::Result<()> {
//! // y = 3x - 1 from 64 points: a regression, not a classifier.
//! let x: Vec<f32> = (0..64).map(|i| i as f32 / 32.0 - 1.0).collect();
//! let y: Vec<f32> = x.iter().map(|v| 3.0 * v - 1.0).collect();
//! let data = InMemory::regression(x, &[1], y, &[1])?;
//! let config = TrainConfig { epochs: Some(40), batch_size: 16, quiet: true, ..TrainConfig::default() };
//! let trained = Trainer::new(config)?.fit(
//!     |device| {
//!         let model = Linear::new(1, 1, device, &mut rng_from_seed(0))?;
//!         let opt = Sgd::new(model.parameters(), SgdConfig { lr: 0.1, ..SgdConfig::default() })?;
//!         Ok((model, opt))
//!     },
//!     &data,
//!     |model, device, batch: &InMemoryBatch| model.forward(&batch.inputs(device)?)?.mse(&batch.targets(device)?),
//! )?;
//! assert!(trained.history.last().unwrap().train_loss < 1e-3);
//! # Ok(())
//! # }
//! ```

mod args;
mod cluster;
mod config;
mod devices;
mod engine;
mod position;
mod record;
mod resume;
mod schedule;
mod trainer;

pub use args::{CommArgs, DevicesArg, OptimizerKind, ScheduleKind, TrainArgs};
pub use cluster::{Cluster, CommConfig, CommKind, Communicators, MpiAlgorithm};
pub use config::{Bagging, CheckpointConfig, Every, Faults, TrainConfig};
pub use devices::{describe as describe_devices, Backend, DeviceName, Devices};
pub use engine::BALANCE_KEY;
pub use position::Position;
pub use record::{format_scores, Record, Scores};
pub use resume::{
    checkpoint_settings, latest_settings, restore_model, HISTORY, POSITION, SETTINGS,
};
pub use schedule::Schedule;
pub use trainer::{set_threads, Trained, Trainer, BAG_KEY};
