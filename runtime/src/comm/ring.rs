//! The in-process group: peers are threads of one process, each pair joined by bounded
//! channels, and its all-reduce a ring for large messages (peer `r` sends to `r + 1` and
//! receives from `r - 1`, mod `size`) and a latency-bound algorithm for small ones (see
//! [`schedule`](super::schedule) for the three and which sums each makes).
//!
//! The ring's all-reduce is reduce-scatter then all-gather, `2 (size - 1)` steps: the
//! buffer is cut into `size` segments, and at each step every peer sends one segment to
//! its successor while receiving another from its predecessor, so each link carries
//! `1 / size` of the data per step and all links are busy at once. Segments are cut
//! further into chunks that are sent one by one, so a peer adds (or copies) one chunk
//! while the next is in flight. Emptied chunk buffers travel back to their sender to be
//! filled again: after the first collective, a collective allocates nothing.
//!
//! Every sum is made in a fixed order and either made by one peer and copied to the
//! others or made alike by each, so every peer ends with the same bits.

use super::blame;
use super::schedule::{
    all_gather_steps, check_parts, chunk, chunks_in, doubling, even_parts, part_segment,
    reduce_scatter_steps, Algorithm, Algorithms, Combine, Step, Thresholds,
};
use super::{check_root, wire, CommError, Communicator};
use crate::Precision;
use crossbeam_channel::{
    bounded, unbounded, Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError,
};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a peer waiting on a channel looks whether the group has failed.
const POLL: Duration = Duration::from_millis(20);
/// How long a waiting peer yields its core before it parks.
const YIELD_FOR: Duration = Duration::from_micros(50);

/// Tuning and failure detection of a ring.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Bytes per message: segments are sent in chunks of this size, pipelined.
    pub chunk_bytes: usize,
    /// Chunks that may be in flight on one link before the sender waits.
    pub queue_depth: usize,
    /// How long a peer waits for its neighbour before declaring it hung. A peer that
    /// fails or drops its communicator is noticed at once; this bounds the wait for one
    /// that is alive but stuck.
    pub timeout: Duration,
    /// Message sizes below which all-reduce (and reduce, broadcast) take the
    /// latency-bound algorithms instead of the ring.
    pub thresholds: Thresholds,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 1 << 20,
            queue_depth: 4,
            timeout: Duration::from_secs(120),
            thresholds: Thresholds::default(),
        }
    }
}

/// What the peers of one ring share: the first failure, so that every peer reports the
/// same culprit, and who is waiting on whom, so that a timeout blames the peer that
/// stopped rather than the neighbours starved behind it.
struct Group {
    failed: AtomicBool,
    failure: Mutex<Option<(usize, String)>>,
    /// `waiting_on[r]` is 1 + the peer `r` is blocked on, or 0.
    waiting_on: Vec<AtomicUsize>,
}

impl Group {
    fn new(size: usize) -> Self {
        Self {
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            waiting_on: (0..size).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn set_waiting(&self, rank: usize, on: Option<usize>) {
        self.waiting_on[rank].store(on.map_or(0, |p| p + 1), Ordering::Release);
    }

    /// The peer holding `me` up, given that `me` timed out waiting on `peer`; if every
    /// peer is waiting (peers in different collectives), `peer` is as good an answer as
    /// any.
    fn holdup(&self, me: usize, peer: usize) -> usize {
        let n = self.waiting_on.len();
        blame::holdup(me, peer, n, |p| {
            match self.waiting_on[p].load(Ordering::Acquire) {
                0 => blame::Waiting::No,
                next => blame::Waiting::On(next - 1),
            }
        })
        .unwrap_or(peer)
    }

    fn fail(&self, rank: usize, reason: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some((rank, reason));
            self.failed.store(true, Ordering::Release);
        }
    }

    fn failure(&self) -> Option<CommError> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        let f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        f.as_ref().map(|(rank, reason)| CommError::PeerFailed {
            rank: *rank,
            reason: reason.clone(),
        })
    }
}

struct Chunk {
    /// Which collective of the sender this belongs to, that collective's length, and the
    /// format its values travel in: peers that disagree on any have called different
    /// collectives.
    op: u64,
    total: usize,
    wire: Precision,
    data: Payload,
}

/// A chunk's words: a buffer of the sender's, which goes back to it once read, or one
/// the root of a fan-out shares among all the peers it sends to (one copy, not one per
/// peer).
enum Payload {
    Owned(Vec<f32>),
    Shared(Arc<Vec<f32>>),
}

