//! Ready-made models.

mod mlp;

pub use mlp::{mlp, Activation};
