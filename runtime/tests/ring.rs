//! The in-process ring: collectives give the right answer, the same bits on every peer,
//! for every group size and length (lengths below the group size included); and a peer
//! that fails, leaves, hangs or disagrees makes every other peer return an error naming
//! it, within a bounded time.

use ringtrain_runtime::comm::{
    even_parts, ring_with, Algorithm, CommError, Communicator, RingComm, RingConfig, Thresholds,
};
use ringtrain_runtime::Precision;
use std::time::{Duration, Instant};

/// Tiny chunks, so that even short buffers are cut into several pipelined messages, and
/// the ring for every size.
fn small_chunks() -> RingConfig {
    with_algorithm(Algorithm::Ring)
}

/// Tiny chunks, and thresholds that make every all-reduce run `algorithm`.
fn with_algorithm(algorithm: Algorithm) -> RingConfig {
    RingConfig {
        chunk_bytes: 12,
        queue_depth: 2,
        timeout: Duration::from_secs(30),
        thresholds: Thresholds::only(algorithm),
    }
}

/// Halving runs on the groups of 2 and 4 (the ring on the others).
const ALGORITHMS: [Algorithm; 5] = [
    Algorithm::Ring,
    Algorithm::Halving,
    Algorithm::Doubling,
    Algorithm::Tree,
    Algorithm::Direct,
];

/// Runs `f(peer)` on one thread per peer and returns what each returned, by rank.
fn on_every_peer<T: Send>(peers: Vec<RingComm>, f: impl Fn(RingComm) -> T + Sync) -> Vec<T> {
    std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .map(|p| {
                let f = &f;
                s.spawn(move || f(p))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Peer `rank`'s input: values whose sums are inexact in f32, so that a peer summing in
/// another order would show.
fn input(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + rank * 104729) % 1000) as f32 * 1.37e-3 - 0.6 + rank as f32 * 0.1)
        .collect()
}

