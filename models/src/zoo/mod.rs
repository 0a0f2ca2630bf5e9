//! Ready-made models.

mod cnn;
mod gpt;
mod mlp;
mod spec;

pub use cnn::Cnn;
pub use gpt::{sample, Gpt, GptConfig, GptTransformer, LmHead, Sampling};
pub use mlp::{mlp, Activation};
pub use spec::{ModelSpec, ZooModel, MODEL_KEY};
