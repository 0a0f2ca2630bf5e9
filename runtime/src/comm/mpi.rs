//! Collectives between processes over MPI (the `mpi` feature): one process per device,
//! launched by `mpirun`, `srun` or any launcher of the MPI library the crate was built
//! against (OpenMPI, MPICH).
//!
//! [`Mpi::init`] starts MPI for the process and [`Mpi::communicator`] gives an
//! [`MpiComm`], a [`Communicator`] like the in-process ring, over one of two algorithms:
//!
//! - [`MpiAlgorithm::Ring`] (the default) runs ringtrain's own ring, the schedule the
//!   in-process ring runs, with MPI point-to-point messages as the links: the same
//!   summation order, so the same bits on every rank and the same bits as a ring of
//!   threads of the same size.
//! - [`MpiAlgorithm::Native`] hands the whole reduction to `MPI_Iallreduce`, whose
//!   algorithm the MPI library picks (trees for small messages, rings or
//!   Rabenseifner for large ones, InfiniBand offload where there is one).
//!
//! Every MPI call is non-blocking and polled, so that no rank waits forever:
//! a collective also watches for a notice that a peer has failed (sent by
//! [`Communicator::abort`], or by a peer whose collective failed) and for its timeout.
//! A process whose communicator failed ends with `MPI_Abort` rather than `MPI_Finalize`
//! (after a short grace for its peers to report what they were told), so a failure
//! tears the whole job down instead of leaving ranks blocked in finalize; a rank that
//! dies outright is noticed by the launcher, which stops the others.
//!
//! ```no_run
//! use ringtrain_runtime::comm::mpi::{Mpi, MpiConfig};
//! use ringtrain_runtime::comm::Communicator;
//!
//! # fn main() -> Result<(), ringtrain_runtime::comm::CommError> {
//! // Launched as `mpirun -np 4 this-program`.
//! let mpi = Mpi::init()?;
//! let mut comm = mpi.communicator(MpiConfig::default())?;
//! let mut grads = vec![mpi.rank() as f32; 1000];
//! comm.all_reduce(&mut grads)?; // 0 + 1 + 2 + 3 = 6 everywhere
//! assert!(grads.iter().all(|&g| g == (0..mpi.size()).sum::<usize>() as f32));
//! # Ok(())
//! # }
//! ```
//!
//! `DataParallel::with_communicators` (in `ringtrain-models`) takes such a communicator
//! for the process's one replica; `examples/mpi_check.rs` is a complete program.

use super::schedule::{all_reduce_steps, chunk, chunks_in, Combine, Step};
use super::{CommError, Communicator};
use mpi::datatype::Equivalence;
use mpi::environment::{Threading, Universe};
use mpi::ffi;
use mpi::point_to_point::{MatchedReceiveVec, Source, Status};
use mpi::raw::AsRaw;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tag of failure notices, on a communicator of their own.
const NOTICE_TAG: c_int = 1;
/// Data messages are tagged with their collective's sequence number modulo this (MPI
/// guarantees tags up to 32767), so a rank in another collective is caught at once.
const TAG_SPAN: u64 = 32_000;
/// How long a failed process waits before `MPI_Abort`, so that its peers can print the
/// failure they were notified of before the launcher stops them.
const ABORT_GRACE: Duration = Duration::from_secs(1);
/// How long a failing rank tries to deliver its failure notices.
const NOTICE_DELIVERY: Duration = Duration::from_secs(1);
/// `MPI_Iallreduce` pieces: bounds the staging buffers of the native algorithm.
const NATIVE_PIECE_ELEMS: usize = 16 << 20;

/// Which all-reduce an [`MpiComm`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MpiAlgorithm {
    /// ringtrain's pipelined ring over point-to-point messages.
    #[default]
    Ring,
    /// The MPI library's own `MPI_Iallreduce` and `MPI_Ibcast`.
    Native,
}

impl std::str::FromStr for MpiAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ring" => Ok(Self::Ring),
            "native" => Ok(Self::Native),
            _ => Err(format!("unknown MPI algorithm `{s}` (ring or native)")),
        }
    }
}

/// Tuning and failure detection of an [`MpiComm`].
#[derive(Debug, Clone)]
pub struct MpiConfig {
    pub algorithm: MpiAlgorithm,
    /// Bytes per ring message: segments travel in chunks of this size, two in flight per
    /// link, so one is combined while the next arrives.
    pub chunk_bytes: usize,
    /// How long a collective waits without progress before declaring a peer hung.
    pub timeout: Duration,
}

