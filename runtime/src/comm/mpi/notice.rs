//! Notices: the small messages ranks send each other, on a communicator of their own,
//! when something goes wrong, so that no rank waits on a peer that will never answer.
//!
//! - `Failed { culprit, reason }`: a rank failed (or found out which one did); the
//!   receiver's collective returns `PeerFailed` naming `culprit`.
//! - `Waiting { on }`: the sender timed out waiting on `on` (or on a collective whose
//!   laggard it cannot name). Every rank that times out sends one and then listens for a
//!   moment for the others', so that all of them follow the same chain of waits to the
//!   rank actually holding the group up (see `blame::holdup`).

use super::call::{call, check, u8_type, Backoff, Kind, Request};
use mpi::datatype::Equivalence;
use mpi::ffi;
use mpi::point_to_point::Status;
use std::os::raw::c_int;
use std::time::{Duration, Instant};

/// Tag of notices, on the notice communicator.
const TAG: c_int = 1;
/// Longest reason sent: short enough to travel eagerly, so that receiving one never waits
/// on a sender that has stopped calling MPI.
const MAX_REASON: usize = 1024;
/// How long a rank tries to deliver its notices.
const DELIVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Notice {
    Failed { culprit: usize, reason: String },
    Waiting { on: Option<usize>, waited: Duration },
}

impl Notice {
    /// `[kind u8][a u64 LE][b u64 LE][reason]`.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, a, b, reason) = match self {
            Notice::Failed { culprit, reason } => (0u8, *culprit as u64, 0u64, reason.as_str()),
            Notice::Waiting { on, waited } => (
                1,
                on.map_or(u64::MAX, |p| p as u64),
                waited.as_millis() as u64,
                "",
            ),
        };
        let mut cut = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&a.to_le_bytes());
        bytes.extend_from_slice(&b.to_le_bytes());
        bytes.extend_from_slice(&reason.as_bytes()[..cut]);
        bytes
    }

    /// `None` for bytes that are not a notice.
    pub fn decode(bytes: &[u8]) -> Option<Notice> {
        if bytes.len() < 17 {
            return None;
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let (a, b) = (word(1), word(9));
        match bytes[0] {
            0 => Some(Notice::Failed {
                culprit: usize::try_from(a).ok()?,
                reason: String::from_utf8_lossy(&bytes[17..]).into_owned(),
            }),
            1 => Some(Notice::Waiting {
                on: (a != u64::MAX).then(|| usize::try_from(a).ok()).flatten(),
                waited: Duration::from_millis(b),
            }),
            _ => None,
        }
    }
}

/// The next notice that has arrived on `comm`, and its sender, if any. Only probes: the
/// receive itself is immediate, as notices travel eagerly.
pub(super) fn receive(
    comm: ffi::MPI_Comm,
) -> Result<Option<(usize, Notice)>, crate::comm::CommError> {
    let mut found: c_int = 0;
    let mut message = unsafe { ffi::RSMPI_MESSAGE_NULL };
    let mut status: ffi::MPI_Status = unsafe { std::mem::zeroed() };
    check(call(|| unsafe {
        ffi::MPI_Improbe(
            ffi::RSMPI_ANY_SOURCE,
            TAG,
            comm,
            &mut found,
            &mut message,
            &mut status,
        )
    }))?;
    if found == 0 {
        return Ok(None);
    }
    let status = Status::from_raw(status);
    let sender = status.source_rank() as usize;
    let len = status.count(u8::equivalent_datatype()).max(0) as usize;
    let mut bytes = vec![0u8; len];
    let mut done: ffi::MPI_Status = unsafe { std::mem::zeroed() };
    check(call(|| unsafe {
        ffi::MPI_Mrecv(
            bytes.as_mut_ptr().cast(),
            len as c_int,
            u8_type(),
            &mut message,
            &mut done,
        )
    }))?;
    let notice = Notice::decode(&bytes).unwrap_or(Notice::Failed {
        culprit: sender,
        reason: "it sent a malformed notice".into(),
    });
    Ok(Some((sender, notice)))
}

/// Sends `notice` to every rank but `me`: best effort (a rank that is gone cannot be
/// told), with a bounded wait for delivery.
pub(super) fn send_all(comm: ffi::MPI_Comm, me: usize, size: usize, notice: &Notice) {
    // MPI may still be reading the bytes when this returns; a notice is sent at most a
    // few times per failure.
    let bytes: &'static [u8] = Box::leak(notice.encode().into_boxed_slice());
    let mut pending = Vec::new();
    for peer in (0..size).filter(|&p| p != me) {
        let mut req = Request::default();
        let posted = req.post(Kind::PointToPoint, |raw| unsafe {
            ffi::MPI_Isend(
                bytes.as_ptr().cast(),
                bytes.len() as c_int,
                u8_type(),
                peer as c_int,
                TAG,
                comm,
                raw,
            )
        });
        if posted.is_ok() {
            pending.push(req);
        }
    }
    let start = Instant::now();
    let mut backoff = Backoff::new();
    while start.elapsed() < DELIVERY && !pending.is_empty() {
        pending.retain_mut(|r| !matches!(r.test(), Ok(Some(_)) | Err(_)));
        backoff.pause();
    }
    for mut r in pending {
        r.abandon();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_long_reasons_are_cut_on_a_char_boundary() {
        let failed = Notice::Failed {
            culprit: 3,
            reason: "injected".into(),
        };
        assert_eq!(Notice::decode(&failed.encode()), Some(failed));
        for on in [Some(2), None] {
            let waiting = Notice::Waiting {
                on,
                waited: Duration::from_millis(2500),
            };
            assert_eq!(Notice::decode(&waiting.encode()), Some(waiting));
        }
        let long = Notice::Failed {
            culprit: 0,
            reason: "é".repeat(MAX_REASON),
        };
        let Some(Notice::Failed { reason, .. }) = Notice::decode(&long.encode()) else {
            panic!("a long notice must decode");
        };
        assert!(reason.len() <= MAX_REASON && reason.chars().all(|c| c == 'é'));
        assert_eq!(Notice::decode(&[0, 1, 2]), None);
        assert_eq!(Notice::decode(&[9; 20]), None);
    }
}
