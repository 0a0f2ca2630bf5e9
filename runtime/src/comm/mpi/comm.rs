//! [`MpiComm`]: one rank's end of a group of MPI processes.

use super::call::{call, check, f32_type, Backoff, Kind, Request};
use super::notice::{self, Notice};
use super::{Environment, MpiAlgorithm, MpiConfig};
use crate::comm::blame::{self, Waiting};
use crate::comm::schedule::{
    all_gather_steps, check_parts, chunk, chunks_in, doubling, even_parts, part_segment,
    reduce_scatter_steps, Algorithm, Algorithms, Combine, Step, Thresholds,
};
use crate::comm::{check_root, wire, CommError, Communicator};
use crate::Precision;
use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::point_to_point::Status;
use mpi::raw::AsRaw;
use mpi::topology::SimpleCommunicator;
use std::mem::ManuallyDrop;
use std::ops::Range;
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
/// How often a rank looks for notices while collectives run.
const NOTICE_EVERY: Duration = Duration::from_micros(100);
/// How long a failed collective waits for a send from (or a receive into) the caller's
/// buffer to complete or be cancelled before it ends the job instead: it must not return
/// while MPI may still touch that memory.
const RELEASE_GRACE: Duration = Duration::from_millis(200);
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
    /// Operations in flight: a ring keeps `pipeline_depth` chunks moving each way per
    /// link, the small-message algorithms one message per peer.
    sends: Vec<Request>,
    recvs: Vec<Request>,
    /// The part of the caller's buffer each send reads, when it sends from there (f32
    /// values) rather than from its own buffer (encoded ones): nothing may write there
    /// until it completes.
    send_reads: Vec<Option<Range<usize>>>,
    /// The part of the caller's buffer each receive writes, when it receives there.
    recv_writes: Vec<Option<Range<usize>>>,
    /// Receives go straight into the caller's buffer where the values are copied as they
    /// come (f32, all-gather and broadcast); the others land here first.
    send_bufs: Vec<Vec<f32>>,
    recv_bufs: Vec<Vec<f32>>,
    native: Request,
    /// The native algorithm's send and receive staging: MPI reads and writes only
    /// buffers this communicator owns, so abandoning an operation never leaves MPI
    /// holding a caller's slice.
    stage: (Vec<f32>, Vec<f32>),
    /// Where a compressed chunk is decoded, and where the direct algorithm sums.
    scratch: Vec<f32>,
    acc: Vec<f32>,
    sent: u64,
    /// What each peer reported waiting on when it timed out (`None`: no report).
    reports: Vec<Option<Waiting>>,
    /// When notices were last looked for.
    notices_read: Instant,
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
            std::mem::forget(std::mem::take(&mut self.sends));
            std::mem::forget(std::mem::take(&mut self.recvs));
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
        let slots = config.pipeline_depth.max(size.saturating_sub(1)).max(1);
        let some = |n: usize| -> Vec<Vec<f32>> { (0..n).map(|_| Vec::new()).collect() };
        Self {
            data: ManuallyDrop::new(SendComm(data)),
            notices: ManuallyDrop::new(SendComm(notices)),
            rank,
            size,
            chunk_elems: config.chunk_bytes / 4,
            config,
            ops: 0,
            broken: None,
            sends: (0..slots).map(|_| Request::default()).collect(),
            recvs: (0..slots).map(|_| Request::default()).collect(),
            send_reads: vec![None; slots],
            recv_writes: vec![None; slots],
            send_bufs: some(slots),
            recv_bufs: some(slots),
            native: Request::default(),
            stage: Default::default(),
            scratch: Vec::new(),
            acc: Vec::new(),
            sent: 0,
            reports: vec![None; size],
            notices_read: Instant::now(),
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

    /// [`MpiComm::read_notices`] unless it ran within the last [`NOTICE_EVERY`]: each
    /// look is an `MPI_Iprobe`, a pass of MPI's progress engine, as dear as the test of
    /// the operation waited on, and a failure can wait that long to be noticed.
    fn look_for_notices(&mut self) -> Result<(), CommError> {
        if self.notices_read.elapsed() < NOTICE_EVERY {
            return Ok(());
        }
        self.notices_read = Instant::now();
        self.read_notices()
    }

    /// Polls `req` to completion, watching for failure notices and the timeout. `peer`
    /// is the rank the operation waits on, if one.
    fn wait(
        &mut self,
        req: &mut Request,
        peer: Option<usize>,
    ) -> Result<ffi::MPI_Status, CommError> {
        // Most waits end at the first test (an idle slot, a message already in): no
        // clock read for them, at a couple of microseconds a collective.
        if let Some(status) = req.test()? {
            return Ok(status);
        }
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = req.test()? {
                return Ok(status);
            }
            self.look_for_notices()?;
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
        if let Err(e) = self.look_for_notices() {
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
        self.release_callers_buffer(e);
        for r in self
            .sends
            .iter_mut()
            .chain(&mut self.recvs)
            .chain(std::iter::once(&mut self.native))
        {
            r.abandon();
        }
        self.leaked = true;
        self.broken = Some(e.clone());
    }

    /// Finishes (cancelled or done) every operation on the caller's buffer before the
    /// failed collective returns it; one that will not finish ends the job, since MPI
    /// could otherwise read or write that memory after the caller has moved on.
    fn release_callers_buffer(&mut self, e: &CommError) {
        let borrowed: Vec<(bool, usize)> = (0..self.sends.len())
            .filter(|&i| self.send_reads[i].is_some())
            .map(|i| (true, i))
            .chain(
                (0..self.recvs.len())
                    .filter(|&i| self.recv_writes[i].is_some())
                    .map(|i| (false, i)),
            )
            .collect();
        let until = Instant::now() + RELEASE_GRACE;
        let mut stuck = false;
        for (is_send, i) in borrowed {
            let req = if is_send {
                &mut self.sends[i]
            } else {
                &mut self.recvs[i]
            };
            req.cancel();
            loop {
                match req.test() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    _ => {
                        stuck = true;
                        break;
                    }
                }
            }
            if is_send {
                self.send_reads[i] = None;
            } else {
                self.recv_writes[i] = None;
            }
        }
        if stuck {
            // Said here, as the examples say an error, since the caller will never
            // hear of it; then the peers get a moment to say theirs.
            eprintln!("rank {}: error: {e}", self.rank);
            eprintln!(
                "rank {}: an MPI send from the caller's buffer could not be withdrawn, so \
                 the job ends here (MPI_Abort)",
                self.rank
            );
            std::thread::sleep(super::ABORT_GRACE);
            call(|| unsafe { ffi::MPI_Abort(self.data.0.as_raw(), 1) });
            unreachable!("MPI_Abort returned");
        }
    }

    /// Waits for `req` (which waits on `peer`), putting it back where it was.
    fn wait_slot(
        &mut self,
        sends: bool,
        slot: usize,
        peer: usize,
    ) -> Result<ffi::MPI_Status, CommError> {
        let mut req = std::mem::take(if sends {
            &mut self.sends[slot]
        } else {
            &mut self.recvs[slot]
        });
        let waited = self.wait(&mut req, Some(peer));
        if sends {
            self.sends[slot] = req;
        } else {
            self.recvs[slot] = req;
        }
        let status = waited?;
        if sends {
            self.send_reads[slot] = None;
        } else {
            self.recv_writes[slot] = None;
        }
        Ok(status)
    }

    /// Waits for the sends still reading any of `range` of the caller's buffer, before
    /// it is written.
    fn wait_readers(&mut self, range: &Range<usize>) -> Result<(), CommError> {
        for slot in 0..self.sends.len() {
            let overlaps = self.send_reads[slot]
                .as_ref()
                .is_some_and(|r| r.start < range.end && range.start < r.end);
            if overlaps {
                // The peer is unknown here; the send's own wait names the right one
                // through the timeout chain.
                let next = self.next_rank();
                self.wait_slot(true, slot, next)?;
            }
        }
        Ok(())
    }

    /// Starts sending `data[range]` (in `wire`'s format) to `peer` from send slot `slot`,
    /// once the slot's previous send has completed: f32 values straight from `data`,
    /// others encoded into the slot's buffer.
    fn start_send(
        &mut self,
        slot: usize,
        data: &[f32],
        range: Range<usize>,
        peer: usize,
        wire: Precision,
    ) -> Result<(), CommError> {
        self.wait_slot(true, slot, peer)?;
        let (tag, comm) = (self.tag(wire), self.data.0.as_raw());
        let (ptr, len) = if wire.is_reduced() {
            let buf = &mut self.send_bufs[slot];
            wire::encode(wire, &data[range], buf);
            (buf.as_ptr(), buf.len())
        } else {
            let values = &data[range.clone()];
            self.send_reads[slot] = Some(range);
            (values.as_ptr(), values.len())
        };
        self.sent += 4 * len as u64;
        self.sends[slot].post(Kind::PointToPoint, |raw| unsafe {
            ffi::MPI_Isend(
                ptr.cast(),
                len as c_int,
                f32_type(),
                peer as c_int,
                tag,
                comm,
                raw,
            )
        })
    }

    /// Starts receiving `words` words from `peer` in receive slot `slot`: into
    /// `data[range]` itself when `into` holds them (f32 values to be copied), otherwise
    /// into the slot's buffer, sized to take a longer message than expected, so that a
    /// peer in another collective is reported as such.
    fn start_recv(
        &mut self,
        slot: usize,
        peer: usize,
        words: usize,
        into: Option<(&mut [f32], Range<usize>)>,
    ) -> Result<(), CommError> {
        let comm = self.data.0.as_raw();
        let (ptr, len) = match into {
            Some((data, range)) => {
                self.wait_readers(&range)?;
                let dst = &mut data[range.clone()];
                self.recv_writes[slot] = Some(range);
                (dst.as_mut_ptr(), dst.len())
            }
            None => {
                // Room for twice the words expected, and one more: a peer sending f32
                // values where this rank expects 16-bit ones, or a longer chunk of another
                // collective, is reported as a mismatch, not as a truncated message.
                let buf = &mut self.recv_bufs[slot];
                buf.resize(2 * words + 1, 0.0);
                (buf.as_mut_ptr(), buf.len())
            }
        };
        self.recvs[slot].post(Kind::PointToPoint, |raw| unsafe {
            ffi::MPI_Irecv(
                ptr.cast(),
                len as c_int,
                f32_type(),
                peer as c_int,
                ffi::RSMPI_ANY_TAG,
                comm,
                raw,
            )
        })
    }

    /// Completes the receive in `slot` of `words` words (`wire`'s format) and, when it
    /// landed in the slot's buffer, combines it into `dst`, whose place in the caller's
    /// buffer is `guard`, if it is there.
    #[allow(clippy::too_many_arguments)]
    fn finish_recv(
        &mut self,
        slot: usize,
        peer: usize,
        words: usize,
        dst: Option<(&mut [f32], Option<Range<usize>>)>,
        combine: Combine,
        wire: Precision,
    ) -> Result<(), CommError> {
        let status = Status::from_raw(self.wait_slot(false, slot, peer)?);
        let got = status.count(f32::equivalent_datatype()).max(0) as usize;
        if status.tag() != self.tag(wire) || got != words {
            return Err(CommError::Mismatch(format!(
                "peer {peer} sent {got} words of collective tag {}, peer {} expected {words} of \
                 tag {} ({wire})",
                status.tag(),
                self.rank,
                self.tag(wire)
            )));
        }
        if let Some((dst, guard)) = dst {
            if let Some(range) = guard {
                self.wait_readers(&range)?;
            }
            let src = &self.recv_bufs[slot][..got];
            let add = combine == Combine::Add;
            wire::decode(wire, src, dst, add, &mut self.scratch);
        }
        Ok(())
    }

    /// Waits for every send, so that nothing reads the caller's buffer once a collective
    /// returns.
    fn drain_sends(&mut self) -> Result<(), CommError> {
        let next = self.next_rank();
        for slot in 0..self.sends.len() {
            if self.sends[slot].is_active() {
                self.wait_slot(true, slot, next)?;
            }
            self.send_reads[slot] = None;
        }
        Ok(())
    }

    /// The pieces a small algorithm's message of `len` values travels in: each below
    /// [`MpiConfig::eager_bytes`], so that MPI sends it eagerly (a larger message waits
    /// for the receiver's handshake and a copy across processes, several microseconds
    /// where the whole all-reduce takes two).
    fn pieces(&self, len: usize) -> Pieces {
        Pieces {
            len,
            per: (self.config.eager_bytes / 4).max(1),
        }
    }

    /// Makes sure there are at least `n` slots of operations.
    fn ensure_slots(&mut self, n: usize) {
        while self.sends.len() < n {
            self.sends.push(Request::default());
            self.recvs.push(Request::default());
            self.send_reads.push(None);
            self.recv_writes.push(None);
            self.send_bufs.push(Vec::new());
            self.recv_bufs.push(Vec::new());
        }
    }

    /// Posts the receives of a whole message from `peer`, piece `i` in slot `base + i`.
    fn post_recvs(
        &mut self,
        base: usize,
        peer: usize,
        pieces: Pieces,
        wire: Precision,
    ) -> Result<(), CommError> {
        for (i, piece) in pieces.iter().enumerate() {
            self.start_recv(base + i, peer, wire::words(wire, piece.len()), None)?;
        }
        Ok(())
    }

    /// Posts the sends of all of `data` to `peer`, piece `i` from slot `base + i`.
    fn post_sends(
        &mut self,
        base: usize,
        data: &[f32],
        peer: usize,
        pieces: Pieces,
        wire: Precision,
    ) -> Result<(), CommError> {
        for (i, piece) in pieces.iter().enumerate() {
            self.start_send(base + i, data, piece, peer, wire)?;
        }
        Ok(())
    }

    /// Completes the receives [`MpiComm::post_recvs`] posted and combines them into
    /// `dst`, which is the caller's buffer when `callers` says so.
    #[allow(clippy::too_many_arguments)]
    fn finish_recvs(
        &mut self,
        base: usize,
        peer: usize,
        pieces: Pieces,
        dst: &mut [f32],
        callers: bool,
        combine: Combine,
        wire: Precision,
    ) -> Result<(), CommError> {
        for (i, piece) in pieces.iter().enumerate() {
            let words = wire::words(wire, piece.len());
            let guard = callers.then(|| piece.clone());
            let into = Some((&mut dst[piece], guard));
            self.finish_recv(base + i, peer, words, into, combine, wire)?;
        }
        Ok(())
    }

    /// Small: straight to the root. Large: a ring reduce-scatter, then every rank sends
    /// its finished part to the root.
    fn reduce_with(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let (n, total) = (self.size, data.len());
        if Algorithm::pick(4 * total, n, self.config.thresholds).is_latency_bound() {
            return self.direct(data, Precision::F32, Some(root));
        }
        let parts = even_parts(total, n);
        let seg = |j| part_segment(&parts, j);
        self.run_steps(
            data,
            &reduce_scatter_steps(n, self.rank, seg),
            Precision::F32,
        )?;
        let (ce, f32) = (self.chunk_elems, Precision::F32);
        if self.rank == root {
            for q in (0..n).filter(|&q| q != root) {
                let part = parts[q]..parts[q + 1];
                let mut c = 0;
                while let Some(piece) = chunk(&part, ce, c) {
                    let len = piece.len();
                    self.start_recv(0, q, len, Some((&mut *data, piece)))?;
                    self.finish_recv(0, q, len, None, Combine::Copy, f32)?;
                    c += 1;
                }
            }
        } else {
            let part = parts[self.rank]..parts[self.rank + 1];
            let depth = self.config.pipeline_depth;
            let mut c = 0;
            while let Some(piece) = chunk(&part, ce, c) {
                self.start_send(c % depth, data, piece, root, f32)?;
                c += 1;
            }
        }
        self.drain_sends()
    }

    /// Small: the root sends to every rank. Large: chunks pass from `root` round the
    /// ring; each rank forwards a chunk as soon as it has it, so the chunks travel
    /// pipelined.
    fn broadcast_with(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let (n, me, total, f32) = (self.size, self.rank, data.len(), Precision::F32);
        if Algorithm::pick(4 * total, n, self.config.thresholds).is_latency_bound() {
            return self.fan_out(data, root, f32);
        }
        let (next, prev, ce) = (self.next_rank(), self.prev_rank(), self.chunk_elems);
        let depth = self.config.pipeline_depth;
        let all = 0..total;
        let forwards = next != root;
        let mut c = 0;
        while let Some(range) = chunk(&all, ce, c) {
            if me != root {
                let len = range.len();
                self.start_recv(c % depth, prev, len, Some((&mut *data, range.clone())))?;
                self.finish_recv(c % depth, prev, len, None, Combine::Copy, f32)?;
            }
            if forwards {
                self.start_send(c % depth, data, range, next, f32)?;
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

/// A message of `len` values cut into pieces of at most `per` values; an empty message
/// is one empty piece, so that peers still exchange it.
#[derive(Clone, Copy)]
struct Pieces {
    len: usize,
    per: usize,
}

impl Pieces {
    fn count(self) -> usize {
        self.len.div_ceil(self.per).max(1)
    }

    fn iter(self) -> impl Iterator<Item = Range<usize>> {
        let all = 0..self.len;
        (0..self.count()).map(move |c| chunk(&all, self.per, c).unwrap_or(0..0))
    }
}

impl Algorithms for MpiComm {
    fn size_rank(&self) -> (usize, usize) {
        (self.size, self.rank)
    }

    fn thresholds(&self) -> Thresholds {
        self.config.thresholds
    }

    /// One step, pipelined `pipeline_depth` chunks deep: chunks are posted both ways
    /// that far ahead of the one being combined.
    fn run_step(
        &mut self,
        data: &mut [f32],
        step: &Step,
        wire: Precision,
    ) -> Result<(), CommError> {
        let (next, prev, ce) = (step.to, step.from, self.chunk_elems);
        let depth = self.config.pipeline_depth;
        let n = chunks_in(step, ce);
        let direct = step.combine == Combine::Copy && !wire.is_reduced();
        let start = |comm: &mut Self, c: usize, data: &mut [f32]| -> Result<(), CommError> {
            if let Some(inc) = chunk(&step.inc, ce, c) {
                let words = wire::words(wire, inc.len());
                let into = direct.then_some((&mut *data, inc));
                comm.start_recv(c % depth, prev, words, into)?;
            }
            if let Some(out) = chunk(&step.out, ce, c) {
                comm.start_send(c % depth, data, out, next, wire)?;
            }
            Ok(())
        };
        for c in 0..n.min(depth - 1) {
            start(self, c, data)?;
        }
        for c in 0..n {
            if c + depth - 1 < n {
                start(self, c + depth - 1, data)?;
            }
            if let Some(inc) = chunk(&step.inc, ce, c) {
                let words = wire::words(wire, inc.len());
                let dst = (!direct).then(|| (&mut data[inc.clone()], Some(inc)));
                // `dst` borrows `data` while `finish_recv` may wait on sends from it:
                // sends only read, and MPI reads through its own pointer.
                self.finish_recv(c % depth, prev, words, dst, step.combine, wire)?;
            }
        }
        Ok(())
    }

    /// As in process, after any send still reading the range has finished.
    fn round_own(
        &mut self,
        data: &mut [f32],
        range: Range<usize>,
        wire: Precision,
    ) -> Result<(), CommError> {
        self.wait_readers(&range)?;
        wire::round(wire, &mut data[range]);
        Ok(())
    }

    fn finish_steps(&mut self) -> Result<(), CommError> {
        self.drain_sends()
    }

    /// The direct algorithm, as in process: every rank's buffer to every other rank (or
    /// to `root` only), summed in rank order where it arrives.
    fn direct(
        &mut self,
        data: &mut [f32],
        wire: Precision,
        root: Option<usize>,
    ) -> Result<(), CommError> {
        let (n, me, total) = (self.size, self.rank, data.len());
        let pieces = self.pieces(total);
        let np = pieces.count();
        self.ensure_slots((n - 1) * np);
        wire::round(wire, data);
        let sums = root.is_none_or(|r| r == me);
        // Slots of peer q's messages: its index among the others, times the pieces.
        let base = |q: usize| np * if q < me { q } else { q - 1 };
        if sums {
            for q in (0..n).filter(|&q| q != me) {
                self.post_recvs(base(q), q, pieces, wire)?;
            }
        }
        for q in (0..n).filter(|&q| q != me && root.is_none_or(|r| r == q)) {
            self.post_sends(base(q), data, q, pieces, wire)?;
        }
        if !sums {
            return self.drain_sends();
        }
        let mut acc = std::mem::take(&mut self.acc);
        acc.clear();
        acc.resize(total, 0.0);
        let summed = (|| {
            for q in 0..n {
                let combine = if q == 0 { Combine::Copy } else { Combine::Add };
                if q != me {
                    self.finish_recvs(base(q), q, pieces, &mut acc, false, combine, wire)?;
                } else if combine == Combine::Copy {
                    acc.copy_from_slice(data);
                } else {
                    acc.iter_mut().zip(data.iter()).for_each(|(a, x)| *a += *x);
                }
            }
            self.drain_sends()
        })();
        if summed.is_ok() {
            data.copy_from_slice(&acc);
            wire::round(wire, data);
        }
        self.acc = acc;
        summed
    }

    /// Recursive doubling, as in process.
    fn doubling(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        let plan = doubling(self.size, self.rank);
        let pieces = self.pieces(data.len());
        self.ensure_slots(pieces.count());
        wire::round(wire, data);
        // Swaps buffers with `peer` and adds its values.
        let exchange = |c: &mut Self, peer: usize, data: &mut [f32]| -> Result<(), CommError> {
            c.post_recvs(0, peer, pieces, wire)?;
            c.post_sends(0, data, peer, pieces, wire)?;
            c.finish_recvs(0, peer, pieces, data, true, Combine::Add, wire)?;
            wire::round(wire, data);
            Ok(())
        };
        match plan.fold {
            Some((q, true)) => {
                self.post_sends(0, data, q, pieces, wire)?;
                self.post_recvs(0, q, pieces, wire)?;
                self.finish_recvs(0, q, pieces, data, true, Combine::Copy, wire)?;
                return self.drain_sends();
            }
            Some((q, false)) => {
                self.post_recvs(0, q, pieces, wire)?;
                self.finish_recvs(0, q, pieces, data, true, Combine::Add, wire)?;
                wire::round(wire, data);
            }
            None => {}
        }
        for peer in plan.partners() {
            exchange(self, peer, data)?;
        }
        if let Some((q, false)) = plan.fold {
            self.post_sends(0, data, q, pieces, wire)?;
        }
        self.drain_sends()
    }

    /// The root sends its `data` (in `wire`'s format, which its values must be) to every
    /// other rank.
    fn fan_out(&mut self, data: &mut [f32], root: usize, wire: Precision) -> Result<(), CommError> {
        let n = self.size;
        let pieces = self.pieces(data.len());
        let np = pieces.count();
        self.ensure_slots((n - 1) * np);
        if self.rank == root {
            for (i, q) in (0..n).filter(|&q| q != root).enumerate() {
                self.post_sends(i * np, data, q, pieces, wire)?;
            }
        } else {
            self.post_recvs(0, root, pieces, wire)?;
            self.finish_recvs(0, root, pieces, data, true, Combine::Copy, wire)?;
        }
        self.drain_sends()
    }
}

impl MpiComm {
    /// Runs `f` as one collective on a group of two or more; a group of one has nothing
    /// to exchange.
    fn group_collective(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        if self.size == 1 {
            return self.broken.clone().map_or(Ok(()), Err);
        }
        self.collective(f)
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
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.group_collective(|c| c.all_reduce_by_size(data, wire)),
            MpiAlgorithm::Native if wire.is_reduced() => Err(CommError::InvalidArgument(format!(
                "{wire} gradients need --mpi-algorithm ring: MPI_Allreduce sums whole f32 values"
            ))),
            MpiAlgorithm::Native => self.group_collective(|c| c.native_all_reduce(data)),
        }
    }

    /// In native mode, an all-reduce (`MPI_Iallreduce`).
    fn reduce(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        check_root(root, self.size, "reduce")?;
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.group_collective(|c| c.reduce_with(data, root)),
            MpiAlgorithm::Native => self.group_collective(|c| c.native_all_reduce(data)),
        }
    }

    /// In native mode, an all-reduce (`MPI_Iallreduce`).
    fn reduce_scatter(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        check_parts(data.len(), self.size, parts)?;
        let (n, r) = (self.size, self.rank);
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.group_collective(|c| {
                let steps = reduce_scatter_steps(n, r, |j| part_segment(parts, j));
                c.run_steps(data, &steps, Precision::F32)
            }),
            MpiAlgorithm::Native => self.group_collective(|c| c.native_all_reduce(data)),
        }
    }

    /// In native mode, an all-reduce (`MPI_Iallreduce`) with the other parts zeroed.
    fn all_gather(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        check_parts(data.len(), self.size, parts)?;
        let (n, r) = (self.size, self.rank);
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.group_collective(|c| {
                let steps = all_gather_steps(n, r, |j| part_segment(parts, j));
                c.run_steps(data, &steps, Precision::F32)
            }),
            MpiAlgorithm::Native => {
                data[..parts[r]].fill(0.0);
                data[parts[r + 1]..].fill(0.0);
                self.group_collective(|c| c.native_all_reduce(data))
            }
        }
    }

    fn bytes_sent(&self) -> Option<u64> {
        (self.config.algorithm == MpiAlgorithm::Ring).then_some(self.sent)
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        check_root(root, self.size, "broadcast")?;
        match self.config.algorithm {
            MpiAlgorithm::Ring => self.group_collective(|c| c.broadcast_with(data, root)),
            MpiAlgorithm::Native => self.group_collective(|c| c.native_broadcast(data, root)),
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
