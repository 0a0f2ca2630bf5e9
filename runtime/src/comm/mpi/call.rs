//! The raw MPI calls the communicator makes: error codes as values, non-blocking
//! operations as [`Request`]s, and the process-wide lock that serializes calls when the
//! MPI library is not thread-safe (`MPI_THREAD_SERIALIZED`).

use super::super::CommError;
use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::raw::AsRaw;
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set by `Mpi::init` when the library gave `MPI_THREAD_SERIALIZED` rather than
/// `MPI_THREAD_MULTIPLE`: then no two threads of the process may be inside MPI at once,
/// whichever communicators they use, and every call takes [`LOCK`].
pub(super) static SERIALIZE: AtomicBool = AtomicBool::new(false);
static LOCK: Mutex<()> = Mutex::new(());

/// Runs one MPI call, serialized with every other call of the process where the library
/// requires it. Hold it for one call, never across a wait on a peer, so that two threads
/// polling different communicators cannot block each other.
pub(super) fn call<T>(f: impl FnOnce() -> T) -> T {
    if SERIALIZE.load(Ordering::Relaxed) {
        let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
        f()
    } else {
        f()
    }
}

/// An MPI error code as a [`CommError`].
pub(super) fn check(code: c_int) -> Result<(), CommError> {
    if code == 0 {
        return Ok(());
    }
    let mut text = vec![0u8; 1024];
    let mut len: c_int = 0;
    unsafe { ffi::MPI_Error_string(code, text.as_mut_ptr().cast(), &mut len) };
    text.truncate(len.clamp(0, 1024) as usize);
    Err(CommError::InvalidArgument(format!(
        "MPI error {code}: {}",
        String::from_utf8_lossy(&text)
    )))
}

pub(super) fn f32_type() -> ffi::MPI_Datatype {
    f32::equivalent_datatype().as_raw()
}

pub(super) fn u8_type() -> ffi::MPI_Datatype {
    u8::equivalent_datatype().as_raw()
}

/// What kind of operation a request is: point-to-point operations can be cancelled;
/// cancelling or freeing a collective's request is erroneous (MPI-3.1 section 5.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Kind {
    #[default]
    PointToPoint,
    Collective,
}

/// A non-blocking MPI operation, or none. (`MPI_Request` is a pointer in Open MPI and
/// an integer in MPICH, so "none" is spelled with an `Option`.)
#[derive(Default)]
pub(super) struct Request {
    raw: Option<ffi::MPI_Request>,
    kind: Kind,
}

// SAFETY: a request is owned by one `MpiComm` and used through `&mut`; MPI calls on it
// go through `call`, which serializes them where the library requires it.
unsafe impl Send for Request {}

impl Request {
    /// Starts an operation: `post` fills in the raw handle and returns MPI's code.
    pub fn post(
        &mut self,
        kind: Kind,
        post: impl FnOnce(&mut ffi::MPI_Request) -> c_int,
    ) -> Result<(), CommError> {
        debug_assert!(!self.is_active(), "one operation per request at a time");
        let mut raw = unsafe { ffi::RSMPI_REQUEST_NULL };
        let code = call(|| post(&mut raw));
        self.raw = Some(raw);
        self.kind = kind;
        check(code)
    }

    pub fn is_active(&self) -> bool {
        self.raw
            .is_some_and(|r| r != unsafe { ffi::RSMPI_REQUEST_NULL })
    }

    /// The status, once the operation has completed (at once if there is none).
    pub fn test(&mut self) -> Result<Option<ffi::MPI_Status>, CommError> {
        if !self.is_active() {
            self.raw = None;
            return Ok(Some(unsafe { std::mem::zeroed() }));
        }
        let raw = self.raw.as_mut().expect("active");
        let mut done: c_int = 0;
        let mut status: ffi::MPI_Status = unsafe { std::mem::zeroed() };
        check(call(|| unsafe {
            ffi::MPI_Test(raw, &mut done, &mut status)
        }))?;
        if done == 0 {
            return Ok(None);
        }
        self.raw = None;
        Ok(Some(status))
    }

    /// Asks MPI to cancel a point-to-point operation still in flight; it then completes
    /// (cancelled, or done after all), which [`Request::test`] reports.
    pub fn cancel(&mut self) {
        if let (true, Some(raw)) = (self.is_active(), self.raw.as_mut()) {
            call(|| unsafe { ffi::MPI_Cancel(raw) });
        }
    }

    /// Gives up on an operation after a failure. A point-to-point operation is cancelled
    /// and freed, so MPI completes it on its own; a collective's handle is just dropped.
    /// Returns whether the operation was still in flight: then MPI may still use its
    /// buffer, which must never be freed.
    pub fn abandon(&mut self) -> bool {
        let active = self.is_active();
        if let Some(mut raw) = self.raw.take().filter(|_| active) {
            if self.kind == Kind::PointToPoint {
                call(|| unsafe {
                    ffi::MPI_Cancel(&mut raw);
                    ffi::MPI_Request_free(&mut raw);
                });
            }
        }
        active
    }
}

/// How long a waiting rank polls without sleeping.
const BUSY_POLL: Duration = Duration::from_millis(50);

/// Waits between polls of an operation. MPI moves data (rendezvous transfers, the steps
/// of a non-blocking collective) only inside MPI calls, so a waiting rank keeps polling:
/// spinning briefly, then yielding its core between polls (ranks may outnumber cores),
/// and only after a long wait (a slow peer, not a transfer) sleeping between polls.
pub(super) struct Backoff {
    polls: u32,
    since: Instant,
}

impl Backoff {
    pub fn new() -> Self {
        Self {
            polls: 0,
            since: Instant::now(),
        }
    }

    pub fn pause(&mut self) {
        self.polls = self.polls.saturating_add(1);
        if self.polls <= 64 {
            std::hint::spin_loop();
        } else if self.since.elapsed() < BUSY_POLL {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}
