//! A timeline of what ran where: spans with a name, a category, the thread that ran them
//! and a few arguments (shapes, GFLOP/s, bytes), collected while a [`Recording`] is live
//! and written as a Chrome trace by `ringtrain::trace`.
//!
//! Our own rather than `tracing` with `tracing-chrome`: that layer writes every argument
//! as a string (GFLOP/s could not be summed or sorted in Perfetto), panics in its writer
//! thread on an I/O error, and takes no events timed elsewhere, which GPU timestamp
//! queries are. Off, a span costs one relaxed atomic load; on, two clock reads and a push
//! onto a buffer owned by the thread (its lock is never contended but at the end).

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

static RECORDING: AtomicBool = AtomicBool::new(false);
static NEXT_THREAD: AtomicU32 = AtomicU32::new(1);

/// Every thread that has recorded an event: its id, name and buffer.
static THREADS: Mutex<Vec<ThreadEvents>> = Mutex::new(Vec::new());

type Buffer = Arc<Mutex<Vec<Event>>>;

struct ThreadEvents {
    tid: u32,
    name: String,
    events: Buffer,
}

thread_local! {
    static LOCAL: RefCell<Option<(u32, Buffer)>> = const { RefCell::new(None) };
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process's trace epoch.
pub fn now_ns() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

/// Whether a [`Recording`] is live: callers building costly arguments check this first.
#[inline]
pub fn enabled() -> bool {
    RECORDING.load(Ordering::Relaxed)
}

/// A value shown beside an event.
#[derive(Clone, Debug, PartialEq)]
pub enum Arg {
    Int(u64),
    Float(f64),
    Text(String),
}

impl From<usize> for Arg {
    fn from(v: usize) -> Self {
        Arg::Int(v as u64)
    }
}
impl From<u64> for Arg {
    fn from(v: u64) -> Self {
        Arg::Int(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::Float(v)
    }
}
impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}
impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_string())
    }
}

/// Where an event is drawn: a CPU thread, or a device's own timeline (GPU kernels timed
/// by timestamp queries, which run on no thread of ours).
#[derive(Clone, Debug, PartialEq)]
pub enum Track {
    Thread(u32),
    Device(String),
}

/// One finished span.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: Cow<'static, str>,
    pub cat: &'static str,
    pub track: Track,
    pub start_ns: u64,
    pub dur_ns: u64,
    pub args: Vec<(&'static str, Arg)>,
}

impl Event {
    pub fn arg(&self, key: &str) -> Option<&Arg> {
        self.args.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

fn with_local<R>(f: impl FnOnce(u32, &Buffer) -> R) -> R {
    LOCAL.with(|slot| {
        let mut slot = slot.borrow_mut();
        let (tid, buffer) = slot.get_or_insert_with(|| {
            let tid = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
            let thread = std::thread::current();
            let name = thread
                .name()
                .map_or_else(|| format!("thread {tid}"), str::to_string);
            let buffer = Buffer::default();
            THREADS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(ThreadEvents {
                    tid,
                    name,
                    events: buffer.clone(),
                });
            (tid, buffer)
        });
        f(*tid, buffer)
    })
}

fn push(mut event: Event) {
    with_local(|tid, buffer| {
        if event.track == Track::Thread(0) {
            event.track = Track::Thread(tid);
        }
        buffer.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    });
}

/// A span open from its creation to its drop; inert (and free) when nothing records.
#[must_use = "a span measures until it is dropped"]
pub struct Span {
    open: Option<Box<Event>>,
}

/// Opens a span named `name` in category `cat` (`"op"`, `"gemm"`, `"step"`, `"comm"`...).
#[inline]
pub fn span(cat: &'static str, name: &'static str) -> Span {
    if !enabled() {
        return Span { open: None };
    }
    Span {
        open: Some(Box::new(Event {
            name: Cow::Borrowed(name),
            cat,
            track: Track::Thread(0),
            start_ns: now_ns(),
            dur_ns: 0,
            args: Vec::new(),
        })),
    }
}

impl Span {
    /// Whether this span records (arguments are worth computing).
    pub fn is_recording(&self) -> bool {
        self.open.is_some()
    }

    /// Adds an argument; `value` is built only when the span records.
    pub fn arg<V: Into<Arg>>(mut self, key: &'static str, value: impl FnOnce() -> V) -> Self {
        self.set(key, value);
        self
    }

    /// As [`Span::arg`], on a span already held (a result known at the end).
    pub fn set<V: Into<Arg>>(&mut self, key: &'static str, value: impl FnOnce() -> V) {
        if let Some(e) = &mut self.open {
            e.args.push((key, value().into()));
        }
    }

    /// Nanoseconds since the span opened (0 when it does not record).
    pub fn elapsed_ns(&self) -> u64 {
        self.open
            .as_ref()
            .map_or(0, |e| now_ns().saturating_sub(e.start_ns))
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(mut e) = self.open.take() {
            e.dur_ns = now_ns().saturating_sub(e.start_ns);
            if enabled() {
                push(*e);
            }
        }
    }
}

/// Records an event timed elsewhere (a GPU kernel from timestamp queries), on `track`.
pub fn complete(
    cat: &'static str,
    name: impl Into<Cow<'static, str>>,
    track: Track,
    start_ns: u64,
    dur_ns: u64,
    args: Vec<(&'static str, Arg)>,
) {
    if enabled() {
        push(Event {
            name: name.into(),
            cat,
            track,
            start_ns,
            dur_ns,
            args,
        });
    }
}

/// Everything recorded between [`Recording::start`] and [`Recording::finish`].
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub events: Vec<Event>,
    /// `(tid, name)` of every thread that recorded.
    pub threads: Vec<(u32, String)>,
}

/// The live recording; at most one in a process at a time.
#[derive(Debug)]
pub struct Recording {
    finished: bool,
}

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
#[error("a trace is already being recorded in this process")]
pub struct AlreadyRecording;

impl Recording {
    /// Starts recording spans on every thread.
    pub fn start() -> Result<Recording, AlreadyRecording> {
        epoch();
        RECORDING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .map_err(|_| AlreadyRecording)?;
        // Only now (a refused start must not wipe the live recording): what a previous
        // recording's late spans left in the buffers.
        drain();
        Ok(Recording { finished: false })
    }

    /// Stops recording and returns the events, ordered by start time.
    pub fn finish(mut self) -> Trace {
        self.finished = true;
        RECORDING.store(false, Ordering::Release);
        let mut trace = drain();
        trace.events.sort_by_key(|e| e.start_ns);
        trace
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if !self.finished {
            RECORDING.store(false, Ordering::Release);
            drain();
        }
    }
}

fn drain() -> Trace {
    let mut threads = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    let mut trace = Trace::default();
    for t in threads.iter() {
        let mut events = t.events.lock().unwrap_or_else(|e| e.into_inner());
        if !events.is_empty() {
            trace.threads.push((t.tid, t.name.clone()));
            trace.events.append(&mut events);
        }
    }
    // Threads that have exited (a replica's per-step threads) hold no buffer any more.
    threads.retain(|t| Arc::strong_count(&t.events) > 1);
    trace
}
