//! Collective communication between the replicas of a data-parallel run: the
//! [`Communicator`] trait (all-reduce, reduce, reduce-scatter, all-gather, broadcast,
//! barrier), and [`ring`], its in-process implementation, whose peers are threads of one
//! process exchanging chunks over channels; `mpi` across processes (feature `mpi`);
//! [`hierarchical`] and [`hierarchical_rails`] over two levels. Which all-reduce
//! algorithm runs (ring, tree, recursive doubling) depends on the message size, alike in
//! every transport ([`Algorithm::pick`]). [`star`], gather to one peer and send back, is
//! the naive baseline benchmarks compare with.
//!
//! A communicator works on host memory (`[f32]`): wgpu cannot copy between devices, so a
//! GPU's gradients come through the host on their way between replicas.

mod blame;
mod hierarchical;
#[cfg(feature = "mpi")]
pub mod mpi;
mod ring;
mod schedule;
mod star;
mod wire;

pub use hierarchical::{hierarchical, hierarchical_rails, HierarchicalComm};
pub use ring::{ring, ring_with, RingComm, RingConfig};
pub use schedule::{even_parts, Algorithm, Thresholds};
pub use star::{star, StarComm};

use crate::Precision;
use std::time::Duration;
use thiserror::Error;

/// An error unless `root` is a rank of a group of `size`.
fn check_root(root: usize, size: usize, what: &str) -> Result<(), CommError> {
    if root >= size {
        return Err(CommError::InvalidArgument(format!(
            "{what} at rank {root} in a group of {size}"
        )));
    }
    Ok(())
}

/// Why a collective did not complete. Every variant names the peer at fault where one is
/// known, so that a failure on one replica reads the same from all of them.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum CommError {
    #[error("peer {rank} failed: {reason}")]
    PeerFailed { rank: usize, reason: String },
    #[error("peer {rank} left the group in the middle of a collective")]
    PeerLeft { rank: usize },
    #[error(
        "peer {rank} sent nothing for {:.0} s: it is hung, or slower than the communicator's timeout allows",
        .waited.as_secs_f64()
    )]
    Timeout { rank: usize, waited: Duration },
    #[error(
        "a collective made no progress for {:.0} s; a peer may be hung or dead",
        .waited.as_secs_f64()
    )]
    Stalled { waited: Duration },
    #[error("peers disagree on the collective: {0}")]
    Mismatch(String),
    #[error("{0}")]
    InvalidArgument(String),
}

/// The collectives data-parallel training needs, over one group of `size` peers, each
/// with its `rank` in `0..size`. Every peer must call the same collectives in the same
/// order with buffers of the same length; a peer that fails calls [`Communicator::abort`]
/// (or drops its communicator), and the others' collectives then return an error that
/// names it instead of waiting forever.
pub trait Communicator: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Replaces `data` on every peer by the element-wise sum over all peers. Every peer
    /// receives the same bits.
    fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError>;
    /// [`Communicator::all_reduce`] with the values crossing every link as `wire` (bf16
    /// or f16: half the bytes of f32) and summed in f32 where they arrive. Every peer
    /// still receives the same bits: each finished sum is rounded to `wire` once, by the
    /// peer that finished it, which keeps the rounded value too (a group of one sends
    /// nothing and leaves the values as they are). A communicator that cannot compress
    /// says so for a reduced `wire`; f32 is `all_reduce`.
    fn all_reduce_as(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        if wire.is_reduced() {
            return Err(CommError::InvalidArgument(format!(
                "this communicator ({} peers) cannot send {wire} values",
                self.size()
            )));
        }
        self.all_reduce(data)
    }
    /// Bytes of collective payload this peer has sent so far, where the communicator
    /// counts them.
    fn bytes_sent(&self) -> Option<u64> {
        None
    }
    /// Sums `data` over all peers into `root`'s; the other peers' `data` is left
    /// unspecified. The default all-reduces.
    fn reduce(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        check_root(root, self.size(), "reduce")?;
        self.all_reduce(data)
    }
    /// `parts` (`size + 1` non-decreasing offsets from 0 to `data.len()`, as
    /// [`even_parts`] makes) cuts `data` into one part per peer; afterwards part `r` of
    /// peer `r`'s `data` holds the sum over all peers of that part, and the rest of its
    /// `data` is unspecified. Parts may differ in size, and be empty. The default
    /// all-reduces.
    fn reduce_scatter(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        schedule::check_parts(data.len(), self.size(), parts)?;
        self.all_reduce(data)
    }
    /// The inverse: part `r` of peer `r`'s `data` (cut by `parts`, as for
    /// [`Communicator::reduce_scatter`]) is copied into every other peer's. The default
    /// all-reduces with the other parts zeroed (`x + 0` is `x`, bit for bit).
    fn all_gather(&mut self, data: &mut [f32], parts: &[usize]) -> Result<(), CommError> {
        schedule::check_parts(data.len(), self.size(), parts)?;
        let r = self.rank();
        data[..parts[r]].fill(0.0);
        data[parts[r + 1]..].fill(0.0);
        self.all_reduce(data)
    }
    /// Copies `root`'s `data` into every other peer's.
    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError>;
    /// Returns once every peer has called it.
    fn barrier(&mut self) -> Result<(), CommError>;
    /// Tells the group this peer has failed, for `reason`; collectives in progress or to
    /// come, on every peer, return [`CommError::PeerFailed`] with this rank.
    fn abort(&mut self, reason: &str);
}
