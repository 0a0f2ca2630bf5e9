//! [`MpiComm`]: one rank's end of a group of MPI processes.

use super::call::{call, check, f32_type, Backoff, Kind, Request};
use super::notice::{self, Notice};
use super::{Environment, MpiAlgorithm, MpiConfig};
use crate::comm::blame::{self, Waiting};
use crate::comm::schedule::{all_reduce_steps, chunk, chunks_in, Combine, Step};
use crate::comm::{wire, CommError, Communicator};
use crate::Precision;
use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::point_to_point::Status;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use std::mem::ManuallyDrop;
use std::os::raw::c_int;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Data messages are tagged with their collective's sequence number modulo this and the
/// format their values travel in (three tags per collective: MPI guarantees tags up to
/// 32767), so a rank in another collective, or sending another format, is caught at once.
const TAG_SPAN: u64 = 10_000;
/// `MPI_Iallreduce` pieces: bounds the staging buffers of the native algorithm.
const NATIVE_PIECE_ELEMS: usize = 16 << 20;
/// How long a rank that timed out listens for the other ranks' timeout reports before
/// deciding whom to blame. Ranks waiting on one hung peer time out within moments of each
/// other (their waits started one ring step apart).
const REPORT_GRACE: Duration = Duration::from_secs(1);

/// An rsmpi communicator, moved to whichever thread runs a collective. Sound because
/// MPI runs at `MPI_THREAD_MULTIPLE`, or at `MPI_THREAD_SERIALIZED` with every call
/// serialized by `call` (checked in `Mpi::init`).
pub(super) struct SendComm(pub SimpleCommunicator);
// SAFETY: see the type's documentation.
unsafe impl Send for SendComm {}

/// One rank's end of a group of MPI processes; see the module documentation.
pub struct MpiComm {
    /// Not freed after a failure (see `leaked`): `MPI_Comm_free` with a collective still
    /// in flight is erroneous.
    data: ManuallyDrop<SendComm>,
    notices: ManuallyDrop<SendComm>,
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
    /// Where a compressed chunk is decoded, and the payload bytes sent so far.
    scratch: Vec<f32>,
    sent: u64,
    /// What each peer reported waiting on when it timed out (`None`: no report).
    reports: Vec<Option<Waiting>>,
    /// Set by a failure: operations may have been abandoned in flight, so the buffers
    /// and communicators are never freed (the process aborts the job on exit).
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
            std::mem::forget(std::mem::take(&mut self.send_bufs));
            std::mem::forget(std::mem::take(&mut self.recv_bufs));
            std::mem::forget(std::mem::take(&mut self.stage));
        } else {
            // SAFETY: dropped once, here; nothing is in flight on them.
            call(|| unsafe {
                ManuallyDrop::drop(&mut self.data);
                ManuallyDrop::drop(&mut self.notices);
            });
        }
    }
}

impl MpiComm {
    /// A communicator over `data` and `notices`, two fresh communicators of one group.
    pub(super) fn new(
        data: SimpleCommunicator,
        notices: SimpleCommunicator,
        config: MpiConfig,
        env: Arc<Environment>,
    ) -> Self {
        use mpi::topology::Communicator as _;
        let (rank, size) = (data.rank() as usize, data.size() as usize);
        Self {
            data: ManuallyDrop::new(SendComm(data)),
            notices: ManuallyDrop::new(SendComm(notices)),
            rank,
            size,
            chunk_elems: config.chunk_bytes / 4,
            config,
            ops: 0,
            broken: None,
            send_bufs: Default::default(),
            recv_bufs: Default::default(),
            sends: Default::default(),
            recvs: Default::default(),
            native: Request::default(),
            stage: Default::default(),
            scratch: Vec::new(),
            sent: 0,
            reports: vec![None; size],
            leaked: false,
            env,
        }
    }

    pub fn config(&self) -> &MpiConfig {
        &self.config
    }

