//! The in-process ring: peer `r` sends to `r + 1` and receives from `r - 1` (mod `size`)
//! over bounded channels.
//!
//! All-reduce is reduce-scatter then all-gather, `2 (size - 1)` steps: the buffer is cut
//! into `size` segments, and at each step every peer sends one segment to its successor
//! while receiving another from its predecessor, so each link carries `1 / size` of the
//! data per step and all links are busy at once. Segments are cut further into chunks
//! that are sent one by one, so a peer adds (or copies) one chunk while the next is in
//! flight. Emptied chunk buffers travel back to their sender to be filled again: after
//! the first collective, a collective allocates nothing.
//!
//! Segment `j` is summed in the fixed order `x[j] + x[j+1] + ...` (ring order from peer
//! `j`) by one peer, and then copied to the others, so every peer ends with the same bits.

use super::blame;
use super::schedule::{all_reduce_steps, chunk, chunks_in, Combine, Step};
use super::{wire, CommError, Communicator};
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
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 1 << 20,
            queue_depth: 4,
            timeout: Duration::from_secs(120),
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
    data: Vec<f32>,
}

struct Link {
    to_next: Sender<Chunk>,
    from_prev: Receiver<Chunk>,
    /// Buffers the successor has emptied, to fill again.
    spare_from_next: Receiver<Vec<f32>>,
    /// Buffers of the predecessor's that this peer has emptied.
    spare_to_prev: Sender<Vec<f32>>,
}

/// One peer of an in-process ring; see [`ring`].
pub struct RingComm {
    rank: usize,
    size: usize,
    config: RingConfig,
    chunk_elems: usize,
    group: Arc<Group>,
    link: Option<Link>,
    ops: u64,
    /// Set by the first error: the ring cannot be trusted after one.
    broken: Option<CommError>,
    /// Payload bytes sent, and where a compressed chunk is decoded.
    sent: Cell<u64>,
    scratch: RefCell<Vec<f32>>,
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
    // Channel i carries data from peer i to peer i + 1, spare channel i the emptied
    // buffers back from i + 1 to i.
    let (mut data_tx, mut data_rx): (Vec<_>, Vec<_>) =
        (0..size).map(|_| bounded(config.queue_depth)).unzip();
    let (mut spare_tx, mut spare_rx): (Vec<_>, Vec<_>) = (0..size).map(|_| unbounded()).unzip();
    // Peer r receives on channel r - 1; rotate so that index r holds it.
    data_rx.rotate_right(1);
    spare_tx.rotate_right(1);
    let chunk_elems = config.chunk_bytes / 4;
    let mut peers = Vec::with_capacity(size);
    for rank in (0..size).rev() {
        let link = (size > 1).then(|| Link {
            to_next: data_tx.pop().expect("one per peer"),
            from_prev: data_rx.pop().expect("one per peer"),
            spare_from_next: spare_rx.pop().expect("one per peer"),
            spare_to_prev: spare_tx.pop().expect("one per peer"),
        });
        peers.push(RingComm {
            rank,
            size,
            config: config.clone(),
            chunk_elems,
            group: group.clone(),
            link,
            ops: 0,
            broken: None,
            sent: Cell::new(0),
            scratch: RefCell::new(Vec::new()),
        });
    }
    peers.reverse();
    Ok(peers)
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