#[test]
fn all_reduce_sums_with_identical_bits_on_every_peer() {
    for (algorithm, n) in ALGORITHMS
        .into_iter()
        .flat_map(|a| (1..=6usize).map(move |n| (a, n)))
    {
        for len in [0, 1, 2, n.saturating_sub(1), n, 7, 100, 3 * 3 * n + 2] {
            let peers = ring_with(n, with_algorithm(algorithm)).unwrap();
            let out = on_every_peer(peers, |mut p| {
                let mut x = input(p.rank(), len);
                p.all_reduce(&mut x).map(|_| x)
            });
            let out: Vec<Vec<f32>> = out.into_iter().map(Result::unwrap).collect();
            for (i, &got) in out[0].iter().enumerate() {
                let want: f64 = (0..n).map(|r| input(r, len)[i] as f64).sum();
                assert!(
                    (got as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{algorithm:?} n {n} len {len} element {i}: {got} vs {want}"
                );
            }
            for (r, o) in out.iter().enumerate() {
                let same = o
                    .iter()
                    .zip(&out[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{algorithm:?} n {n} len {len}: peer {r} differs from peer 0"
                );
            }
        }
    }
}

/// Values sent as bf16 or f16 and summed in f32: every peer gets the same bits, each
/// within `n` roundings of the exact sum (one per hop of the reduce-scatter, one for the
/// finished sum), and half the bytes cross the links. A compressed all-reduce and a
/// plain one alternate on one ring.
#[test]
fn compressed_all_reduce_sends_half_the_bytes_with_identical_bits() {
    for (wire, algorithm) in [Precision::Bf16, Precision::F16]
        .into_iter()
        .flat_map(|w| ALGORITHMS.map(|a| (w, a)))
    {
        for n in 1..=5usize {
            for len in [0, 1, 7, 100, 3 * 3 * n + 1] {
                let peers = ring_with(n, with_algorithm(algorithm)).unwrap();
                let out = on_every_peer(peers, |mut p| {
                    let mut x = input(p.rank(), len);
                    p.all_reduce_as(&mut x, wire)?;
                    let compressed = p.bytes_sent().unwrap();
                    let mut y = input(p.rank(), len);
                    p.all_reduce(&mut y)?;
                    let plain = p.bytes_sent().unwrap() - compressed;
                    Ok::<_, CommError>((x, compressed, plain))
                });
                let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
                let u = f64::from(wire.unit_roundoff());
                for (i, &got) in out[0].0.iter().enumerate() {
                    let terms: Vec<f64> = (0..n).map(|r| f64::from(input(r, len)[i])).collect();
                    let want: f64 = terms.iter().sum();
                    let scale: f64 = terms.iter().map(|t| t.abs()).sum();
                    assert!(
                        (f64::from(got) - want).abs() <= (n as f64 + 1.0) * u * scale,
                        "{wire} {algorithm:?} n {n} len {len} element {i}: {got} vs {want}"
                    );
                    if n > 1 {
                        // A group of one sends nothing, and rounds nothing.
                        assert_eq!(got, wire.round(got), "{wire}: the result is a {wire} value");
                    }
                }
                for (r, (x, compressed, plain)) in out.iter().enumerate() {
                    let same = x
                        .iter()
                        .zip(&out[0].0)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{wire} {algorithm:?} n {n} len {len}: peer {r} differs"
                    );
                    // Whole 4-byte words: an odd chunk rounds its half word up.
                    assert!(
                        2 * compressed <= plain + 4 * 2 * (n as u64) * (len as u64).div_ceil(3),
                        "{wire} n {n} len {len}: {compressed} bytes against {plain}"
                    );
                }
            }
        }
    }
}

#[test]
fn repeated_collectives_on_one_ring() {
    // Each size crossing from one algorithm to the next.
    let config = RingConfig {
        thresholds: Thresholds {
            direct_below: 4 * 13,
            tree_below: 4 * 17,
            doubling_below: 4 * 22,
            halving_below: 4 * 26,
        },
        ..small_chunks()
    };
    let peers = ring_with(4, config).unwrap();
    let out = on_every_peer(peers, |mut p| {
        let mut results = Vec::new();
        for round in 0..20 {
            let mut x = vec![(p.rank() + round) as f32; 10 + round];
            p.all_reduce(&mut x).unwrap();
            results.push(x[0]);
            p.barrier().unwrap();
        }
        results
    });
    for r in &out {
        let want: Vec<f32> = (0..20).map(|round| (4 * round + 6) as f32).collect();
        assert_eq!(r, &want);
    }
}

#[test]
fn broadcast_copies_the_roots_buffer_from_any_root() {
    for (algorithm, n) in ALGORITHMS
        .into_iter()
        .flat_map(|a| (1..=4usize).map(move |n| (a, n)))
    {
        for root in 0..n {
            for len in [0, 1, 5, 40] {
                let peers = ring_with(n, with_algorithm(algorithm)).unwrap();
                let out = on_every_peer(peers, |mut p| {
                    let mut x = input(p.rank(), len);
                    p.broadcast(&mut x, root).map(|_| x)
                });
                for (r, o) in out.into_iter().enumerate() {
                    assert_eq!(
                        o.unwrap(),
                        input(root, len),
                        "{algorithm:?} n {n} root {root} peer {r}"
                    );
                }
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    assert!(matches!(
        ring_with(0, RingConfig::default()),
        Err(CommError::InvalidArgument(_))
    ));
    let bad = RingConfig {
        chunk_bytes: 0,
        ..RingConfig::default()
    };
    assert!(ring_with(2, bad).is_err());
    let mut peers = ring_with(2, RingConfig::default()).unwrap();
    let err = peers[0].broadcast(&mut [1.0], 2).unwrap_err();
    assert!(err.to_string().contains("rank 2"), "{err}");
}

/// Every peer but `culprit` must fail naming `culprit`, quickly.
fn assert_all_blame(out: &[Result<(), CommError>], culprit: usize, started: Instant) {
    for (r, res) in out.iter().enumerate() {
        if r == culprit {
            continue;
        }
        match res {
            Err(CommError::PeerFailed { rank, .. }) => {
                assert_eq!(*rank, culprit, "peer {r} blames the wrong peer: {res:?}")
            }
            other => panic!("peer {r}: expected PeerFailed({culprit}), got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failure took {:?} to spread",
        started.elapsed()
    );
}

#[test]
fn an_aborting_peer_is_named_by_all_others() {
    for n in 2..=4 {
        let culprit = n - 1;
        let started = Instant::now();
        let peers = ring_with(n, small_chunks()).unwrap();
        let out = on_every_peer(peers, |mut p| {
            let mut x = vec![1.0; 1000];
            p.all_reduce(&mut x)?;
            if p.rank() == culprit {
                p.abort("out of memory on its device");
                return Ok(());
            }
            p.all_reduce(&mut x)
        });
        assert_all_blame(&out, culprit, started);
        let Err(CommError::PeerFailed { reason, .. }) = &out[0] else {
            unreachable!()
        };
        assert!(reason.contains("out of memory"), "{reason}");
    }
}

#[test]
fn a_peer_that_leaves_is_named_by_all_others() {
    for n in 2..=4 {
        let started = Instant::now();
        let peers = ring_with(n, small_chunks()).unwrap();
        // Peer 1 drops its communicator (as a panicking thread would) without a word.
        let out = on_every_peer(peers, |mut p| {
            if p.rank() == 1 {
                drop(p);
                return Ok(());
            }
            let mut x = vec![1.0; 1000];
            p.all_reduce(&mut x)
        });
        assert_all_blame(&out, 1, started);
    }
}

#[test]
fn a_hung_peer_times_out_with_its_name() {
    let config = RingConfig {
        timeout: Duration::from_millis(300),
        ..small_chunks()
    };
    let started = Instant::now();
    let peers = ring_with(3, config).unwrap();
    let out = on_every_peer(peers, |mut p| {
        if p.rank() == 2 {
            // Alive, holding its communicator, but never joining the collective.
            std::thread::sleep(Duration::from_secs(2));
            return Ok(());
        }
        let mut x = vec![1.0; 100];
        p.all_reduce(&mut x)
    });
    assert_all_blame(&out, 2, started);
    let err = out[0].as_ref().unwrap_err().to_string();
    assert!(
        err.contains("peer 2") && err.contains("sent nothing"),
        "{err}"
    );
}

#[test]
fn peers_disagreeing_on_the_length_get_an_error_not_a_hang() {
    for algorithm in ALGORITHMS {
        let peers = ring_with(3, with_algorithm(algorithm)).unwrap();
        let started = Instant::now();
        let out = on_every_peer(peers, |mut p| {
            let mut x = vec![1.0; if p.rank() == 1 { 31 } else { 30 }];
            p.all_reduce(&mut x)
        });
        assert!(out.iter().all(Result::is_err), "{algorithm:?}: {out:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let msg = out[0].as_ref().unwrap_err().to_string();
        assert!(
            msg.contains("disagree") || msg.contains("collective"),
            "{msg}"
        );
    }
}

/// `reduce`, `reduce_scatter` and `all_gather`, with parts of any size (empty ones too),
/// against sums in f64: the right values where the collective defines them, the same
/// bits on every peer that holds a sum, for every algorithm the sizes pick.
#[test]
fn reduce_reduce_scatter_and_all_gather_sum_and_copy_their_parts() {
    for algorithm in ALGORITHMS {
        for n in 1..=5usize {
            for len in [0, 1, 9, 41] {
                // Uneven parts: peer p's part grows with p; the first is often empty.
                let mut parts: Vec<usize> = (0..=n).map(|p| p * p * len / (n * n)).collect();
                parts[n] = len;
                let want: Vec<f64> = (0..len)
                    .map(|i| (0..n).map(|r| f64::from(input(r, len)[i])).sum())
                    .collect();
                let close = |got: f32, i: usize| {
                    (f64::from(got) - want[i]).abs() <= 1e-5 * want[i].abs().max(1.0)
                };
                for root in [0, n - 1] {
                    let peers = ring_with(n, with_algorithm(algorithm)).unwrap();
                    let parts = &parts;
                    let out = on_every_peer(peers, |mut p| {
                        let mut reduced = input(p.rank(), len);
                        p.reduce(&mut reduced, root)?;
                        let mut scattered = input(p.rank(), len);
                        p.reduce_scatter(&mut scattered, parts)?;
                        // Each peer's own part, marked, gathered into everyone's buffer.
                        let mut gathered = vec![-1.0f32; len];
                        let r = p.rank();
                        for (i, g) in gathered[parts[r]..parts[r + 1]].iter_mut().enumerate() {
                            *g = (r * 1000 + i) as f32;
                        }
                        p.all_gather(&mut gathered, parts)?;
                        Ok::<_, CommError>((reduced, scattered, gathered))
                    });
                    let out: Vec<_> = out.into_iter().map(Result::unwrap).collect();
                    let what = format!("{algorithm:?} n {n} len {len} root {root}");
                    for (i, &got) in out[root].0.iter().enumerate() {
                        assert!(close(got, i), "{what}: reduce element {i}: {got}");
                    }
                    for (p, (_, scattered, gathered)) in out.iter().enumerate() {
                        let own = parts[p]..parts[p + 1];
                        for (i, &x) in own.clone().zip(&scattered[own]) {
                            assert!(close(x, i), "{what}: peer {p} element {i}");
                        }
                        for q in 0..n {
                            for (j, &g) in gathered[parts[q]..parts[q + 1]].iter().enumerate() {
                                assert_eq!(g, (q * 1000 + j) as f32, "{what}: peer {p} part {q}");
                            }
                        }
                    }
                }
            }
        }
    }
    // Parts that do not cut the buffer are refused before anything is sent.
    let mut peers = ring_with(2, RingConfig::default()).unwrap();
    let err = peers[0].reduce_scatter(&mut [1.0; 4], &[0, 3]).unwrap_err();
    assert!(matches!(err, CommError::InvalidArgument(_)), "{err}");
    assert_eq!(even_parts(10, 4), vec![0, 2, 5, 7, 10]);
}

/// A ring's reduce-scatter leaves each peer the bits its all-reduce would have given for
/// that part when the parts are the even segments: one schedule, one summation order.
#[test]
fn all_reduce_is_reduce_scatter_then_all_gather() {
    let (n, len) = (4, 103);
    let parts = even_parts(len, n);
    let peers = ring_with(n, small_chunks()).unwrap();
    let out = on_every_peer(peers, |mut p| {
        let mut a = input(p.rank(), len);
        p.all_reduce(&mut a).unwrap();
        let mut b = input(p.rank(), len);
        p.reduce_scatter(&mut b, &parts).unwrap();
        p.all_gather(&mut b, &parts).unwrap();
        (a, b)
    });
    for (a, b) in &out {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
        }
    }
    for (_, b) in &out {
        assert!(b
            .iter()
            .zip(&out[0].1)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn peers_disagreeing_on_the_wire_format_get_an_error() {
    let peers = ring_with(3, with_algorithm(Algorithm::Direct)).unwrap();
    let out = on_every_peer(peers, |mut p| {
        let wire = if p.rank() == 2 {
            Precision::F16
        } else {
            Precision::Bf16
        };
        p.all_reduce_as(&mut [1.0; 30], wire)
    });
    assert!(out.iter().all(Result::is_err), "{out:?}");
    let msg = out[0].as_ref().unwrap_err().to_string();
    assert!(msg.contains("bf16") && msg.contains("f16"), "{msg}");
}

#[test]
fn the_star_baseline_agrees_with_the_ring() {
    use ringtrain_runtime::comm::star;
    for n in 1..=4usize {
        let len = 37;
        let sum = |peers: Vec<Box<dyn Communicator>>| {
            let out = std::thread::scope(|s| {
                let handles: Vec<_> = peers
                    .into_iter()
                    .map(|mut p| {
                        s.spawn(move || {
                            let mut x = input(p.rank(), len);
                            p.all_reduce(&mut x).unwrap();
                            let mut y = input(p.rank(), 5);
                            p.broadcast(&mut y, p.size() - 1).unwrap();
                            p.barrier().unwrap();
                            (x, y)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            });
            out
        };
        let ring_out = sum(ring_with(n, small_chunks())
            .unwrap()
            .into_iter()
            .map(|p| Box::new(p) as Box<dyn Communicator>)
            .collect());
        let star_out = sum(star(n, Duration::from_secs(30))
            .unwrap()
            .into_iter()
            .map(|p| Box::new(p) as Box<dyn Communicator>)
            .collect());
        for (r, (a, b)) in ring_out.iter().zip(&star_out).enumerate() {
            for (x, y) in a.0.iter().zip(&b.0) {
                assert!((x - y).abs() < 1e-5, "n {n} peer {r}: {x} vs {y}");
            }
            assert_eq!(a.1, input(n - 1, 5));
            assert_eq!(b.1, input(n - 1, 5));
        }
    }
}
