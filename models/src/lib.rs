//! ringtrain-models: what is trained. Layers, the model zoo and datasets.

pub mod data;
