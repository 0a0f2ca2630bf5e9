//! Ready-made models.

mod cnn;
mod gpt;
mod mlp;

pub use cnn::Cnn;
pub use gpt::{sample, Gpt, GptConfig, GptTransformer, LmHead, Sampling};
pub use mlp::{mlp, Activation};
