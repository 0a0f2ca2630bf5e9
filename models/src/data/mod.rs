//! Datasets: the IDX file format, MNIST on top of it, a mini-batch loader, and token
//! sequences for language models (text windows, n-digit addition).
//!
//! Loading and batching are plain CPU-side `Vec<f32>`/`Vec<u32>` data, testable without a
//! device; [`DataSource`] is how a trainer draws batches, which a loss function then
//! uploads (`InMemoryBatch::inputs`).

pub mod idx;
pub mod loader;
pub mod mnist;
pub mod sequence;
pub mod source;

use std::path::PathBuf;

pub use idx::{parse_idx, read_idx, IdxArray, MAX_IDX_BYTES};
pub use loader::{Batch, Batches};
pub use mnist::{normalise_pixel, Dataset, Mnist, MNIST_CLASSES, MNIST_MEAN, MNIST_STD};
pub use sequence::{Addition, CharVocab, TextCorpus, TokenBatch, TokenWindows};
pub use source::{DataSource, InMemory, InMemoryBatch, Shard, Targets};

/// Everything that can go wrong while reading or batching a dataset.
///
/// `origin` fields name where the bytes came from (a file path, or whatever label the
/// caller gave [`parse_idx`]) so a message is actionable on its own.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{origin}: not an IDX file: {detail}")]
    BadMagic { origin: String, detail: String },

    #[error(
        "{origin}: IDX element type 0x{type_byte:02x} ({}) is not supported; \
         only 0x08 (unsigned byte) is",
        idx::type_name(*type_byte)
    )]
    UnsupportedType { origin: String, type_byte: u8 },

    #[error("{origin}: truncated {section}: expected {expected} bytes, got {got}")]
    Truncated {
        origin: String,
        section: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("{origin}: {extra} unexpected trailing bytes after the {expected}-byte data section")]
    TrailingBytes {
        origin: String,
        expected: usize,
        extra: usize,
    },

    #[error("{origin}: corrupt gzip stream: {source}")]
    Gzip {
        origin: String,
        #[source]
        source: std::io::Error,
    },

    #[error("shape mismatch: {detail}")]
    Shape { detail: String },

    #[error(
        "label {label} at index {index} is out of range: expected a class in 0..{num_classes}"
    )]
    LabelOutOfRange {
        index: usize,
        label: u32,
        num_classes: usize,
    },

    #[error("cannot find the {what} in {}: tried {}", dir.display(), tried.join(", "))]
    MissingFile {
        dir: PathBuf,
        what: &'static str,
        tried: Vec<String>,
    },

    #[error("batch size must be at least 1")]
    InvalidBatchSize,

    #[error("{origin}: too large: {detail}")]
    TooLarge { origin: String, detail: String },
}

/// Into the library's one error type (as [`Error::Other`](ringtrain_runtime::Error::Other)).
impl From<DataError> for ringtrain_runtime::Error {
    fn from(e: DataError) -> Self {
        ringtrain_runtime::Error::other(e)
    }
}
