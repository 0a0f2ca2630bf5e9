//! Rows from anywhere (a file, stdin, many TCP connections) batched for a model: a thread
//! of its own takes requests as they come and runs the model on up to `max_batch` of them
//! at once, waiting at most `max_wait` after the first for more, then answers each.

use super::Scorer;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What an answer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The most likely class and its probability.
    Class,
    /// The model's output vector.
    Vector,
}

/// How rows are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Rows a model call takes at most.
    pub max_batch: usize,
    /// How long the first row of a batch waits for others.
    pub max_wait: Duration,
    pub output: Output,
}

/// The answer to one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Class { class: u32, probability: f32 },
    Vector(Vec<f32>),
    Error(String),
}

impl Answer {
    /// The answer as one line of JSON (no newline), carrying the row's `id` if it had
    /// one: `{"class":3,"probability":0.98}`, `{"outputs":[..]}`, `{"error":".."}`.
    pub fn to_json(&self, id: Option<&serde_json::Value>) -> String {
        let mut o = serde_json::Map::new();
        if let Some(id) = id {
            o.insert("id".into(), id.clone());
        }
        match self {
            Answer::Class { class, probability } => {
                o.insert("class".into(), (*class).into());
                o.insert("probability".into(), f64::from(*probability).into());
            }
            Answer::Vector(v) => {
                // A non-finite output has no JSON number: null, said as such.
                let values = v
                    .iter()
                    .map(|x| {
                        serde_json::Number::from_f64(f64::from(*x))
                            .map_or(serde_json::Value::Null, Into::into)
                    })
                    .collect();
                o.insert("outputs".into(), serde_json::Value::Array(values));
            }
            Answer::Error(e) => {
                o.insert("error".into(), e.clone().into());
            }
        }
        serde_json::Value::Object(o).to_string()
    }
}

/// A row to score and where its answer goes.
pub struct Request {
    pub features: Vec<f32>,
    /// When the row was read: latency counts from here.
    pub arrived: Instant,
    pub reply: Box<dyn FnOnce(Answer) + Send>,
}

/// What a batcher did: rows, model calls, and each row's latency (read to answered).
pub struct BatchStats {
    pub rows: u64,
    pub batches: u64,
    /// Rows the model call failed for.
    pub failed: u64,
    /// Microseconds from a row's arrival to its answer.
    pub latency_us: hdrhistogram::Histogram<u64>,
    /// From the first row's arrival to the last answer.
    pub busy: Duration,
}

impl BatchStats {
    fn new() -> Self {
        BatchStats {
            rows: 0,
            batches: 0,
            failed: 0,
            // 1 us to an hour, 3 significant figures; longer waits count as an hour.
            latency_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid bounds"),
            busy: Duration::ZERO,
        }
    }

    /// Rows answered per second of the batcher's busy span.
    pub fn throughput(&self) -> f64 {
        self.rows as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    /// A row's latency at `quantile` (0.5, 0.99), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// `N rows in B batches: R rows/s, latency p50 X ms, p99 Y ms`.
    pub fn summary(&self) -> String {
        format!(
            "{} rows in {} batches (mean {:.1}): {:.0} rows/s, latency p50 {:.3} ms, p99 {:.3} ms{}",
            self.rows,
            self.batches,
            self.rows as f64 / self.batches.max(1) as f64,
            self.throughput(),
            self.latency_ms(0.5),
            self.latency_ms(0.99),
            if self.failed > 0 {
                format!(", {} rows failed in the model", self.failed)
            } else {
                String::new()
            }
        )
    }
}

/// The batching thread; dropping every [`Sender`] it gave out (and [`Batcher::finish`])
/// ends it.
pub struct Batcher {
    tx: Option<Sender<Request>>,
    thread: JoinHandle<BatchStats>,
}

impl Batcher {
    pub fn start(scorer: Box<dyn Scorer>, config: BatchConfig) -> Batcher {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("ringtrain-batcher".into())
            .spawn(move || run(&*scorer, config, &rx))
            .expect("spawning the batcher thread");
        Batcher {
            tx: Some(tx),
            thread,
        }
    }

    /// Where requests go.
    pub fn sender(&self) -> Sender<Request> {
        self.tx.clone().expect("the batcher runs until finish")
    }

    /// Waits until every request sent has been answered, and says what was done.
    pub fn finish(mut self) -> BatchStats {
        drop(self.tx.take());
        // A model that panicked is the caller's panic too, not an empty report.
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

fn run(scorer: &dyn Scorer, config: BatchConfig, rx: &Receiver<Request>) -> BatchStats {
    let mut stats = BatchStats::new();
    let max_batch = config.max_batch.max(1);
    let mut first_arrival: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        first_arrival.get_or_insert(first.arrived);
        let deadline = Instant::now() + config.max_wait;
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.recv_deadline(deadline) {
                Ok(r) => batch.push(r),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        score(scorer, config.output, batch, &mut stats);
        if let Some(t0) = first_arrival {
            stats.busy = t0.elapsed();
        }
    }
    stats
}

fn score(scorer: &dyn Scorer, output: Output, batch: Vec<Request>, stats: &mut BatchStats) {
    let features: Vec<f32> = batch
        .iter()
        .flat_map(|r| r.features.iter().copied())
        .collect();
    let result = match output {
        Output::Class => scorer.probabilities(&features),
        Output::Vector => scorer.outputs_of(&features),
    };
    stats.batches += 1;
    let n = batch.len();
    let answers: Vec<Answer> = match result {
        Ok((values, width)) if width > 0 && values.len() == n * width => values
            .chunks_exact(width)
            .map(|row| match output {
                Output::Class => {
                    let (class, probability) = ringtrain_models::infer::best_class(row);
                    Answer::Class { class, probability }
                }
                Output::Vector => Answer::Vector(row.to_vec()),
            })
            .collect(),
        Ok(_) => {
            stats.failed += n as u64;
            vec![Answer::Error("the model gave no output for the batch".into()); n]
        }
        Err(e) => {
            stats.failed += n as u64;
            vec![Answer::Error(format!("the model failed: {e}")); n]
        }
    };
    for (request, answer) in batch.into_iter().zip(answers) {
        let latency = request.arrived.elapsed().as_micros() as u64;
        stats.latency_us.saturating_record(latency.max(1));
        stats.rows += 1;
        (request.reply)(answer);
    }
}