impl Default for MpiConfig {
    fn default() -> Self {
        Self {
            algorithm: MpiAlgorithm::Ring,
            chunk_bytes: 1 << 20,
            timeout: Duration::from_secs(120),
        }
    }
}

/// The process's MPI library: initialized once, finalized (or, after a failure,
/// aborted) when the last [`Mpi`] handle and [`MpiComm`] are gone.
struct Environment {
    universe: Option<Universe>,
    /// Set when a communicator of this process failed: the process then aborts the job
    /// on exit instead of finalizing, since peers may still be waiting on it.
    failed: AtomicBool,
}

impl Drop for Environment {
    fn drop(&mut self) {
        let Some(universe) = self.universe.take() else {
            return;
        };
        if self.failed.load(Ordering::Acquire) || std::thread::panicking() {
            std::thread::sleep(ABORT_GRACE);
            universe.world().abort(1);
        }
        drop(universe); // MPI_Finalize
    }
}

/// An rsmpi communicator, moved to whichever thread runs a collective. Sound because
/// MPI is initialized with at least `MPI_THREAD_SERIALIZED` (checked in [`Mpi::init`])
/// and every use goes through `&mut MpiComm`, so no two threads call MPI on it at once.
struct SendComm(SimpleCommunicator);
// SAFETY: see the type's documentation.
unsafe impl Send for SendComm {}

/// MPI in this process: its rank in the job, and the node it shares with other ranks.
#[derive(Clone)]
pub struct Mpi {
    env: Arc<Environment>,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mpi(rank {} of {}, local {} of {})",
            self.rank, self.size, self.local_rank, self.local_size
        )
    }
}

impl Mpi {
    /// Initializes MPI (`MPI_Init_thread`, asking for `MPI_THREAD_SERIALIZED`: data
    /// parallelism runs collectives on a communication thread). Call it once per process;
    /// a second call fails, as MPI cannot be initialized twice.
    pub fn init() -> Result<Self, CommError> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or_else(|| {
                CommError::InvalidArgument(
                    "MPI is already initialized in this process; create one ringtrain Mpi \
                     and clone it"
                        .into(),
                )
            })?;
        let env = Arc::new(Environment {
            universe: Some(universe),
            failed: AtomicBool::new(false),
        });
        if threading < Threading::Serialized {
            return Err(CommError::InvalidArgument(format!(
                "the MPI library provides thread level {threading:?}; ringtrain needs \
                 Serialized or Multiple (rebuild MPI with thread support)"
            )));
        }
        let world = env.universe.as_ref().expect("set above").world();
        let node = world.split_shared(world.rank());
        Ok(Self {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: node.rank() as usize,
            local_size: node.size() as usize,
            env,
        })
    }

    /// This process's rank in the job.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Processes in the job.
    pub fn size(&self) -> usize {
        self.size
    }

    /// This process's rank among the processes on its node (those that share memory
    /// with it): the index of the GPU it should take.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Marks this process failed: when the last handle and communicator are gone, the
    /// job is aborted (`MPI_Abort`) instead of finalized. Call it when a rank gives up
    /// for a reason of its own, so that peers waiting on it do not wait in
    /// `MPI_Finalize`; a communicator whose collective failed does this itself.
    pub fn abort_job_on_exit(&self) {
        self.env.failed.store(true, Ordering::Release);
    }

    /// The host name MPI reports for this process.
    pub fn processor_name(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into())
    }

    /// The MPI library, e.g. "Open MPI v4.1.4" (the first part of what it reports).
    pub fn library_version(&self) -> String {
        mpi::environment::library_version()
            .ok()
            .and_then(|v| v.split([',', '\n']).next().map(|s| s.trim().to_string()))
            .unwrap_or_default()
    }

    /// A communicator over every process of the job. This is collective: every process
    /// must create its communicators in the same order. Each gets its own MPI
    /// communicators (duplicates of `MPI_COMM_WORLD`), so its messages never meet the
    /// application's own MPI traffic.
    pub fn communicator(&self, config: MpiConfig) -> Result<MpiComm, CommError> {
        if config.chunk_bytes < 4 || config.chunk_bytes / 4 > i32::MAX as usize {
            return Err(CommError::InvalidArgument(format!(
                "MPI chunks must hold between 1 and 2^31 - 1 f32s (chunk_bytes {})",
                config.chunk_bytes
            )));
        }
        let world = self.env.universe.as_ref().expect("live until drop").world();
        let (data, notices) = (world.duplicate(), world.duplicate());
        for c in [&data, &notices] {
            // Errors come back as codes to report, not as an abort of the job.
            check(unsafe { ffi::MPI_Comm_set_errhandler(c.as_raw(), ffi::RSMPI_ERRORS_RETURN) })?;
        }
        let chunk_elems = config.chunk_bytes / 4;
        Ok(MpiComm {
            rank: data.rank() as usize,
            size: data.size() as usize,
            data: SendComm(data),
            notices: SendComm(notices),
            chunk_elems,
            config,
            ops: 0,
            broken: None,
            send_bufs: Default::default(),
            recv_bufs: Default::default(),
            sends: Default::default(),
            recvs: Default::default(),
            native: Request::default(),
            stage: Default::default(),
            leaked: false,
            env: self.env.clone(),
        })
    }
}

