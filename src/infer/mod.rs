//! Inference close to the data: a trained model ([`Predictor`], or an [`Ensemble`] of
//! them) scoring a stream of rows, from a file or stdin ([`run_stream`]) or from many
//! TCP clients at once ([`serve`]), rows batched across all of them ([`Batcher`]).
//!
//! The model side (checkpoints, compact weights) is `ringtrain_models::infer`,
//! re-exported here; this module adds the streams. The `infer` example is the command
//! line over both.

mod batcher;
mod rows;
mod server;
mod stream;

pub use batcher::{Answer, BatchConfig, BatchStats, Batcher, Output, Request};
pub use ringtrain_models::infer::*;
pub use rows::{read_line, Line, Row, RowFormat, RowSpec};
pub use server::{serve, ServeCounts};
pub use stream::{run_stream, StreamConfig, StreamCounts};

use ringtrain_runtime::Result;

/// What a [`Batcher`] runs: a model, or models, from rows to outputs.
pub trait Scorer: Send {
    /// Features per row.
    fn inputs(&self) -> usize;
    /// The class probabilities of `rows` (`n * inputs` values) and their width.
    fn probabilities(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)>;
    /// The outputs of `rows` and their width.
    fn outputs_of(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)>;
    fn describe(&self) -> String;
}

impl Scorer for Predictor {
    fn inputs(&self) -> usize {
        Predictor::inputs(self)
    }
    fn probabilities(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        Predictor::probabilities(self, rows)
    }
    fn outputs_of(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        Predictor::outputs_of(self, rows)
    }
    fn describe(&self) -> String {
        Predictor::describe(self)
    }
}

impl Scorer for Ensemble {
    fn inputs(&self) -> usize {
        Ensemble::inputs(self)
    }
    fn probabilities(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        Ensemble::probabilities(self, rows)
    }
    fn outputs_of(&self, rows: &[f32]) -> Result<(Vec<f32>, usize)> {
        Ensemble::outputs_of(self, rows)
    }
    fn describe(&self) -> String {
        Ensemble::describe(self)
    }
}