    fn link(&self) -> &Link {
        self.link
            .as_ref()
            .expect("peers of a ring of 2 or more have links")
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

    /// After waiting `waited` on `peer`: records the peer holding the ring up as the
    /// group's failure. Called while this peer still counts as waiting, so that a peer
    /// timing out at the same moment follows the chain through this one instead of
    /// taking it for the culprit.
    fn timed_out(&self, peer: usize, waited: Duration) -> CommError {
        let culprit = self.group.holdup(self.rank, peer);
        self.group.fail(
            culprit,
            format!(
                "it sent nothing for {:.0} s, holding up the ring",
                waited.as_secs_f64()
            ),
        );
        CommError::Timeout { rank: peer, waited }
    }

    /// Sends `values` (in `wire`'s format) to the successor.
    fn send(&self, total: usize, values: &[f32], wire: Precision) -> Result<(), CommError> {
        let link = self.link();
        let mut data = match link.spare_from_next.try_recv() {
            Ok(buf) => buf,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                Vec::with_capacity(self.chunk_elems)
            }
        };
        wire::encode(wire, values, &mut data);
        self.sent.set(self.sent.get() + 4 * data.len() as u64);
        let mut chunk = Chunk {
            op: self.ops,
            total,
            wire,
            data,
        };
        let start = Instant::now();
        let _waiting = self.waiting_on(self.next_rank());
        loop {
            if let Some(e) = self.group.failure() {
                return Err(e);
            }
            match link.to_next.send_timeout(chunk, POLL) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(c)) => {
                    chunk = c;
                    if start.elapsed() > self.config.timeout {
                        return Err(self.timed_out(self.next_rank(), start.elapsed()));
                    }
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    return Err(CommError::PeerLeft {
                        rank: self.next_rank(),
                    })
                }
            }
        }
    }

    /// Receives the predecessor's next chunk (in `wire`'s format) into `dst`, which it
    /// must exactly fill.
    fn recv(
        &self,
        total: usize,
        dst: &mut [f32],
        combine: Combine,
        wire: Precision,
    ) -> Result<(), CommError> {
        let link = self.link();
        let start = Instant::now();
        let waiting = self.waiting_on(self.prev_rank());
        let chunk = loop {
            if let Some(e) = self.group.failure() {
                return Err(e);
            }
            match link.from_prev.recv_timeout(POLL) {
                Ok(c) => break c,
                Err(RecvTimeoutError::Timeout) => {
                    if start.elapsed() > self.config.timeout {
                        return Err(self.timed_out(self.prev_rank(), start.elapsed()));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(CommError::PeerLeft {
                        rank: self.prev_rank(),
                    })
                }
            }
        };
        drop(waiting);
        let words = wire::words(wire, dst.len());
        if chunk.op != self.ops
            || chunk.total != total
            || chunk.wire != wire
            || chunk.data.len() != words
        {
            return Err(CommError::Mismatch(format!(
                "peer {} is in collective {} over {} {} elements, peer {} in collective {} \
                 over {} {}",
                self.prev_rank(),
                chunk.op,
                chunk.total,
                chunk.wire,
                self.rank,
                self.ops,
                total,
                wire
            )));
        }
        let add = combine == Combine::Add;
        wire::decode(wire, &chunk.data, dst, add, &mut self.scratch.borrow_mut());
        // The predecessor may be gone by now (it finished first); the buffer just drops.
        let _ = link.spare_to_prev.send(chunk.data);
        Ok(())
    }

    /// One ring step, chunk by chunk: send chunk `c` of the outgoing segment, then
    /// receive chunk `c` of the incoming one (the link's queue lets sends run ahead).
    fn ring_step(&self, data: &mut [f32], step: &Step, wire: Precision) -> Result<(), CommError> {
        let (total, ce) = (data.len(), self.chunk_elems);
        for c in 0..chunks_in(step, ce) {
            if let Some(out) = chunk(&step.out, ce, c) {
                self.send(total, &data[out], wire)?;
            }
            if let Some(inc) = chunk(&step.inc, ce, c) {
                self.recv(total, &mut data[inc], step.combine, wire)?;
            }
        }
        Ok(())
    }

    fn ring_all_reduce(&self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        let mut gathering = false;
        for step in all_reduce_steps(data.len(), self.size, self.rank) {
            if step.combine == Combine::Copy && !gathering {
                // This peer's finished segment, about to go round: it keeps what the
                // others will receive.
                wire::round(wire, &mut data[step.out.clone()]);
                gathering = true;
            }
            self.ring_step(data, &step, wire)?;
        }
        Ok(())
    }

    fn ring_broadcast(&self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let total = data.len();
        let forwards = self.next_rank() != root;
        for lo in (0..total).step_by(self.chunk_elems) {
            let hi = (lo + self.chunk_elems).min(total);
            if self.rank != root {
                self.recv(total, &mut data[lo..hi], Combine::Copy, Precision::F32)?;
            }
            if forwards {
                self.send(total, &data[lo..hi], Precision::F32)?;
            }
        }
        Ok(())
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
        self.collective(|c| c.ring_all_reduce(data, Precision::F32))
    }

    fn all_reduce_as(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        self.collective(|c| c.ring_all_reduce(data, wire))
    }

    fn bytes_sent(&self) -> Option<u64> {
        Some(self.sent.get())
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(CommError::InvalidArgument(format!(
                "broadcast from peer {root} in a group of {}",
                self.size
            )));
        }
        self.collective(|c| c.ring_broadcast(data, root))
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        // One element per segment: every peer sends and receives at every step, so none
        // gets through before all have arrived.
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