impl Payload {
    fn words(&self) -> &[f32] {
        match self {
            Payload::Owned(v) => v,
            Payload::Shared(v) => v,
        }
    }
}

/// A peer's channels to and from every other peer (`None` at its own index): the ring
/// uses its neighbours', the small-message algorithms and roots any pair's.
struct Links {
    to: Vec<Option<Sender<Chunk>>>,
    from: Vec<Option<Receiver<Chunk>>>,
    /// Buffers peer `q` has emptied of this peer's chunks, to fill again.
    spare_from: Vec<Option<Receiver<Vec<f32>>>>,
    /// Where buffers of peer `q`'s that this peer has emptied go back.
    spare_to: Vec<Option<Sender<Vec<f32>>>>,
}

/// One peer of an in-process group; see [`ring`].
pub struct RingComm {
    rank: usize,
    size: usize,
    config: RingConfig,
    chunk_elems: usize,
    group: Arc<Group>,
    links: Links,
    ops: u64,
    /// Set by the first error: the group cannot be trusted after one.
    broken: Option<CommError>,
    /// Payload bytes sent, and where a compressed chunk is decoded.
    sent: Cell<u64>,
    scratch: RefCell<Vec<f32>>,
    /// Where the small-message algorithms sum, and what their fan-outs send.
    acc: Vec<f32>,
    shared: Arc<Vec<f32>>,
}

/// `size` connected peers with the default [`RingConfig`]; give one to each thread.
pub fn ring(size: usize) -> Result<Vec<RingComm>, CommError> {
    ring_with(size, RingConfig::default())
}

pub fn ring_with(size: usize, config: RingConfig) -> Result<Vec<RingComm>, CommError> {
    if size == 0 {
        return Err(CommError::InvalidArgument(
            "a ring needs at least one peer".into(),
        ));
    }
    if config.chunk_bytes < 4 || config.queue_depth == 0 {
        return Err(CommError::InvalidArgument(format!(
            "ring chunks must hold at least one f32 and the queue at least one chunk \
             (chunk_bytes {}, queue_depth {})",
            config.chunk_bytes, config.queue_depth
        )));
    }
    let group = Arc::new(Group::new(size));
    let empty = |_| Links {
        to: (0..size).map(|_| None).collect(),
        from: (0..size).map(|_| None).collect(),
        spare_from: (0..size).map(|_| None).collect(),
        spare_to: (0..size).map(|_| None).collect(),
    };
    let mut links: Vec<Links> = (0..size).map(empty).collect();
    for p in 0..size {
        for q in (0..size).filter(|&q| q != p) {
            // Data from p to q, and p's emptied buffers back from q.
            let (tx, rx) = bounded(config.queue_depth);
            let (spare_tx, spare_rx) = unbounded();
            links[p].to[q] = Some(tx);
            links[q].from[p] = Some(rx);
            links[q].spare_to[p] = Some(spare_tx);
            links[p].spare_from[q] = Some(spare_rx);
        }
    }
    let chunk_elems = config.chunk_bytes / 4;
    Ok(links
        .into_iter()
        .enumerate()
        .map(|(rank, links)| RingComm {
            rank,
            size,
            config: config.clone(),
            chunk_elems,
            group: group.clone(),
            links,
            ops: 0,
            broken: None,
            sent: Cell::new(0),
            scratch: RefCell::new(Vec::new()),
            acc: Vec::new(),
            shared: Arc::new(Vec::new()),
        })
        .collect())
}

/// Marks its peer as waiting on another until dropped.
struct Waiting<'a> {
    group: &'a Group,
    rank: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.group.set_waiting(self.rank, None);
    }
}

