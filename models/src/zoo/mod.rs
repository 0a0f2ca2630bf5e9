//! Ready-made models.

mod cnn;
mod mlp;

pub use cnn::cnn;
pub use mlp::{mlp, Activation};
