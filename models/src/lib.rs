//! ringtrain-models: what is trained. Layers, the model zoo, datasets and evaluation.

pub mod checkpoint;
pub mod data;
pub mod eval;
pub mod nn;
pub mod parallel;
pub mod zoo;