impl RingComm {
    fn waiting_on(&self, peer: usize) -> Waiting<'_> {
        self.group.set_waiting(self.rank, Some(peer));
        Waiting {
            group: &self.group,
            rank: self.rank,
        }
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.size
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }

    /// Runs one collective: refuses if an earlier one failed, and after a failure
    /// records it, blaming the peer at fault, so the whole group stops with one story.
    fn collective(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if self.size == 1 {
            return Ok(());
        }
        self.ops += 1;
        let result = f(self);
        if let Err(e) = &result {
            match e {
                CommError::PeerLeft { rank } => self.group.fail(
                    *rank,
                    "it left the group in the middle of a collective".into(),
                ),
                // Recorded by `timed_out`, while this peer still counted as waiting.
                CommError::Timeout { .. } => {}
                CommError::Mismatch(m) => self.group.fail(self.rank, m.clone()),
                CommError::PeerFailed { .. }
                | CommError::InvalidArgument(_)
                | CommError::Stalled { .. } => {}
            }
            let e = self.group.failure().unwrap_or_else(|| e.clone());
            self.broken = Some(e.clone());
            return Err(e);
        }
        result
    }

    /// After waiting `waited` on `peer`: records the peer holding the group up as the
    /// group's failure. Called while this peer still counts as waiting, so that a peer
    /// timing out at the same moment follows the chain through this one instead of
    /// taking it for the culprit.
    fn timed_out(&self, peer: usize, waited: Duration) -> CommError {
        let culprit = self.group.holdup(self.rank, peer);
        self.group.fail(
            culprit,
            format!(
                "it sent nothing for {:.0} s, holding up the group",
                waited.as_secs_f64()
            ),
        );
        CommError::Timeout { rank: peer, waited }
    }

    /// Sends `values` (in `wire`'s format) to peer `to`.
    fn send(
        &self,
        to: usize,
        total: usize,
        values: &[f32],
        wire: Precision,
    ) -> Result<(), CommError> {
        let Some(spare) = &self.links.spare_from[to] else {
            unreachable!("peer {} has no link to itself", self.rank);
        };
        let mut data = match spare.try_recv() {
            Ok(buf) => buf,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                Vec::with_capacity(self.chunk_elems.min(values.len()))
            }
        };
        wire::encode(wire, values, &mut data);
        self.push(to, total, wire, Payload::Owned(data))
    }

    /// `data` in `wire`'s format, in the buffer this peer's fan-outs share with their
    /// receivers: reused once every receiver has read it (they drop their handles as
    /// they do), a fresh one while one still holds it.
    fn encode_shared(&mut self, data: &[f32], wire: Precision) -> Arc<Vec<f32>> {
        if Arc::get_mut(&mut self.shared).is_none() {
            self.shared = Arc::new(Vec::new());
        }
        let words = Arc::get_mut(&mut self.shared).expect("a buffer no receiver holds");
        wire::encode(wire, data, words);
        self.shared.clone()
    }

    /// Sends `words` (already in `wire`'s format) to peer `to`, shared with whoever
    /// else gets them.
    fn send_shared(
        &self,
        to: usize,
        total: usize,
        words: &Arc<Vec<f32>>,
        wire: Precision,
    ) -> Result<(), CommError> {
        self.push(to, total, wire, Payload::Shared(words.clone()))
    }

    fn push(
        &self,
        to: usize,
        total: usize,
        wire: Precision,
        data: Payload,
    ) -> Result<(), CommError> {
        let Some(tx) = &self.links.to[to] else {
            unreachable!("peer {} has no link to itself", self.rank);
        };
        self.sent
            .set(self.sent.get() + 4 * data.words().len() as u64);
        let mut chunk = Chunk {
            op: self.ops,
            total,
            wire,
            data,
        };
        let start = Instant::now();
        let _waiting = self.waiting_on(to);
        loop {
            if let Some(e) = self.group.failure() {
                return Err(e);
            }
            match tx.send_timeout(chunk, POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(c)) => {
                    chunk = c;
                    if start.elapsed() > self.config.timeout {
                        return Err(self.timed_out(to, start.elapsed()));
                    }
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    return Err(CommError::PeerLeft { rank: to })
                }
            }
        }
    }

    /// Receives peer `from`'s next chunk (in `wire`'s format) into `dst`, which it must
    /// exactly fill.
    fn recv(
        &self,
        from: usize,
        total: usize,
        dst: &mut [f32],
        combine: Combine,
        wire: Precision,
    ) -> Result<(), CommError> {
        let (Some(rx), Some(spare)) = (&self.links.from[from], &self.links.spare_to[from]) else {
            unreachable!("peer {} has no link to itself", self.rank);
        };
        let start = Instant::now();
        let waiting = self.waiting_on(from);
        // Yield before parking: a message is usually a few microseconds away, and waking
        // a parked thread costs more than that where peers outnumber cores.
        let mut early = None;
        while start.elapsed() < YIELD_FOR {
            match rx.try_recv() {
                Ok(c) => {
                    early = Some(c);
                    break;
                }
                Err(TryRecvError::Empty) => std::thread::yield_now(),
                Err(TryRecvError::Disconnected) => break,
            }
        }
        let chunk = loop {
            if let Some(c) = early.take() {
                break c;
            }
            // What the peer sent before the group failed is still this collective's: a
            // collective whose messages have all arrived completes, and the failure
            // stops the next one (a peer can fail while this one waited for its turn
            // on a core, past the yielding above).
            if let Ok(c) = rx.try_recv() {
                break c;
            }
            if let Some(e) = self.group.failure() {
                return Err(e);
            }
            match rx.recv_timeout(POLL) {
                Ok(c) => break c,
                Err(RecvTimeoutError::Timeout) => {
                    if start.elapsed() > self.config.timeout {
                        return Err(self.timed_out(from, start.elapsed()));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(CommError::PeerLeft { rank: from })
                }
            }
        };
        drop(waiting);
        let words = wire::words(wire, dst.len());
        if chunk.op != self.ops
            || chunk.total != total
            || chunk.wire != wire
            || chunk.data.words().len() != words
        {
            return Err(CommError::Mismatch(format!(
                "peer {from} is in collective {} over {} {} elements, peer {} in collective {} \
                 over {} {}",
                chunk.op, chunk.total, chunk.wire, self.rank, self.ops, total, wire
            )));
        }
        let add = combine == Combine::Add;
        let words = chunk.data.words();
        wire::decode(wire, words, dst, add, &mut self.scratch.borrow_mut());
        if let Payload::Owned(buf) = chunk.data {
            // The sender may be gone by now (it finished first); the buffer just drops.
            let _ = spare.send(buf);
        }
        Ok(())
    }

    fn reduce_scatter_with(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        let (n, r) = (self.size, self.rank);
        let steps = reduce_scatter_steps(n, r, |j| part_segment(parts, j));
        self.run_steps(data, &steps, Precision::F32)
    }

    fn all_gather_with(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        let (n, r) = (self.size, self.rank);
        let steps = all_gather_steps(n, r, |j| part_segment(parts, j));
        self.run_steps(data, &steps, Precision::F32)
    }

    /// Small: straight to the root. Large: a ring reduce-scatter, then every peer sends
    /// its finished part to the root.
    fn reduce_with(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let (n, total) = (self.size, data.len());
        if Algorithm::pick(4 * total, n, self.config.thresholds).is_latency_bound() {
            return self.direct(data, Precision::F32, Some(root));
        }
        let parts = even_parts(total, n);
        self.reduce_scatter_with(data, &parts)?;
        let ce = self.chunk_elems;
        if self.rank == root {
            for q in (0..n).filter(|&q| q != root) {
                let part = parts[q]..parts[q + 1];
                let mut c = 0;
                while let Some(piece) = chunk(&part, ce, c) {
                    self.recv(q, total, &mut data[piece], Combine::Copy, Precision::F32)?;
                    c += 1;
                }
            }
        } else {
            let part = parts[self.rank]..parts[self.rank + 1];
            let mut c = 0;
            while let Some(piece) = chunk(&part, ce, c) {
                self.send(root, total, &data[piece], Precision::F32)?;
                c += 1;
            }
        }
        Ok(())
    }

    /// Small: the root sends to every peer. Large: chunks pass round the ring from the
    /// root, pipelined.
    fn broadcast_with(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let total = data.len();
        let f32 = Precision::F32;
        if Algorithm::pick(4 * total, self.size, self.config.thresholds).is_latency_bound() {
            return self.fan_out(data, root, f32);
        }
        let forwards = self.next_rank() != root;
        for lo in (0..total).step_by(self.chunk_elems) {
            let hi = (lo + self.chunk_elems).min(total);
            if self.rank != root {
                self.recv(
                    self.prev_rank(),
                    total,
                    &mut data[lo..hi],
                    Combine::Copy,
                    f32,
                )?;
            }
            if forwards {
                self.send(self.next_rank(), total, &data[lo..hi], f32)?;
            }
        }
        Ok(())
    }
}