/// An MPI error code as a [`CommError`].
fn check(code: c_int) -> Result<(), CommError> {
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

/// A non-blocking MPI operation, or none. (`MPI_Request` is a pointer in Open MPI and
/// an integer in MPICH, so "none" is spelled with an `Option`.)
#[derive(Default)]
struct Request(Option<ffi::MPI_Request>);
// SAFETY: as for `SendComm`: a request is owned by one `MpiComm` and used through
// `&mut`, so MPI sees it from one thread at a time.
unsafe impl Send for Request {}

impl Request {
    /// Starts an operation: `post` fills in the raw handle and returns MPI's code.
    fn post(&mut self, post: impl FnOnce(&mut ffi::MPI_Request) -> c_int) -> Result<(), CommError> {
        debug_assert!(!self.is_active(), "one operation per slot at a time");
        let mut raw = unsafe { ffi::RSMPI_REQUEST_NULL };
        let code = post(&mut raw);
        self.0 = Some(raw);
        check(code)
    }

    fn is_active(&self) -> bool {
        self.0
            .is_some_and(|r| r != unsafe { ffi::RSMPI_REQUEST_NULL })
    }

    /// The status, once the operation has completed.
    fn test(&mut self) -> Result<Option<ffi::MPI_Status>, CommError> {
        let Some(raw) = self
            .0
            .as_mut()
            .filter(|r| **r != unsafe { ffi::RSMPI_REQUEST_NULL })
        else {
            return Ok(Some(unsafe { std::mem::zeroed() }));
        };
        let mut done: c_int = 0;
        let mut status: ffi::MPI_Status = unsafe { std::mem::zeroed() };
        check(unsafe { ffi::MPI_Test(raw, &mut done, &mut status) })?;
        if done != 0 {
            self.0 = None;
        }
        Ok((done != 0).then_some(status))
    }

    /// Gives up on an operation after a failure: cancels it and lets MPI free it when it
    /// can. Returns whether it was still in flight (its buffer must then outlive MPI).
    fn abandon(&mut self) -> bool {
        let active = self.is_active();
        if let Some(mut raw) = self.0.take().filter(|_| active) {
            unsafe {
                ffi::MPI_Cancel(&mut raw);
                ffi::MPI_Request_free(&mut raw);
            }
        }
        active
    }
}

/// Waits between polls of an operation. MPI moves data (rendezvous transfers, the steps
/// of a non-blocking collective) only inside MPI calls, so a waiting rank keeps polling:
/// spinning briefly, then yielding its core between polls (ranks may outnumber cores),
/// and only after a long wait (a slow peer, not a transfer) sleeping between polls.
struct Backoff {
    polls: u32,
    since: Instant,
}

/// How long a waiting rank polls without sleeping.
const BUSY_POLL: Duration = Duration::from_millis(50);

impl Backoff {
    fn new() -> Self {
        Self {
            polls: 0,
            since: Instant::now(),
        }
    }

    fn pause(&mut self) {
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

/// One rank's end of a group of MPI processes; see the module documentation.
pub struct MpiComm {
    data: SendComm,
    notices: SendComm,
    rank: usize,
    size: usize,
    config: MpiConfig,
    chunk_elems: usize,
    ops: u64,
    broken: Option<CommError>,
    /// Two chunks in flight each way per link: one moves while the other is combined.
    send_bufs: [Vec<f32>; 2],
    recv_bufs: [Vec<f32>; 2],
    sends: [Request; 2],
    recvs: [Request; 2],
    native: Request,
    /// The native algorithm's send and receive staging: MPI reads and writes only
    /// buffers this communicator owns, so abandoning an operation never leaves MPI
    /// holding a caller's slice.
    stage: (Vec<f32>, Vec<f32>),
    /// Set when operations were abandoned in flight: the buffers are then never freed.
    leaked: bool,
    /// Last, so that the communicators above are freed before MPI is finalized.
    env: Arc<Environment>,
}

impl std::fmt::Debug for MpiComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MpiComm(rank {} of {}, {:?})",
            self.rank, self.size, self.config.algorithm
        )
    }
}

