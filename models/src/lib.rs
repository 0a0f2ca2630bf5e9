//! ringtrain-models: what is trained, and how a run goes. Layers and `#[derive(Module)]`,
//! the model zoo, datasets, checkpoints, data parallelism and the `Trainer`.

// The derive's code names this crate `::ringtrain_models`, also inside it.
extern crate self as ringtrain_models;

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod infer;
pub mod nn;
pub mod parallel;
pub mod trace;
pub mod train;
pub mod zoo;
