//! A stream of rows (a file or stdin) scored through a [`Batcher`], one answer line per
//! row, in the rows' order: a malformed row gets an error line and the rest are served.

use super::batcher::{Answer, Request};
use super::rows::{read_line, Line, RowFormat, RowSpec};
use crossbeam_channel::Sender;
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Rows read and answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounts {
    pub rows: u64,
    /// Rows answered with an error line (malformed, wrong size, not finite).
    pub rejected: u64,
}

/// How a stream is read.
#[derive(Debug, Clone, Copy)]
pub struct StreamConfig {
    pub format: RowFormat,
    pub rows: RowSpec,
    /// The longest line read into memory (a longer one is an error line).
    pub max_line_bytes: usize,
}

/// The largest IDX input read (a gzip bomb or a lying header stops here).
const MAX_IDX_INPUT: u64 = 1 << 31;

/// Reads `input` to its end, sends its rows to `batcher`, and writes each answer as a
/// JSON line to `out`, in input order. An I/O error reading or writing ends the stream
/// with that error; a bad row never does.
pub fn run_stream(
    mut input: impl BufRead,
    config: StreamConfig,
    batcher: &Sender<Request>,
    out: impl Write + Send,
) -> std::io::Result<StreamCounts> {
    let (tx, rx) = crossbeam_channel::unbounded::<(u64, Answer, Option<serde_json::Value>)>();
    // Set when the writer stops (its reader went away): reading on would be for nothing.
    let stopped = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let result = write_in_order(out, rx);
            stopped.store(true, Ordering::Relaxed);
            result
        });
        let mut counts = StreamCounts::default();
        let mut seq = 0u64;
        let mut submit = |row: Result<super::rows::Row, String>| {
            let this = seq;
            seq += 1;
            counts.rows += 1;
            match row {
                Ok(row) => {
                    let (tx, id) = (tx.clone(), row.id);
                    let request = Request {
                        features: row.features,
                        arrived: Instant::now(),
                        reply: Box::new(move |answer| {
                            let _ = tx.send((this, answer, id));
                        }),
                    };
                    if let Err(e) = batcher.send(request) {
                        let answer = Answer::Error("the model is not running".into());
                        (e.into_inner().reply)(answer);
                    }
                }
                Err(e) => {
                    counts.rejected += 1;
                    let _ = tx.send((this, Answer::Error(e), None));
                }
            }
        };
        let read: std::io::Result<()> = (|| {
            if config.format == RowFormat::Idx {
                let mut bytes = Vec::new();
                input
                    .by_ref()
                    .take(MAX_IDX_INPUT + 1)
                    .read_to_end(&mut bytes)?;
                if bytes.len() as u64 > MAX_IDX_INPUT {
                    submit(Err(format!("IDX input over {MAX_IDX_INPUT} bytes")));
                    return Ok(());
                }
                match config.rows.idx(&bytes, "the input") {
                    Ok(rows) => rows.into_iter().for_each(|r| submit(Ok(r))),
                    Err(e) => submit(Err(e)),
                }
                return Ok(());
            }
            while let Some(line) = read_line(&mut input, config.max_line_bytes)? {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                match line {
                    Line::Text(text) => submit(config.rows.line(config.format, &text)),
                    Line::Bad(why) => submit(Err(why)),
                }
            }
            Ok(())
        })();
        // Every row's sender gone, the writer ends after the last answer.
        drop(tx);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the output thread panicked")));
        read?;
        written?;
        Ok(counts)
    })
}

/// Writes answers as they come, each once every earlier one is written.
fn write_in_order(
    out: impl Write,
    rx: crossbeam_channel::Receiver<(u64, Answer, Option<serde_json::Value>)>,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    loop {
        // Flush while waiting, so that a live stream's answers go out as they are made.
        let received = match rx.try_recv() {
            Ok(r) => Some(r),
            Err(crossbeam_channel::TryRecvError::Empty) => {
                out.flush()?;
                rx.recv().ok()
            }
            Err(crossbeam_channel::TryRecvError::Disconnected) => None,
        };
        let Some((seq, answer, id)) = received else {
            break;
        };
        pending.insert(seq, (answer, id));
        while let Some((answer, id)) = pending.remove(&next) {
            writeln!(out, "{}", answer.to_json(id.as_ref()))?;
            next += 1;
        }
    }
    out.flush()
}