impl Algorithms for RingComm {
    fn size_rank(&self) -> (usize, usize) {
        (self.size, self.rank)
    }

    fn thresholds(&self) -> Thresholds {
        self.config.thresholds
    }

    /// One step, chunk by chunk: send chunk `c` of the outgoing segment, then
    /// receive chunk `c` of the incoming one (the link's queue lets sends run ahead).
    fn run_step(
        &mut self,
        data: &mut [f32],
        step: &Step,
        wire: Precision,
    ) -> Result<(), CommError> {
        let (total, ce) = (data.len(), self.chunk_elems);
        for c in 0..chunks_in(step, ce) {
            if let Some(out) = chunk(&step.out, ce, c) {
                self.send(step.to, total, &data[out], wire)?;
            }
            if let Some(inc) = chunk(&step.inc, ce, c) {
                self.recv(step.from, total, &mut data[inc], step.combine, wire)?;
            }
        }
        Ok(())
    }

    /// The direct algorithm: every peer's whole buffer to every other peer (or to `root`
    /// only), summed in rank order where it arrives.
    fn direct(
        &mut self,
        data: &mut [f32],
        wire: Precision,
        root: Option<usize>,
    ) -> Result<(), CommError> {
        let (n, me, total) = (self.size, self.rank, data.len());
        // Every peer sums the values the others receive: its own rounded to the wire.
        wire::round(wire, data);
        let words = self.encode_shared(data, wire);
        for q in (0..n).filter(|&q| q != me && root.is_none_or(|r| r == q)) {
            self.send_shared(q, total, &words, wire)?;
        }
        if root.is_some_and(|r| r != me) {
            return Ok(());
        }
        if me == 0 {
            // First in the summation order: sum in place.
            for q in 1..n {
                self.recv(q, total, data, Combine::Add, wire)?;
            }
            wire::round(wire, data);
            return Ok(());
        }
        let mut acc = std::mem::take(&mut self.acc);
        acc.clear();
        acc.resize(total, 0.0);
        for q in 0..n {
            let combine = if q == 0 { Combine::Copy } else { Combine::Add };
            let got = if q == me {
                acc.iter_mut().zip(data.iter()).for_each(|(a, x)| *a += *x);
                Ok(())
            } else {
                self.recv(q, total, &mut acc, combine, wire)
            };
            if let Err(e) = got {
                self.acc = acc;
                return Err(e);
            }
        }
        data.copy_from_slice(&acc);
        self.acc = acc;
        wire::round(wire, data);
        Ok(())
    }