impl Drop for MpiComm {
    fn drop(&mut self) {
        if self.leaked {
            // MPI may still write into these after a failure; the process is about to
            // abort anyway.
            std::mem::forget(std::mem::take(&mut self.send_bufs));
            std::mem::forget(std::mem::take(&mut self.recv_bufs));
            std::mem::forget(std::mem::take(&mut self.stage));
        }
    }
}

fn f32_type() -> ffi::MPI_Datatype {
    f32::equivalent_datatype().as_raw()
}

impl MpiComm {
    pub fn config(&self) -> &MpiConfig {
        &self.config
    }

    /// `MPI_Allreduce` (sum) of `send` into `recv`, blocking, as an application calling
    /// MPI directly would: no staging, no failure notices, no timeout. It is the baseline
    /// the benchmarks put beside this communicator's own collectives.
    pub fn blocking_all_reduce(&mut self, send: &[f32], recv: &mut [f32]) -> Result<(), CommError> {
        if send.len() != recv.len() || send.len() > i32::MAX as usize {
            return Err(CommError::InvalidArgument(format!(
                "MPI_Allreduce needs equal lengths below 2^31 (send {}, receive {})",
                send.len(),
                recv.len()
            )));
        }
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        check(unsafe {
            ffi::MPI_Allreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                send.len() as c_int,
                f32_type(),
                ffi::RSMPI_SUM,
                self.data.0.as_raw(),
            )
        })
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.size
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }

    fn tag(&self) -> c_int {
        2 + (self.ops % TAG_SPAN) as c_int
    }

    /// A failure notice from a peer, if one has arrived: `[culprit rank as u64 LE,
    /// reason bytes]`.
    fn notice(&self) -> Option<CommError> {
        let probed = self
            .notices
            .0
            .any_process()
            .immediate_matched_probe_with_tag(NOTICE_TAG)?;
        let (bytes, status) = probed.matched_receive_vec::<u8>();
        let sender = status.source_rank() as usize;
        if bytes.len() < 8 {
            return Some(CommError::PeerFailed {
                rank: sender,
                reason: "it sent a malformed failure notice".into(),
            });
        }
        let culprit = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        Some(CommError::PeerFailed {
            rank: culprit,
            reason: String::from_utf8_lossy(&bytes[8..]).into_owned(),
        })
    }

    /// Tells every other rank that `culprit` failed, for `reason`. Best effort: a peer
    /// that is gone cannot be told, and the wait for delivery is bounded.
    fn notify_all(&self, culprit: usize, reason: &str) {
        let mut bytes = (culprit as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(reason.as_bytes());
        // MPI may still be reading it when this returns; it is sent once per failure.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let mut pending = Vec::new();
        for peer in (0..self.size).filter(|&p| p != self.rank) {
            let mut req = Request::default();
            let posted = req.post(|raw| unsafe {
                ffi::MPI_Isend(
                    bytes.as_ptr().cast(),
                    bytes.len() as c_int,
                    u8::equivalent_datatype().as_raw(),
                    peer as c_int,
                    NOTICE_TAG,
                    self.notices.0.as_raw(),
                    raw,
                )
            });
            if posted.is_ok() {
                pending.push(req);
            }
        }
        let start = Instant::now();
        let mut backoff = Backoff::new();
        while start.elapsed() < NOTICE_DELIVERY {
            pending.retain_mut(|r| !matches!(r.test(), Ok(Some(_)) | Err(_)));
            if pending.is_empty() {
                return;
            }
            backoff.pause();
        }
        for mut r in pending {
            r.abandon();
        }
    }

    /// Polls `req` to completion, watching for failure notices and the timeout. `peer`
    /// is the rank the operation waits on, if one; it is blamed for a timeout.
    fn wait(&self, req: &mut Request, peer: Option<usize>) -> Result<ffi::MPI_Status, CommError> {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = req.test()? {
                return Ok(status);
            }
            if let Some(e) = self.notice() {
                return Err(e);
            }
            let waited = start.elapsed();
            if waited > self.config.timeout {
                return Err(match peer {
                    Some(rank) => CommError::Timeout { rank, waited },
                    None => CommError::Stalled { waited },
                });
            }
            backoff.pause();
        }
    }

    /// Runs one collective: refuses after an earlier failure, and on a failure abandons
    /// what is in flight, tells the peers (unless a peer told us), and marks the process
    /// failed so that it aborts the job on exit.
    fn collective(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if let Some(e) = self.notice() {
            self.fail(&e);
            return Err(e);
        }
        self.ops += 1;
        let result = f(self);
        if let Err(e) = &result {
            self.fail(e);
        }
        result
    }

    fn fail(&mut self, e: &CommError) {
        let mut leaked = false;
        for r in self
            .sends
            .iter_mut()
            .chain(&mut self.recvs)
            .chain(std::iter::once(&mut self.native))
        {
            leaked |= r.abandon();
        }
        self.leaked |= leaked;
        match e {
            CommError::PeerFailed { .. } => {}
            CommError::Timeout { rank, waited } => self.notify_all(
                *rank,
                &format!(
                    "it sent nothing to peer {} for {:.0} s",
                    self.rank,
                    waited.as_secs_f64()
                ),
            ),
            other => self.notify_all(self.rank, &other.to_string()),
        }
        self.env.failed.store(true, Ordering::Release);
        self.broken = Some(e.clone());
    }

    /// Starts sending `data` to `peer` from send slot `slot`, once the slot's previous
    /// send has completed.
    fn start_send(&mut self, slot: usize, data: &[f32], peer: usize) -> Result<(), CommError> {
        let mut req = std::mem::take(&mut self.sends[slot]);
        let waited = self.wait(&mut req, Some(peer));
        self.sends[slot] = req;
        waited?;
        let (tag, comm) = (self.tag(), self.data.0.as_raw());
        let buf = &mut self.send_bufs[slot];
        buf.clear();
        buf.extend_from_slice(data);
        self.sends[slot].post(|raw| unsafe {
            ffi::MPI_Isend(
                buf.as_ptr().cast(),
                buf.len() as c_int,
                f32_type(),
                peer as c_int,
                tag,
                comm,
                raw,
            )
        })
    }

    /// Starts receiving up to one chunk from `peer` into receive slot `slot`.
    fn start_recv(&mut self, slot: usize, peer: usize) -> Result<(), CommError> {
        let buf = &mut self.recv_bufs[slot];
        buf.resize(self.chunk_elems, 0.0);
        let comm = self.data.0.as_raw();
        self.recvs[slot].post(|raw| unsafe {
            ffi::MPI_Irecv(
                buf.as_mut_ptr().cast(),
                buf.len() as c_int,
                f32_type(),
                peer as c_int,
                ffi::RSMPI_ANY_TAG,
                comm,
                raw,
            )
        })
    }

    /// Completes the receive in `slot` and combines it into `dst`, which it must fill.
    fn finish_recv(
        &mut self,
        slot: usize,
        peer: usize,
        dst: &mut [f32],
        combine: Combine,
    ) -> Result<(), CommError> {
        let mut req = std::mem::take(&mut self.recvs[slot]);
        let waited = self.wait(&mut req, Some(peer));
        self.recvs[slot] = req;
        let status = Status::from_raw(waited?);
        let got = status.count(f32::equivalent_datatype()) as usize;
        if status.tag() != self.tag() || got != dst.len() {
            return Err(CommError::Mismatch(format!(
                "peer {peer} sent {got} elements of collective tag {}, peer {} expected {} of tag {}",
                status.tag(),
                self.rank,
                dst.len(),
                self.tag()
            )));
        }
        let src = &self.recv_bufs[slot][..got];
        match combine {
            Combine::Add => {
                for (d, x) in dst.iter_mut().zip(src) {
                    *d += *x;
                }
            }
            Combine::Copy => dst.copy_from_slice(src),
        }
        Ok(())
    }

    /// Waits for both send slots, so that nothing is in flight between collectives.
    fn drain_sends(&mut self) -> Result<(), CommError> {
        let next = self.next_rank();
        for slot in 0..2 {
            let mut req = std::mem::take(&mut self.sends[slot]);
            let waited = self.wait(&mut req, Some(next));
            self.sends[slot] = req;
            waited?;
        }
        Ok(())
    }

    /// One ring step, pipelined two chunks deep: chunk `c + 1` is posted both ways
    /// before chunk `c` is combined.
    fn ring_step(&mut self, data: &mut [f32], step: &Step) -> Result<(), CommError> {
        let (next, prev, ce) = (self.next_rank(), self.prev_rank(), self.chunk_elems);
        let n = chunks_in(step, ce);
        let start = |comm: &mut Self, c: usize, data: &[f32]| -> Result<(), CommError> {
            if let Some(inc) = chunk(&step.inc, ce, c) {
                debug_assert!(inc.len() <= ce);
                comm.start_recv(c % 2, prev)?;
            }
            if let Some(out) = chunk(&step.out, ce, c) {
                comm.start_send(c % 2, &data[out], next)?;
            }
            Ok(())
        };
        if n > 0 {
            start(self, 0, data)?;
        }
        for c in 0..n {
            if c + 1 < n {
                start(self, c + 1, data)?;
            }
            if let Some(inc) = chunk(&step.inc, ce, c) {
                self.finish_recv(c % 2, prev, &mut data[inc], step.combine)?;
            }
        }
        Ok(())
    }

    fn ring_all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        for step in all_reduce_steps(data.len(), self.size, self.rank) {
            self.ring_step(data, &step)?;
        }
        self.drain_sends()
    }

    /// Chunks pass from `root` round the ring; each rank forwards a chunk as soon as it
    /// has it, so the chunks travel pipelined.
    fn ring_broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let (next, prev, ce) = (self.next_rank(), self.prev_rank(), self.chunk_elems);
        let all = 0..data.len();
        let forwards = next != root;
        let mut c = 0;
        while let Some(range) = chunk(&all, ce, c) {
            if self.rank != root {
                self.start_recv(c % 2, prev)?;
                self.finish_recv(c % 2, prev, &mut data[range.clone()], Combine::Copy)?;
            }
            if forwards {
                self.start_send(c % 2, &data[range], next)?;
            }
            c += 1;
        }
        self.drain_sends()
    }

    fn native_all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        for piece in data.chunks_mut(NATIVE_PIECE_ELEMS) {
            let (send, recv) = &mut self.stage;
            send.clear();
            send.extend_from_slice(piece);
            recv.resize(piece.len(), 0.0);
            let comm = self.data.0.as_raw();
            self.native.post(|raw| unsafe {
                ffi::MPI_Iallreduce(
                    send.as_ptr().cast(),
                    recv.as_mut_ptr().cast(),
                    piece.len() as c_int,
                    f32_type(),
                    ffi::RSMPI_SUM,
                    comm,
                    raw,
                )
            })?;
            self.wait_native()?;
            piece.copy_from_slice(&self.stage.1[..piece.len()]);
        }
        Ok(())
    }

    fn native_broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        for piece in data.chunks_mut(NATIVE_PIECE_ELEMS) {
            let buf = &mut self.stage.0;
            buf.clear();
            buf.extend_from_slice(piece);
            let comm = self.data.0.as_raw();
            self.native.post(|raw| unsafe {
                ffi::MPI_Ibcast(
                    buf.as_mut_ptr().cast(),
                    piece.len() as c_int,
                    f32_type(),
                    root as c_int,
                    comm,
                    raw,
                )
            })?;
            self.wait_native()?;
            piece.copy_from_slice(&self.stage.0[..piece.len()]);
        }
        Ok(())
    }

    fn wait_native(&mut self) -> Result<(), CommError> {
        let mut req = std::mem::take(&mut self.native);
        let waited = self.wait(&mut req, None);
        self.native = req;
        waited.map(drop)
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        if self.size == 1 {
            return self.broken.clone().map_or(Ok(()), Err);
        }
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.collective(|c| c.ring_all_reduce(data)),
            MpiAlgorithm::Native => self.collective(|c| c.native_all_reduce(data)),
        }
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(CommError::InvalidArgument(format!(
                "broadcast from rank {root} in a group of {}",
                self.size
            )));
        }
        if self.size == 1 {
            return self.broken.clone().map_or(Ok(()), Err);
        }
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.collective(|c| c.ring_broadcast(data, root)),
            MpiAlgorithm::Native => self.collective(|c| c.native_broadcast(data, root)),
        }
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.collective(|c| {
            let comm = c.data.0.as_raw();
            c.native
                .post(|raw| unsafe { ffi::MPI_Ibarrier(comm, raw) })?;
            c.wait_native()
        })
    }

    fn abort(&mut self, reason: &str) {
        if self.broken.is_some() {
            return;
        }
        let e = CommError::PeerFailed {
            rank: self.rank,
            reason: reason.to_string(),
        };
        self.fail(&CommError::InvalidArgument(reason.to_string()));
        self.broken = Some(e);
    }
}
