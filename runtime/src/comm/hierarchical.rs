//! Two-level collectives for several devices per machine and several machines: the
//! devices of a node reduce among themselves over a fast local group (the in-process
//! ring), one leader per node all-reduces the node sums with the other leaders (over
//! MPI), and each leader broadcasts the result back within its node. Only the leaders
//! touch the network, once per collective, whatever the number of devices per node.

use super::{CommError, Communicator};
use crate::Precision;
use std::sync::{Arc, Mutex};

/// One device's end of a two-level group; see the module documentation. Its rank is
/// global: the ranks of node `k` follow those of nodes `0..k`.
pub struct HierarchicalComm {
    local: Box<dyn Communicator>,
    /// The link to the other nodes' leaders; only local rank 0 has one.
    leader: Option<Box<dyn Communicator>>,
    node: usize,
    /// `offsets[k]` is the first global rank of node `k`; the last entry is the size.
    offsets: Arc<[usize]>,
    /// A failure among the leaders, kept so that every device of this node reports it
    /// (the local group only knows that its leader stopped).
    remote_failure: Arc<Mutex<Option<CommError>>>,
}

/// Joins a node's local group (`local[i]` has local rank `i`) to the other nodes through
/// `leader`, a communicator whose ranks are the nodes. Every node calls this with its
/// own groups, at the same time: the nodes tell each other their device counts (nodes
/// may differ). Hand `result[i]` to the thread that drives local device `i`.
pub fn hierarchical(
    local: Vec<Box<dyn Communicator>>,
    mut leader: Box<dyn Communicator>,
) -> Result<Vec<HierarchicalComm>, CommError> {
    let n = local.len();
    if n == 0
        || local
            .iter()
            .enumerate()
            .any(|(i, c)| c.rank() != i || c.size() != n)
    {
        return Err(CommError::InvalidArgument(format!(
            "a node's local communicators must have ranks 0..{n} in a group of that size"
        )));
    }
    let (node, nodes) = (leader.rank(), leader.size());
    let mut counts = vec![0.0f32; nodes];
    // f32 holds device counts exactly (below 2^24).
    counts[node] = n as f32;
    if let Err(e) = leader.all_reduce(&mut counts) {
        leader.abort(&e.to_string());
        return Err(e);
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
    let mut leader = Some(leader);
    Ok(local
        .into_iter()
        .map(|local| HierarchicalComm {
            leader: if local.rank() == 0 {
                leader.take()
            } else {
                None
            },
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

    /// Whether this device links its node to the others.
    pub fn is_leader(&self) -> bool {
        self.leader.is_some()
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

    /// The leaders' error, in global ranks (a node is named by its leader).
    fn leaders_error(&self, e: CommError) -> CommError {
        let leader_of = |node: usize| self.offsets.get(node).copied().unwrap_or(node);
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
        if let (Err(e), Some(leader)) = (&result, self.leader.as_mut()) {
            leader.abort(&format!("its node failed: {e}"));
        }
        result
    }

    /// Runs a step among the leaders (a no-op on other devices); if it fails, the node's
    /// devices are told.
    fn leader_step(
        &mut self,
        f: impl FnOnce(&mut dyn Communicator) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        let Some(leader) = self.leader.as_mut() else {
            return Ok(());
        };
        let result = f(leader.as_mut()).map_err(|e| self.leaders_error(e));
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
    /// broadcast within the node copies the leaders' (rounded) bits.
    fn all_reduce_as(&mut self, data: &mut [f32], wire: Precision) -> Result<(), CommError> {
        self.local_step(|c| c.all_reduce(data))?;
        self.leader_step(|c| c.all_reduce_as(data, wire))?;
        self.local_step(|c| c.broadcast(data, 0))
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
        // A non-leader's failure reaches the other nodes through its leader, whose next
        // local step fails.
        if let Some(leader) = self.leader.as_mut() {
            leader.abort(reason);
        }
    }
}

impl std::fmt::Debug for HierarchicalComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HierarchicalComm(rank {} of {}, node {} of {}{})",
            self.rank(),
            self.size(),
            self.node,
            self.nodes(),
            if self.is_leader() { ", leader" } else { "" }
        )
    }
}
