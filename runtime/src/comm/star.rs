//! The naive group: every peer sends its whole buffer to peer 0, which sums them and sends
//! the result back to each. Peer 0 moves `2 (size - 1)` whole buffers per all-reduce
//! while the others idle, against `2 (size - 1) / size` of a buffer per peer, all at once,
//! in the ring. It is here as the baseline the ring is measured against (and as an
//! independent implementation to test it by), not for training.

use super::{CommError, Communicator};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// One peer of a [`star`] group.
pub struct StarComm {
    rank: usize,
    size: usize,
    timeout: Duration,
    /// At peer 0: one receiver per other peer (index `r - 1`); elsewhere: none.
    from_peers: Vec<Receiver<Vec<f32>>>,
    /// At peer 0: one sender per other peer; elsewhere: none.
    to_peers: Vec<Sender<Vec<f32>>>,
    /// At other peers: the link to and from peer 0.
    to_root: Option<Sender<Vec<f32>>>,
    from_root: Option<Receiver<Vec<f32>>>,
    /// Why this peer aborted, if it did.
    aborted: Option<String>,
}

/// `size` connected peers around peer 0, waiting at most `timeout` for a message.
pub fn star(size: usize, timeout: Duration) -> Result<Vec<StarComm>, CommError> {
    if size == 0 {
        return Err(CommError::InvalidArgument(
            "a group needs at least one peer".into(),
        ));
    }
    let mut root = StarComm {
        rank: 0,
        size,
        timeout,
        from_peers: Vec::new(),
        to_peers: Vec::new(),
        to_root: None,
        from_root: None,
        aborted: None,
    };
    let mut peers = Vec::new();
    for rank in 1..size {
        let (up_tx, up_rx) = unbounded();
        let (down_tx, down_rx) = unbounded();
        root.from_peers.push(up_rx);
        root.to_peers.push(down_tx);
        peers.push(StarComm {
            rank,
            size,
            timeout,
            from_peers: Vec::new(),
            to_peers: Vec::new(),
            to_root: Some(up_tx),
            from_root: Some(down_rx),
            aborted: None,
        });
    }
    peers.insert(0, root);
    Ok(peers)
}

impl StarComm {
    fn recv(&self, rx: &Receiver<Vec<f32>>, from: usize) -> Result<Vec<f32>, CommError> {
        rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => CommError::Timeout {
                rank: from,
                waited: self.timeout,
            },
            RecvTimeoutError::Disconnected => CommError::PeerLeft { rank: from },
        })
    }

    fn send(&self, tx: &Sender<Vec<f32>>, to: usize, data: Vec<f32>) -> Result<(), CommError> {
        tx.send(data).map_err(|_| CommError::PeerLeft { rank: to })
    }

    fn usable(&self) -> Result<(), CommError> {
        match &self.aborted {
            Some(reason) => Err(CommError::PeerFailed {
                rank: self.rank,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn check_len(got: usize, want: usize, from: usize) -> Result<(), CommError> {
        if got == want {
            Ok(())
        } else {
            Err(CommError::Mismatch(format!(
                "peer {from} sent {got} elements, expected {want}"
            )))
        }
    }
}

impl Communicator for StarComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        let r = self.try_all_reduce(data);
        self.abort_on_error(r)
    }

    fn broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        let r = self.try_broadcast(data, root);
        self.abort_on_error(r)
    }

    fn barrier(&mut self) -> Result<(), CommError> {
        self.all_reduce(&mut [0.0])
    }

    /// Dropping the links is all a star can do: the peers waiting on this one see it
    /// leave.
    fn abort(&mut self, reason: &str) {
        self.aborted = Some(reason.to_string());
        self.from_peers.clear();
        self.to_peers.clear();
        self.to_root = None;
        self.from_root = None;
    }
}

impl StarComm {
    /// An error drops this peer's links too, so that peers waiting on it (all of them,
    /// when it is peer 0) see it leave rather than time out.
    fn abort_on_error(&mut self, r: Result<(), CommError>) -> Result<(), CommError> {
        if let Err(e) = &r {
            if self.aborted.is_none() {
                self.abort(&e.to_string());
            }
        }
        r
    }

    fn try_all_reduce(&mut self, data: &mut [f32]) -> Result<(), CommError> {
        self.usable()?;
        if self.rank == 0 {
            for (i, rx) in self.from_peers.iter().enumerate() {
                let part = self.recv(rx, i + 1)?;
                Self::check_len(part.len(), data.len(), i + 1)?;
                for (d, x) in data.iter_mut().zip(&part) {
                    *d += *x;
                }
            }
            for (i, tx) in self.to_peers.iter().enumerate() {
                self.send(tx, i + 1, data.to_vec())?;
            }
        } else if let (Some(up), Some(down)) = (&self.to_root, &self.from_root) {
            self.send(up, 0, data.to_vec())?;
            let sum = self.recv(down, 0)?;
            Self::check_len(sum.len(), data.len(), 0)?;
            data.copy_from_slice(&sum);
        }
        Ok(())
    }

    fn try_broadcast(&mut self, data: &mut [f32], root: usize) -> Result<(), CommError> {
        if root >= self.size {
            return Err(CommError::InvalidArgument(format!(
                "broadcast from peer {root} in a group of {}",
                self.size
            )));
        }
        self.usable()?;
        // Through peer 0: the root sends up, peer 0 sends down to all others.
        if self.rank == root && root != 0 {
            if let Some(up) = &self.to_root {
                self.send(up, 0, data.to_vec())?;
            }
        }
        if self.rank == 0 {
            if root != 0 {
                let v = self.recv(&self.from_peers[root - 1], root)?;
                Self::check_len(v.len(), data.len(), root)?;
                data.copy_from_slice(&v);
            }
            for (i, tx) in self.to_peers.iter().enumerate() {
                if i + 1 != root {
                    self.send(tx, i + 1, data.to_vec())?;
                }
            }
        } else if self.rank != root {
            if let Some(down) = &self.from_root {
                let v = self.recv(down, 0)?;
                Self::check_len(v.len(), data.len(), 0)?;
                data.copy_from_slice(&v);
            }
        }
        Ok(())
    }
}
