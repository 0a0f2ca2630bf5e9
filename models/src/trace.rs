//! Timelines of training: every kernel with its device, thread and shape, GEMMs with their
//! GFLOP/s, each op's gradient, optimizer steps, and the all-reduce of each gradient
//! bucket on its communication thread (beside the backward that fills the next one),
//! written as a Chrome trace for <https://ui.perfetto.dev> or `chrome://tracing`.
//!
//! ```no_run
//! # fn main() -> ringtrain_runtime::Result<()> {
//! let trace = ringtrain_models::trace::TraceFile::start("step.trace.json")?;
//! // ... train ...
//! let summary = trace.finish()?;
//! println!("{summary}");
//! # Ok(()) }
//! ```
//!
//! The Trainer does this for `TrainConfig::trace_out`, and the examples for `--trace-out`.

use crate::checkpoint::write_atomically;
use ringtrain_runtime::{Error, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use ringtrain_runtime::trace::{
    complete, enabled, now_ns, span, Arg, Event, Recording, Span, Trace, Track,
};

/// A recording that becomes a Chrome trace file at [`TraceFile::finish`] (or, best
/// effort, when dropped: a run that fails still leaves its timeline).
#[derive(Debug)]
pub struct TraceFile {
    path: PathBuf,
    recording: Option<Recording>,
}

impl TraceFile {
    /// Starts recording every thread's spans, to be written to `path`. Fails if another
    /// trace is being recorded in this process or `path`'s folder does not exist.
    pub fn start(path: impl AsRef<Path>) -> Result<TraceFile> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() || path.file_name().is_none() {
            return Err(Error::InvalidArgument(format!(
                "cannot write a trace to {}: no such folder or no file name",
                path.display()
            )));
        }
        let recording = Recording::start().map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Ok(TraceFile {
            path,
            recording: Some(recording),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops recording and writes the file (atomically); returns what it holds.
    pub fn finish(mut self) -> Result<Summary> {
        self.write()
    }

    fn write(&mut self) -> Result<Summary> {
        let Some(recording) = self.recording.take() else {
            return Ok(Summary::default());
        };
        let trace = recording.finish();
        write_chrome(&trace, &self.path)?;
        Ok(Summary::of(&trace, &self.path))
    }
}

impl Drop for TraceFile {
    fn drop(&mut self) {
        if self.recording.is_some() {
            if let Err(e) = self.write() {
                eprintln!("warning: the trace was not written: {e}");
            }
        }
    }
}

/// What a written trace holds, for a line at the end of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub path: PathBuf,
    pub events: usize,
    pub threads: usize,
    /// Total seconds in CPU GEMMs and their mean GFLOP/s (flops over time).
    pub gemm_seconds: f64,
    pub gemm_gflops: f64,
}

impl Summary {
    fn of(trace: &Trace, path: &Path) -> Summary {
        let (mut flops, mut ns) = (0.0, 0u64);
        for e in trace
            .events
            .iter()
            .filter(|e| e.cat == "cpu" && e.name == "gemm")
        {
            let dim = |k| match e.arg(k) {
                Some(Arg::Int(v)) => *v as f64,
                _ => 0.0,
            };
            flops += 2.0 * dim("m") * dim("n") * dim("k") * dim("batch").max(1.0);
            ns += e.dur_ns;
        }
        Summary {
            path: path.to_path_buf(),
            events: trace.events.len(),
            threads: trace.threads.len(),
            gemm_seconds: ns as f64 * 1e-9,
            gemm_gflops: if ns > 0 { flops / ns as f64 } else { 0.0 },
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "trace: {} events on {} threads in {} (GEMMs {:.3} s at {:.1} GFLOP/s); open it \
             in https://ui.perfetto.dev",
            self.events,
            self.threads,
            self.path.display(),
            self.gemm_seconds,
            self.gemm_gflops
        )
    }
}

fn arg_json(a: &Arg) -> Value {
    match a {
        Arg::Int(v) => json!(v),
        Arg::Float(v) if v.is_finite() => json!((v * 1e3).round() / 1e3),
        Arg::Float(v) => json!(v.to_string()),
        Arg::Text(s) => json!(s),
    }
}

/// `trace` in Chrome's trace event format: one complete (`X`) event per span, in
/// microseconds; CPU threads in process 1, named (threads that share a name, such as the
/// communication thread of successive steps, share a row); device timelines in process 2.
pub fn chrome_json(trace: &Trace) -> Value {
    let mut rows: HashMap<&str, u32> = HashMap::new();
    let mut row_of: HashMap<u32, u32> = HashMap::new();
    let mut meta = vec![
        json!({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "ringtrain (CPU threads)"}}),
    ];
    for (tid, name) in &trace.threads {
        let row = *rows.entry(name.as_str()).or_insert_with(|| {
            meta.push(
                json!({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name",
                             "args": {"name": name}}),
            );
            *tid
        });
        row_of.insert(*tid, row);
    }
    let mut devices: HashMap<&str, u32> = HashMap::new();
    let mut events = Vec::with_capacity(trace.events.len() + meta.len());
    for e in &trace.events {
        let (pid, tid) = match &e.track {
            Track::Thread(t) => (1, row_of.get(t).copied().unwrap_or(*t)),
            Track::Device(d) => {
                let next = devices.len() as u32 + 1;
                let tid = *devices.entry(d.as_str()).or_insert_with(|| {
                    meta.push(
                        json!({"ph": "M", "pid": 2, "tid": next, "name": "thread_name",
                                     "args": {"name": d}}),
                    );
                    next
                });
                (2, tid)
            }
        };
        let args: serde_json::Map<String, Value> = e
            .args
            .iter()
            .map(|(k, v)| (k.to_string(), arg_json(v)))
            .collect();
        events.push(json!({
            "name": e.name, "cat": e.cat, "ph": "X", "pid": pid, "tid": tid,
            "ts": e.start_ns as f64 / 1e3, "dur": e.dur_ns as f64 / 1e3, "args": args,
        }));
    }
    if !devices.is_empty() {
        meta.push(json!({"ph": "M", "pid": 2, "name": "process_name",
                         "args": {"name": "devices (GPU timestamps)"}}));
    }
    meta.extend(events);
    json!({ "traceEvents": meta, "displayTimeUnit": "ms" })
}

/// Writes `trace` to `path` as a Chrome trace, atomically.
pub fn write_chrome(trace: &Trace, path: &Path) -> Result<()> {
    let doc = chrome_json(trace);
    write_atomically(path, |w| {
        serde_json::to_writer(&mut *w, &doc).map_err(std::io::Error::other)
    })
    .map_err(|e| Error::msg(format!("writing the trace {}: {e}", path.display())))
}
