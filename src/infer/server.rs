//! The line protocol over TCP, for many clients at once (tokio): a request is a line (a
//! CSV row or a JSON line), its answer a JSON line, in the order the connection sent
//! them. Requests from every connection meet in one [`Batcher`](super::Batcher), so a
//! batch holds rows of many clients. A bad request gets an error line and the
//! connection goes on; a client that goes away loses only its own answers.

use super::batcher::{Answer, Request};
use super::rows::{Line, PartLine};
use super::stream::StreamConfig;
use crossbeam_channel::Sender;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// Answers a connection may owe at once: past this, it is read no further until some
/// are written (a client that never reads cannot grow the server's memory).
const IN_FLIGHT_PER_CONNECTION: usize = 1024;

/// What a server did.
#[derive(Debug, Default)]
pub struct ServeCounts {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Requests answered with an error line.
    pub rejected: AtomicU64,
}

/// Serves `listener` until `shutdown` completes, then stops accepting, lets open
/// connections finish what they sent, and returns the counts.
pub async fn serve(
    listener: TcpListener,
    config: StreamConfig,
    batcher: Sender<Request>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Arc<ServeCounts>> {
    let counts = Arc::new(ServeCounts::default());
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (socket, _) = match accepted {
                    Ok(a) => a,
                    // A client that reset before we took it, or out of descriptors for
                    // the moment: the others are still served.
                    Err(e) => {
                        eprintln!("infer: accept failed: {e}");
                        continue;
                    }
                };
                counts.connections.fetch_add(1, Ordering::Relaxed);
                let (batcher, counts) = (batcher.clone(), counts.clone());
                tasks.spawn(async move {
                    if let Err(e) = connection(socket, config, batcher, &counts).await {
                        // One client's broken pipe is not the server's error.
                        if e.kind() != std::io::ErrorKind::BrokenPipe
                            && e.kind() != std::io::ErrorKind::ConnectionReset
                        {
                            eprintln!("infer: a connection ended: {e}");
                        }
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(counts)
}

type Pending = oneshot::Receiver<(Answer, Option<serde_json::Value>)>;

async fn connection(
    socket: TcpStream,
    config: StreamConfig,
    batcher: Sender<Request>,
    counts: &ServeCounts,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut read = BufReader::new(read);
    let (queue, mut answers) = mpsc::channel::<Pending>(IN_FLIGHT_PER_CONNECTION);
    let writer = async move {
        let mut out = Vec::new();
        while let Some(pending) = answers.recv().await {
            let (answer, id) = pending
                .await
                .unwrap_or((Answer::Error("the model stopped".into()), None));
            out.extend_from_slice(answer.to_json(id.as_ref()).as_bytes());
            out.push(b'\n');
            // Write when nothing more is ready: one write for a burst of answers.
            if answers.is_empty() {
                write.write_all(&out).await?;
                out.clear();
            }
        }
        write.write_all(&out).await?;
        write.shutdown().await
    };
    let reader = async move {
        while let Some(line) = read_line(&mut read, config.max_line_bytes).await? {
            counts.requests.fetch_add(1, Ordering::Relaxed);
            let row = match line {
                Line::Text(text) => config.rows.line(config.format, &text),
                Line::Bad(why) => Err(why),
            };
            let (tx, rx) = oneshot::channel();
            match row {
                Ok(row) => {
                    let id = row.id;
                    let request = Request {
                        features: row.features,
                        arrived: Instant::now(),
                        reply: Box::new(move |answer| {
                            let _ = tx.send((answer, id));
                        }),
                    };
                    if let Err(e) = batcher.send(request) {
                        (e.into_inner().reply)(Answer::Error("the model is not running".into()));
                    }
                }
                Err(e) => {
                    counts.rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send((Answer::Error(e), None));
                }
            }
            if queue.send(rx).await.is_err() {
                break; // the writer stopped: the client went away
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let (read, written) = tokio::join!(reader, writer);
    read?;
    written
}

/// [`super::rows::read_line`] on an asynchronous reader: the next line, at most `limit`
/// bytes of it held (a longer one is read to its end and reported), or `None` at the end.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    limit: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = PartLine::new(limit);
    loop {
        let chunk = reader.fill_buf().await?;
        let (used, done) = line.take(chunk);
        reader.consume(used);
        if done {
            return Ok(line.finish());
        }
    }
}
