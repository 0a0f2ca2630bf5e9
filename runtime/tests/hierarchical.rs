//! The two-level communicator, with in-process rings standing in for both levels (MPI
//! among the leaders is tested under mpirun in the root crate's tests/mpi.rs): global
//! ranks, sums and broadcasts with the same bits on every device, nodes of different
//! sizes, and failures that reach every device of every node.

use ringtrain_runtime::comm::{
    hierarchical, hierarchical_rails, ring, CommError, Communicator, HierarchicalComm,
};
use std::time::{Duration, Instant};

/// Nodes with `counts[k]` devices each, their leaders joined by a ring; the
/// communicators in global rank order.
fn nodes(counts: &[usize]) -> Vec<HierarchicalComm> {
    let leaders = ring(counts.len()).unwrap();
    let per_node: Vec<Vec<HierarchicalComm>> = std::thread::scope(|s| {
        let handles: Vec<_> = leaders
            .into_iter()
            .zip(counts)
            .map(|(leader, &n)| {
                s.spawn(move || {
                    let local = ring(n)
                        .unwrap()
                        .into_iter()
                        .map(|c| Box::new(c) as Box<dyn Communicator>)
                        .collect();
                    hierarchical(local, Box::new(leader)).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    per_node.into_iter().flatten().collect()
}

/// `counts.len()` nodes, device `i` of each linked to device `i` of the others by a rail
/// (a ring of the nodes); the communicators in global rank order, or each node's error.
fn rail_nodes(counts: &[usize]) -> Vec<Result<Vec<HierarchicalComm>, CommError>> {
    let max = counts.iter().copied().max().unwrap_or(0);
    let mut rails: Vec<Vec<Option<Box<dyn Communicator>>>> =
        (0..counts.len()).map(|_| Vec::new()).collect();
    for _ in 0..max {
        for (k, c) in ring(counts.len()).unwrap().into_iter().enumerate() {
            rails[k].push(Some(Box::new(c)));
        }
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = rails
            .into_iter()
            .zip(counts)
            .map(|(mut rails, &n)| {
                s.spawn(move || {
                    let local = ring(n)
                        .unwrap()
                        .into_iter()
                        .map(|c| Box::new(c) as Box<dyn Communicator>)
                        .collect();
                    let rails = rails
                        .iter_mut()
                        .take(n)
                        .map(|r| r.take().unwrap())
                        .collect();
                    hierarchical_rails(local, rails)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn on_every_device<T: Send>(
    comms: Vec<HierarchicalComm>,
    f: impl Fn(HierarchicalComm) -> T + Sync,
) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || f(c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + rank * 104729) % 1000) as f32 * 1.37e-3 - 0.6)
        .collect()
}

#[test]
fn ranks_are_global_and_nodes_may_differ_in_size() {
    let comms = nodes(&[2, 1, 3]);
    let ranks: Vec<_> = comms
        .iter()
        .map(|c| (c.rank(), c.size(), c.node(), c.is_leader()))
        .collect();
    assert_eq!(
        ranks,
        vec![
            (0, 6, 0, true),
            (1, 6, 0, false),
            (2, 6, 1, true),
            (3, 6, 2, true),
            (4, 6, 2, false),
            (5, 6, 2, false),
        ]
    );
}

#[test]
fn all_reduce_sums_with_identical_bits_on_every_device() {
    for counts in [&[1usize][..], &[2, 2], &[2, 1, 3], &[1, 1, 1, 1]] {
        let size: usize = counts.iter().sum();
        for len in [0, 1, 5, 1000] {
            let out = on_every_device(nodes(counts), |mut c| {
                let mut data = input(c.rank(), len);
                c.all_reduce(&mut data).unwrap();
                data
            });
            for (i, want) in (0..len).map(|i| {
                (
                    i,
                    (0..size).map(|r| f64::from(input(r, len)[i])).sum::<f64>(),
                )
            }) {
                assert!(
                    (f64::from(out[0][i]) - want).abs() < 1e-4,
                    "{counts:?} len {len}"
                );
            }
            for o in &out {
                assert_eq!(
                    o.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    out[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{counts:?} len {len}"
                );
            }
        }
    }
}

#[test]
fn broadcast_copies_from_any_root_and_barrier_returns() {
    let counts = [2, 1, 3];
    for root in 0..6 {
        let out = on_every_device(nodes(&counts), |mut c| {
            let mut data = input(c.rank(), 37);
            c.broadcast(&mut data, root).unwrap();
            c.barrier().unwrap();
            data
        });
        for o in &out {
            assert_eq!(o, &input(root, 37), "root {root}");
        }
    }
    let mut c = nodes(&[1]).pop().unwrap();
    assert!(matches!(
        c.broadcast(&mut [1.0], 1),
        Err(CommError::InvalidArgument(_))
    ));
}

#[test]
fn a_failing_device_stops_every_node() {
    let started = Instant::now();
    // Device 4 (node 2's second) fails; everyone else is in an all-reduce.
    let out = on_every_device(nodes(&[2, 1, 3]), |mut c| {
        if c.rank() == 4 {
            c.abort("injected failure");
            return None;
        }
        let mut data = vec![1.0; 100];
        Some(c.all_reduce(&mut data))
    });
    for (rank, r) in out.iter().enumerate() {
        let Some(r) = r else { continue };
        match r {
            // Devices of node 2 know the culprit; other nodes hear it through node 2's
            // leader (rank 3), with the culprit in the reason.
            Err(CommError::PeerFailed { rank: 4, reason }) => {
                assert!(reason.contains("injected failure"), "{reason}")
            }
            Err(CommError::PeerFailed { rank: 3, reason }) => {
                assert!(
                    reason.contains("peer 4 failed: injected failure"),
                    "{reason}"
                )
            }
            other => panic!("device {rank}: {other:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_failing_leader_stops_every_node() {
    let out = on_every_device(nodes(&[2, 2]), |mut c| {
        if c.rank() == 2 {
            c.abort("leader down");
            return None;
        }
        let mut data = vec![1.0; 10];
        Some(c.all_reduce(&mut data))
    });
    for r in out.into_iter().flatten() {
        match r {
            Err(CommError::PeerFailed { rank: 2, reason }) => {
                assert!(reason.contains("leader down"))
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Rails: a local reduce-scatter, an all-reduce of each part along its rail, a local
/// all-gather. The same sums, the same bits on every device, and the same bits as the
/// leaders' path would not give (another order), within rounding of it.
#[test]
fn rails_sum_with_identical_bits_on_every_device() {
    for counts in [&[1usize, 1][..], &[2, 2], &[3, 3, 3]] {
        let size: usize = counts.iter().sum();
        for len in [0, 1, 5, 1000] {
            let comms: Vec<_> = rail_nodes(counts)
                .into_iter()
                .flat_map(Result::unwrap)
                .collect();
            assert!(comms.iter().all(|c| c.has_rails()));
            let out = on_every_device(comms, |mut c| {
                let mut data = input(c.rank(), len);
                c.all_reduce(&mut data).unwrap();
                let mut b = input(c.rank(), 9);
                c.broadcast(&mut b, size - 1).unwrap();
                (data, b)
            });
            for i in 0..len {
                let want: f64 = (0..size).map(|r| f64::from(input(r, len)[i])).sum();
                assert!(
                    (f64::from(out[0].0[i]) - want).abs() < 1e-4,
                    "{counts:?} len {len}"
                );
            }
            for (data, b) in &out {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(data), bits(&out[0].0), "{counts:?} len {len}");
                assert_eq!(b, &input(size - 1, 9));
            }
        }
    }
}

#[test]
fn rails_refuse_nodes_of_different_sizes_on_every_node() {
    for r in rail_nodes(&[2, 1]) {
        let err = r.expect_err("refused");
        assert!(err.to_string().contains("same number of devices"), "{err}");
    }
}

#[test]
fn a_failing_device_on_a_rail_stops_every_node() {
    let comms: Vec<_> = rail_nodes(&[2, 2])
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let started = Instant::now();
    let out = on_every_device(comms, |mut c| {
        if c.rank() == 3 {
            c.abort("rail down");
            return None;
        }
        Some(c.all_reduce(&mut vec![1.0; 100]))
    });
    for r in out.into_iter().flatten() {
        let err = r.expect_err("stopped");
        assert!(err.to_string().contains("rail down"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}
