//! Two-level collectives for several devices per machine and several machines: a fast
//! local group joins the devices of a node (the in-process group), and slower links
//! (MPI) join the nodes. Two shapes, as NCCL and Horovod build them:
//!
//! - **Rails** ([`hierarchical_rails`], every node with the same number of devices):
//!   device `i` of every node is linked to device `i` of every other. An all-reduce is a
//!   local reduce-scatter (device `i` ends with its node's sum of part `i`), an
//!   all-reduce of each part along its rail, all rails at once, and a local all-gather:
//!   each device moves `1 / devices` of the buffer between nodes.
//! - **Leaders** ([`hierarchical`], nodes of any sizes): only local rank 0 links to the
//!   other nodes. An all-reduce is a local reduce to the leader, an all-reduce among the
//!   leaders, and a local broadcast.
//!
//! Broadcasts and barriers take the leaders' path in both shapes.

use super::schedule::even_parts;
use super::{CommError, Communicator};
use crate::Precision;
use std::sync::{Arc, Mutex};

/// One device's end of a two-level group; see the module documentation. Its rank is
/// global: the ranks of node `k` follow those of nodes `0..k`.
pub struct HierarchicalComm {
    local: Box<dyn Communicator>,
    /// This device's link to the other nodes: local rank 0's, the leaders' link, in
    /// both shapes; every device's, its rail, in the rails shape.
    rail: Option<Box<dyn Communicator>>,
    rails: bool,
    node: usize,
    /// `offsets[k]` is the first global rank of node `k`; the last entry is the size.
    offsets: Arc<[usize]>,
    /// A failure between nodes, kept so that every device of this node reports it (the
    /// local group only knows that a device stopped).
    remote_failure: Arc<Mutex<Option<CommError>>>,
}

/// Joins a node's local group (`local[i]` has local rank `i`) to the other nodes through
/// `leader`, a communicator whose ranks are the nodes. Every node calls this with its
/// own groups, at the same time: the nodes tell each other their device counts (nodes
/// may differ). Hand `result[i]` to the thread that drives local device `i`.
pub fn hierarchical(
    local: Vec<Box<dyn Communicator>>,
    leader: Box<dyn Communicator>,
) -> Result<Vec<HierarchicalComm>, CommError> {
    join(local, vec![leader], false)
}

/// Joins a node's local group to the other nodes by rails: `rails[i]` links local device
/// `i` to device `i` of every other node, its ranks the nodes. Every node must have the
/// same number of devices (checked: an error on every node otherwise; [`hierarchical`]
/// takes nodes of any sizes). Every node calls this at the same time.
pub fn hierarchical_rails(
    local: Vec<Box<dyn Communicator>>,
    rails: Vec<Box<dyn Communicator>>,
) -> Result<Vec<HierarchicalComm>, CommError> {
    if rails.len() != local.len() {
        return Err(CommError::InvalidArgument(format!(
            "{} local devices need a rail each, got {}",
            local.len(),
            rails.len()
        )));
    }
    join(local, rails, true)
}

fn join(
    local: Vec<Box<dyn Communicator>>,
    mut rails: Vec<Box<dyn Communicator>>,
    by_rails: bool,
) -> Result<Vec<HierarchicalComm>, CommError> {
    let n = local.len();
    if n == 0 || rails.is_empty() {
        return Err(CommError::InvalidArgument(
            "a node needs at least one device and one link to the other nodes".into(),
        ));
    }
    let bad_local = local
        .iter()
        .enumerate()
        .any(|(i, c)| c.rank() != i || c.size() != n);
    let (node, nodes) = (rails[0].rank(), rails[0].size());
    let bad_rails = rails.iter().any(|r| r.rank() != node || r.size() != nodes);
    if bad_local || bad_rails {
        let e = CommError::InvalidArgument(format!(
            "a node's local communicators must have ranks 0..{n} in a group of that size, \
             and its links to other nodes the node's rank in groups of the node count"
        ));
        rails.iter_mut().for_each(|r| r.abort(&e.to_string()));
        return Err(e);
    }
    let mut counts = vec![0.0f32; nodes];
    // f32 holds device counts exactly (below 2^24).
    counts[node] = n as f32;
    if let Err(e) = rails[0].all_reduce(&mut counts) {
        rails.iter_mut().for_each(|r| r.abort(&e.to_string()));
        return Err(e);
    }
    if by_rails && counts.iter().any(|&c| c != n as f32) {
        // Every node sees the same counts, so every node refuses alike.
        return Err(CommError::InvalidArgument(format!(
            "rails need the same number of devices on every node, got {counts:?}; \
             join nodes of different sizes through their leaders"
        )));
    }
    let mut offsets = Vec::with_capacity(nodes + 1);
    let mut total = 0usize;
    for &c in &counts {
        offsets.push(total);
        total += c as usize;
    }
    offsets.push(total);
    let offsets: Arc<[usize]> = offsets.into();
    let remote_failure = Arc::new(Mutex::new(None));
    let mut rails = rails.into_iter();
    Ok(local
        .into_iter()
        .map(|local| HierarchicalComm {
            rail: if by_rails || local.rank() == 0 {
                rails.next()
            } else {
                None
            },
            rails: by_rails,
            local,
            node,
            offsets: offsets.clone(),
            remote_failure: remote_failure.clone(),
        })
        .collect())
}