    /// Recursive doubling; see [`schedule`](super::schedule).
    fn doubling(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        let plan = doubling(self.size, self.rank);
        let total = data.len();
        wire::round(wire, data);
        let exchange = |c: &Self, peer: usize, data: &mut [f32]| -> Result<(), CommError> {
            c.send(peer, total, data, wire)?;
            c.recv(peer, total, data, Combine::Add, wire)?;
            wire::round(wire, data);
            Ok(())
        };
        match plan.fold {
            Some((q, true)) => {
                self.send(q, total, data, wire)?;
                return self.recv(q, total, data, Combine::Copy, wire);
            }
            Some((q, false)) => {
                self.recv(q, total, data, Combine::Add, wire)?;
                wire::round(wire, data);
            }
            None => {}
        }
        for peer in plan.partners() {
            exchange(self, peer, data)?;
        }
        if let Some((q, false)) = plan.fold {
            self.send(q, total, data, wire)?;
        }
        Ok(())
    }

    /// The root sends its `data` (in `wire`'s format, which its values must be) to every
    /// other peer.
    fn fan_out(&mut self, data: &mut [f32], root: usize, wire: Precision) -> Result<(), CommError> {
        let total = data.len();
        if self.rank == root {
            let words = self.encode_shared(data, wire);
            for q in (0..self.size).filter(|&q| q != root) {
                self.send_shared(q, total, &words, wire)?;
            }
            return Ok(());
        }
        self.recv(root, total, data, Combine::Copy, wire)
    }
}

impl Communicator for RingComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.collective(|c| c.all_reduce_by_size(data, Precision::F32))
    }

    fn all_reduce_as(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        self.collective(|c| c.all_reduce_by_size(data, wire))
    }

    fn reduce(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        check_root(root, self.size, "reduce")?;
        self.collective(|c| c.reduce_with(data, root))
    }

    fn reduce_scatter(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        check_parts(data.len(), self.size, parts)?;
        self.collective(|c| c.reduce_scatter_with(data, parts))
    }

    fn all_gather(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        check_parts(data.len(), self.size, parts)?;
        self.collective(|c| c.all_gather_with(data, parts))
    }

    fn bytes_sent(&self) -> Option<u64> {
        Some(self.sent.get())
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        check_root(root, self.size, "broadcast")?;
        self.collective(|c| c.broadcast_with(data, root))
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        // Every peer hears from every other (directly, or through the ring's steps), so
        // none gets through before all have arrived.
        let mut token = vec![0.0; self.size];
        self.all_reduce(&mut token)
    }

    fn abort(&mut self, reason: &str) {
        self.group.fail(self.rank, reason.to_string());
        self.broken = self.group.failure();
    }
}

impl std::fmt::Debug for RingComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingComm(rank {} of {})", self.rank, self.size)
    }
}
