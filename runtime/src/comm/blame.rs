//! Whom to blame when a peer has waited too long: not its neighbour, which may itself be
//! starved, but the peer at the end of the chain of waits. Shared by the in-process ring
//! (which reads the chain from shared memory) and the MPI communicator (which gathers it
//! from the peers' timeout reports).

/// What is known about a peer when another has timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waiting {
    /// Not waiting on anyone (or silent): if the chain ends here, this peer holds it up.
    No,
    /// Waiting on that peer.
    On(usize),
    /// Waiting, on a peer it cannot name (a collective run by the MPI library).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    Unknown,
}

/// Follows the chain of waits from `peer` (the one `me` timed out on) to the first peer
/// that is not waiting. `None` when the chain comes back to `me`, closes on itself, or
/// reaches a peer waiting on it knows not whom: then every peer is waiting, and no one
/// peer is to blame.
pub(super) fn holdup(
    me: usize,
    peer: usize,
    size: usize,
    waiting: impl Fn(usize) -> Waiting,
) -> Option<usize> {
    let mut at = peer;
    for _ in 0..size {
        if at == me {
            return None;
        }
        match waiting(at) {
            Waiting::No => return Some(at),
            Waiting::On(next) if next < size => at = next,
            Waiting::On(_) | Waiting::Unknown => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_ends_at_the_peer_that_is_not_waiting() {
        // 4 peers in a ring: 2 waits on 1, 3 on 2, 0 on 3; 1 is hung (not waiting).
        let state = |p| match p {
            2 => Waiting::On(1),
            3 => Waiting::On(2),
            0 => Waiting::On(3),
            _ => Waiting::No,
        };
        for (me, peer) in [(0, 3), (3, 2), (2, 1)] {
            assert_eq!(holdup(me, peer, 4, state), Some(1), "from {me}");
        }
    }

    #[test]
    fn cycles_and_unknown_waits_blame_no_one() {
        let cycle = |p: usize| Waiting::On((p + 3) % 4);
        assert_eq!(holdup(0, 3, 4, cycle), None);
        assert_eq!(holdup(0, 1, 3, |_| Waiting::Unknown), None);
        // A chain that loops among others without reaching `me` stops too.
        assert_eq!(
            holdup(0, 1, 4, |p| Waiting::On(if p == 1 { 2 } else { 1 })),
            None
        );
    }
}
