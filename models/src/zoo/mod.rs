//! Ready-made models.

mod cnn;
mod mlp;

pub use cnn::Cnn;
pub use mlp::{mlp, Activation};