impl HierarchicalComm {
    /// This device's node (its leader's rank among the leaders).
    pub fn node(&self) -> usize {
        self.node
    }

    pub fn nodes(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Whether this device is its node's leader (local rank 0).
    pub fn is_leader(&self) -> bool {
        self.local.rank() == 0
    }

    /// Whether every device has its own link to the other nodes.
    pub fn has_rails(&self) -> bool {
        self.rails
    }

    fn global(&self, local_rank: usize) -> usize {
        self.offsets[self.node] + local_rank
    }

    /// A local group's error, in global ranks, or the leaders' failure behind it.
    fn local_error(&self, e: CommError) -> CommError {
        if let Some(remote) = self
            .remote_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return remote;
        }
        match e {
            CommError::PeerFailed { rank, reason } => CommError::PeerFailed {
                rank: self.global(rank),
                reason,
            },
            CommError::PeerLeft { rank } => CommError::PeerLeft {
                rank: self.global(rank),
            },
            CommError::Timeout { rank, waited } => CommError::Timeout {
                rank: self.global(rank),
                waited,
            },
            other => other,
        }
    }

    /// An error between nodes, in global ranks: a node is named by this device's
    /// counterpart there (its leader, on the leaders' link).
    fn remote_error(&self, e: CommError) -> CommError {
        let local = self.local.rank();
        let leader_of = |node: usize| self.offsets.get(node).map_or(node, |&first| first + local);
        match e {
            CommError::PeerFailed { rank, reason } => CommError::PeerFailed {
                rank: leader_of(rank),
                reason,
            },
            CommError::PeerLeft { rank } => CommError::PeerLeft {
                rank: leader_of(rank),
            },
            CommError::Timeout { rank, waited } => CommError::Timeout {
                rank: leader_of(rank),
                waited,
            },
            other => other,
        }
    }

    /// Runs a step on the local group; if it fails on the leader, the other nodes are
    /// told.
    fn local_step(
        &mut self,
        f: impl FnOnce(&mut dyn Communicator) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        let result = f(self.local.as_mut()).map_err(|e| self.local_error(e));
        if let (Err(e), Some(rail)) = (&result, self.rail.as_mut()) {
            rail.abort(&format!("its node failed: {e}"));
        }
        result
    }

    /// Runs a step among the leaders (a no-op on other devices); if it fails, the node's
    /// devices are told.
    fn leader_step(
        &mut self,
        f: impl FnOnce(&mut dyn Communicator) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        if !self.is_leader() {
            return Ok(());
        }
        self.rail_step(f)
    }

    /// Runs a step on this device's link to the other nodes, if it has one; if it fails,
    /// the node's devices are told.
    fn rail_step(
        &mut self,
        f: impl FnOnce(&mut dyn Communicator) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        let Some(rail) = self.rail.as_mut() else {
            return Ok(());
        };
        let result = f(rail.as_mut()).map_err(|e| self.remote_error(e));
        if let Err(e) = &result {
            *self
                .remote_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            self.local.abort(&e.to_string());
        }
        result
    }
}

impl Communicator for HierarchicalComm {
    fn rank(&self) -> usize {
        self.global(self.local.rank())
    }

    fn size(&self) -> usize {
        self.offsets[self.offsets.len() - 1]
    }

    fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.all_reduce_as(data, Precision::F32)
    }

    /// Compressed between nodes only: the local group's link is the fast one, and the
    /// local all-gather (or broadcast) copies the (rounded) bits that crossed.
    fn all_reduce_as(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        if !self.rails {
            self.local_step(|c| c.reduce(data, 0))?;
            self.leader_step(|c| c.all_reduce_as(data, wire))?;
            return self.local_step(|c| c.broadcast(data, 0));
        }
        let parts = even_parts(data.len(), self.local.size());
        let own = parts[self.local.rank()]..parts[self.local.rank() + 1];
        self.local_step(|c| c.reduce_scatter(data, &parts))?;
        self.rail_step(|c| c.all_reduce_as(&mut data[own], wire))?;
        self.local_step(|c| c.all_gather(data, &parts))
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size() {
            return Err(CommError::InvalidArgument(format!(
                "broadcast from rank {root} in a group of {}",
                self.size()
            )));
        }
        // The node holding `root`: the last whose first rank is at most `root`.
        let root_node = self.offsets.partition_point(|&first| first <= root) - 1;
        if root_node == self.node {
            let local_root = root - self.offsets[root_node];
            self.local_step(|c| c.broadcast(data, local_root))?;
            self.leader_step(|c| c.broadcast(data, root_node))
        } else {
            self.leader_step(|c| c.broadcast(data, root_node))?;
            self.local_step(|c| c.broadcast(data, 0))
        }
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.local_step(|c| c.barrier())?;
        self.leader_step(|c| c.barrier())?;
        self.local_step(|c| c.barrier())
    }

    fn abort(&mut self, reason: &str) {
        self.local.abort(reason);
        // A device without a link reaches the other nodes through its leader, whose next
        // local step fails.
        if let Some(rail) = self.rail.as_mut() {
            rail.abort(reason);
        }
    }
}

impl std::fmt::Debug for HierarchicalComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HierarchicalComm(rank {} of {}, node {} of {}{}{})",
            self.rank(),
            self.size(),
            self.node,
            self.nodes(),
            if self.is_leader() { ", leader" } else { "" },
            if self.rails { ", rails" } else { "" }
        )
    }
}
