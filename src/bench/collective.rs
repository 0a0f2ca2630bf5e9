//! Timing of collectives, for `examples/allreduce.rs`, `benches/allreduce.rs` and a
//! user's own communicator.
//!
//! Protocol, after nccl-tests: every peer runs on its own thread with its own buffer;
//! the peers line up on the group's barrier, each times `iters` back-to-back all-reduces
//! on its own clock, and a sample is the slowest peer's time divided by `iters`. `iters`
//! is calibrated once so that a sample lasts about 20 ms. Algorithm bandwidth is
//! bytes / time; bus bandwidth multiplies it by 2 (n - 1) / n, the fraction of the buffer
//! each peer must send and receive in any all-reduce, so that it compares with a link's
//! (here: memory's) bandwidth whatever the group size.

use crate::comm::{CommError, Communicator};
use crate::Precision;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time per all-reduce of every sample, in seconds: at least `min_samples`, and samples
/// until `min_time` seconds have been timed.
pub fn time_all_reduce<C: Communicator>(
    peers: Vec<C>,
    len: usize,
    min_samples: usize,
    min_time: Duration,
) -> Result<Vec<f64>, CommError> {
    time_all_reduce_as(peers, len, Precision::F32, min_samples, min_time)
}

/// [`time_all_reduce`] of [`Communicator::all_reduce_as`] with values sent as `wire`.
pub fn time_all_reduce_as<C: Communicator>(
    peers: Vec<C>,
    len: usize,
    wire: Precision,
    min_samples: usize,
    min_time: Duration,
) -> Result<Vec<f64>, CommError> {
    let iters = AtomicUsize::new(1);
    let more = AtomicBool::new(true);
    // Per-sample slowest peer, in nanoseconds.
    let slowest = AtomicU64::new(0);
    let samples = Mutex::new(Vec::new());
    let results: Vec<Result<(), CommError>> = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .map(|mut peer| {
                let (iters, more, slowest, samples) = (&iters, &more, &slowest, &samples);
                s.spawn(move || -> Result<(), CommError> {
                    // Zeros stay zeros however often they are summed: no overflow to inf.
                    let mut buf = vec![0.0f32; len];
                    let root = peer.rank() == 0;
                    for _ in 0..2 {
                        peer.all_reduce_as(&mut buf, wire)?; // warm-up: page faults, spare buffers
                    }
                    peer.barrier()?;
                    let t = Instant::now();
                    peer.all_reduce_as(&mut buf, wire)?;
                    slowest.fetch_max(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    peer.barrier()?;
                    if root {
                        let one = slowest.swap(0, Ordering::SeqCst).max(1) as f64 * 1e-9;
                        iters.store(((0.02 / one) as usize).clamp(1, 10_000), Ordering::SeqCst);
                    }
                    let mut timed = 0.0;
                    loop {
                        peer.barrier()?;
                        let k = iters.load(Ordering::SeqCst);
                        let t = Instant::now();
                        for _ in 0..k {
                            peer.all_reduce_as(&mut buf, wire)?;
                        }
                        slowest.fetch_max(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
                        peer.barrier()?;
                        if root {
                            let dt = slowest.swap(0, Ordering::SeqCst) as f64 * 1e-9;
                            timed += dt;
                            let mut s = samples.lock().unwrap();
                            s.push(dt / k as f64);
                            let enough = s.len() >= min_samples && timed >= min_time.as_secs_f64();
                            more.store(!enough, Ordering::SeqCst);
                        }
                        peer.barrier()?;
                        if !more.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(samples.into_inner().unwrap())
}

/// The median of `samples` (the upper one of an even count).
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Seconds per call of `op`, run in lockstep by every rank of `coord`'s group (ranks may
/// be processes): the protocol of [`time_all_reduce`] with the ranks' clocks compared
/// through `coord`, so every rank returns the same samples. `coord` only coordinates; it
/// may be a communicator other than the one `op` measures.
pub fn time_ranked(
    coord: &mut dyn Communicator,
    mut op: impl FnMut() -> Result<(), CommError>,
    min_samples: usize,
    min_time: Duration,
) -> Result<Vec<f64>, CommError> {
    let slowest = |coord: &mut dyn Communicator, mine: f64| -> Result<f64, CommError> {
        let mut times = vec![0.0f32; coord.size()];
        times[coord.rank()] = mine as f32;
        coord.all_reduce(&mut times)?;
        Ok(times.into_iter().fold(0.0, f32::max) as f64)
    };
    for _ in 0..2 {
        op()?; // warm-up: page faults, spare buffers
    }
    coord.barrier()?;
    let t = Instant::now();
    op()?;
    let one = slowest(coord, t.elapsed().as_secs_f64())?.max(1e-9);
    let iters = ((0.02 / one) as usize).clamp(1, 10_000);
    let (mut samples, mut timed) = (Vec::new(), 0.0);
    while samples.len() < min_samples || timed < min_time.as_secs_f64() {
        coord.barrier()?;
        let t = Instant::now();
        for _ in 0..iters {
            op()?;
        }
        let dt = slowest(coord, t.elapsed().as_secs_f64())?;
        timed += dt;
        samples.push(dt / iters as f64);
    }
    Ok(samples)
}

/// One thread's copy bandwidth over `bytes`, best of a few ~20 ms samples, in bytes per
/// second (bytes copied, not bytes moved: a copy reads and writes each byte).
pub fn memcpy_bandwidth(bytes: usize) -> f64 {
    let len = (bytes / 4).max(1);
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    dst.copy_from_slice(&src);
    let t = Instant::now();
    dst.copy_from_slice(std::hint::black_box(&src));
    let iters = ((0.02 / t.elapsed().as_secs_f64().max(1e-9)) as usize).clamp(1, 100_000);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    (len * 4) as f64 / best
}

/// nccl-tests' bus bandwidth of an all-reduce among `n` peers, from its algorithm
/// bandwidth.
pub fn bus_bandwidth(algbw: f64, n: usize) -> f64 {
    algbw * 2.0 * (n as f64 - 1.0) / n as f64
}

/// The slowest peer's time for `iters` back-to-back all-reduces of `len` floats, after a
/// warm-up (criterion's `iter_custom`).
pub fn all_reduce_iters<C: Communicator>(
    peers: Vec<C>,
    len: usize,
    iters: u64,
) -> Result<Duration, CommError> {
    let slowest = AtomicU64::new(0);
    let results: Vec<Result<(), CommError>> = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .map(|mut peer| {
                let slowest = &slowest;
                s.spawn(move || -> Result<(), CommError> {
                    let mut buf = vec![0.0f32; len];
                    peer.all_reduce(&mut buf)?;
                    peer.barrier()?;
                    let t = Instant::now();
                    for _ in 0..iters {
                        peer.all_reduce(&mut buf)?;
                    }
                    slowest.fetch_max(t.elapsed().as_nanos() as u64, Ordering::SeqCst);
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(Duration::from_nanos(slowest.into_inner()))
}
