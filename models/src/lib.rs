//! ringtrain-models: what is trained. Layers, the model zoo, datasets and evaluation.

// The derive's code names this crate `::ringtrain_models`, also inside it.
extern crate self as ringtrain_models;

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod nn;
pub mod parallel;
pub mod zoo;