    /// `MPI_Allreduce` (sum) of `send` into `recv`, blocking, as an application calling
    /// MPI directly would: no staging, no failure notices, no timeout. It is the baseline
    /// the benchmarks put beside this communicator's own collectives. Under
    /// `MPI_THREAD_SERIALIZED` it holds the process's MPI lock until it returns.
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
        let comm = self.data.0.as_raw();
        check(call(|| unsafe {
            ffi::MPI_Allreduce(
                send.as_ptr().cast(),
                recv.as_mut_ptr().cast(),
                send.len() as c_int,
                f32_type(),
                ffi::RSMPI_SUM,
                comm,
            )
        }))
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.size
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }

    /// The tag of this collective's data sent as `wire`.
    fn tag(&self, wire: Precision) -> c_int {
        let format = match wire {
            Precision::F32 => 0,
            Precision::Bf16 => 1,
            Precision::F16 => 2,
        };
        2 + 3 * (self.ops % TAG_SPAN) as c_int + format
    }

    /// Takes in the notices that have arrived: a peer's failure is returned as an error;
    /// timeout reports are kept for [`MpiComm::blame`].
    fn read_notices(&mut self) -> Result<(), CommError> {
        while let Some((sender, n)) = notice::receive(self.notices.0.as_raw())? {
            match n {
                Notice::Failed { culprit, reason } => {
                    return Err(CommError::PeerFailed {
                        rank: culprit,
                        reason,
                    })
                }
                Notice::Waiting { on, .. } => {
                    if let Some(slot) = self.reports.get_mut(sender) {
                        *slot = Some(on.map_or(Waiting::Unknown, Waiting::On));
                    }
                }
            }
        }
        Ok(())
    }

    /// Polls `req` to completion, watching for failure notices and the timeout. `peer`
    /// is the rank the operation waits on, if one.
    fn wait(
        &mut self,
        req: &mut Request,
        peer: Option<usize>,
    ) -> Result<ffi::MPI_Status, CommError> {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = req.test()? {
                return Ok(status);
            }
            self.read_notices()?;
            let waited = start.elapsed();
            if waited > self.config.timeout {
                return Err(self.blame(peer, waited));
            }
            backoff.pause();
        }
    }

    /// After waiting `waited` on `peer` (or on a collective), tells the others and
    /// listens for their reports, then follows the chain of waits to the rank holding
    /// the group up: the same rank on every rank that timed out.
    fn blame(&mut self, peer: Option<usize>, waited: Duration) -> CommError {
        let waiting = Notice::Waiting { on: peer, waited };
        notice::send_all(self.notices.0.as_raw(), self.rank, self.size, &waiting);
        let until = Instant::now() + REPORT_GRACE;
        while Instant::now() < until {
            if let Err(e) = self.read_notices() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let reports = &self.reports;
        let state = |p: usize| reports[p].unwrap_or(Waiting::No);
        let culprit = peer
            .and_then(|p| blame::holdup(self.rank, p, self.size, state))
            // No chain to follow (a collective run by MPI): the rank that did not report.
            .or_else(|| (0..self.size).find(|&p| p != self.rank && reports[p].is_none()));
        match culprit {
            Some(rank) => CommError::Timeout { rank, waited },
            None => CommError::Stalled { waited },
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
        if let Err(e) = self.read_notices() {
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
        for r in self
            .sends
            .iter_mut()
            .chain(&mut self.recvs)
            .chain(std::iter::once(&mut self.native))
        {
            r.abandon();
        }
        self.leaked = true;
        let tell = match e {
            // A peer told us, or (a stall) every rank sees it for itself.
            CommError::PeerFailed { .. } | CommError::Stalled { .. } => None,
            // Ranks that were not waiting learn the culprit the waiting ranks agreed on.
            CommError::Timeout { rank, waited } => Some(Notice::Failed {
                culprit: *rank,
                reason: format!(
                    "it sent nothing for {:.0} s: it is hung, or slower than the timeout allows",
                    waited.as_secs_f64()
                ),
            }),
            other => Some(Notice::Failed {
                culprit: self.rank,
                reason: other.to_string(),
            }),
        };
        if let Some(n) = tell {
            notice::send_all(self.notices.0.as_raw(), self.rank, self.size, &n);
        }
        self.env.failed.store(true, Ordering::Release);
        self.broken = Some(e.clone());
    }

    /// Starts sending `data` (in `wire`'s format) to `peer` from send slot `slot`, once
    /// the slot's previous send has completed.
    fn start_send(
        &mut self,
        slot: usize,
        data: &[f32],
        peer: usize,
        wire: Precision,
    ) -> Result<(), CommError> {
        let mut req = std::mem::take(&mut self.sends[slot]);
        let waited = self.wait(&mut req, Some(peer));
        self.sends[slot] = req;
        waited?;
        let (tag, comm) = (self.tag(wire), self.data.0.as_raw());
        let buf = &mut self.send_bufs[slot];
        wire::encode(wire, data, buf);
        self.sent += 4 * buf.len() as u64;
        self.sends[slot].post(Kind::PointToPoint, |raw| unsafe {
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
        let comm = self.data.0.as_raw();
        let buf = &mut self.recv_bufs[slot];
        buf.resize(self.chunk_elems, 0.0);
        self.recvs[slot].post(Kind::PointToPoint, |raw| unsafe {
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

    /// Completes the receive in `slot` (in `wire`'s format) and combines it into `dst`,
    /// which it must fill.
    fn finish_recv(
        &mut self,
        slot: usize,
        peer: usize,
        dst: &mut [f32],
        combine: Combine,
        wire: Precision,
    ) -> Result<(), CommError> {
        let mut req = std::mem::take(&mut self.recvs[slot]);
        let waited = self.wait(&mut req, Some(peer));
        self.recvs[slot] = req;
        let status = Status::from_raw(waited?);
        let got = status.count(f32::equivalent_datatype()).max(0) as usize;
        let words = wire::words(wire, dst.len());
        if status.tag() != self.tag(wire) || got != words {
            return Err(CommError::Mismatch(format!(
                "peer {peer} sent {got} words of collective tag {}, peer {} expected {words} of \
                 tag {} ({wire})",
                status.tag(),
                self.rank,
                self.tag(wire)
            )));
        }
        let src = &self.recv_bufs[slot][..got];
        let add = combine == Combine::Add;
        wire::decode(wire, src, dst, add, &mut self.scratch);
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
    fn ring_step(
        &mut self,
        data: &mut [f32],
        step: &Step,
        wire: Precision,
    ) -> Result<(), CommError> {
        let (next, prev, ce) = (self.next_rank(), self.prev_rank(), self.chunk_elems);
        let n = chunks_in(step, ce);
        let start = |comm: &mut Self, c: usize, data: &[f32]| -> Result<(), CommError> {
            if chunk(&step.inc, ce, c).is_some() {
                comm.start_recv(c % 2, prev)?;
            }
            if let Some(out) = chunk(&step.out, ce, c) {
                comm.start_send(c % 2, &data[out], next, wire)?;
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
                self.finish_recv(c % 2, prev, &mut data[inc], step.combine, wire)?;
            }
        }
        Ok(())
    }

    fn ring_all_reduce(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        let mut gathering = false;
        for step in all_reduce_steps(data.len(), self.size, self.rank) {
            if step.combine == Combine::Copy && !gathering {
                // As the in-process ring: the owner keeps the rounded sums it sends.
                wire::round(wire, &mut data[step.out.clone()]);
                gathering = true;
            }
            self.ring_step(data, &step, wire)?;
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
                let f32 = Precision::F32;
                self.finish_recv(c % 2, prev, &mut data[range.clone()], Combine::Copy, f32)?;
            }
            if forwards {
                self.start_send(c % 2, &data[range], next, Precision::F32)?;
            }
            c += 1;
        }
        self.drain_sends()
    }

    fn native_all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        for piece in data.chunks_mut(NATIVE_PIECE_ELEMS) {
            let comm = self.data.0.as_raw();
            let (send, recv) = &mut self.stage;
            send.clear();
            send.extend_from_slice(piece);
            recv.resize(piece.len(), 0.0);
            self.native.post(Kind::Collective, |raw| unsafe {
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
            let comm = self.data.0.as_raw();
            let buf = &mut self.stage.0;
            buf.clear();
            buf.extend_from_slice(piece);
            self.native.post(Kind::Collective, |raw| unsafe {
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
        self.all_reduce_as(data, Precision::F32)
    }

    fn all_reduce_as(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        if self.size == 1 {
            return self.broken.clone().map_or(Ok(()), Err);
        }
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.collective(|c| c.ring_all_reduce(data, wire)),
            MpiAlgorithm::Native if wire.is_reduced() => Err(CommError::InvalidArgument(format!(
                "{wire} gradients need --mpi-algorithm ring: MPI_Allreduce sums whole f32 values"
            ))),
            MpiAlgorithm::Native => self.collective(|c| c.native_all_reduce(data)),
        }
    }

    fn bytes_sent(&self) -> Option<u64> {
        (self.config.algorithm == MpiAlgorithm::Ring).then_some(self.sent)
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
            c.native.post(Kind::Collective, |raw| unsafe {
                ffi::MPI_Ibarrier(comm, raw)
            })?;
            c.wait_native()
        })
    }

    fn abort(&mut self, reason: &str) {
        if self.broken.is_some() {
            return;
        }
        self.fail(&CommError::InvalidArgument(reason.to_string()));
        self.broken = Some(CommError::PeerFailed {
            rank: self.rank,
            reason: reason.to_string(),
        });
    }
}
