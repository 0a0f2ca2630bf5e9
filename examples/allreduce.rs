//! All-reduce bandwidth of the in-process ring against the naive gather-to-one-then-
//! broadcast group and against this machine's memcpy, for several group sizes and
//! message sizes, reported as nccl-tests reports them (algorithm and bus bandwidth).
//!
//!     cargo run --release --example allreduce
//!     cargo run --release --example allreduce -- --peers 2,4 --sizes 1M,64M --json-out ar.json
//!     cargo run --release --example allreduce -- --sizes 4M,64M --compression bf16
//!
//! Peers are threads; on a machine with fewer cores than peers they take turns, and
//! bandwidth per peer falls accordingly (the table says how many cores there were).
//!
//! With `--mpi` (built with `--features mpi`, launched by mpirun), the peers are the
//! job's processes instead, and the table puts ringtrain's ring over MPI and its
//! `MPI_Iallreduce` mode beside a plain blocking `MPI_Allreduce`:
//!
//!     mpirun -np 4 target/release/examples/allreduce --mpi --json-out ar-mpi.json

use clap::Parser;
use ringtrain::bench::{parse_bytes, ring_sweep, RingSweepConfig};
use ringtrain::comm::{Algorithm, Thresholds};
use ringtrain::Precision;
use std::error::Error;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Measure the ring all-reduce against a naive baseline and memcpy")]
struct Args {
    /// Group sizes (peers, one thread each).
    #[arg(long, value_delimiter = ',', default_value = "2,4,8")]
    peers: Vec<usize>,
    /// Message sizes in bytes, with an optional K, M or G suffix (powers of 1024).
    #[arg(long, value_delimiter = ',', value_parser = parse_bytes,
          default_value = "4K,16K,64K,256K,1M,4M,16M,64M,256M")]
    sizes: Vec<usize>,
    /// Seconds of timed samples per measurement (at least 3 samples).
    #[arg(long, default_value_t = 0.3)]
    min_time: f64,
    /// The ring's chunk size in bytes.
    #[arg(long, value_parser = parse_bytes, default_value = "1M")]
    chunk_bytes: usize,
    /// Also time the ring with values crossing the links as bf16 or f16 (half the
    /// bytes), summed in f32, beside the f32 ring.
    #[arg(long)]
    compression: Option<Precision>,
    /// Run this all-reduce algorithm at every size (direct, tree, doubling, halving or
    /// ring; halving only on a power-of-two group, the ring elsewhere) instead
    /// of switching at the default thresholds: how the thresholds are chosen.
    #[arg(long)]
    algorithm: Option<Algorithm>,
    /// Skip the naive baseline (it is slow at large sizes).
    #[arg(long)]
    no_baseline: bool,
    /// Write the results as JSON.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Measure across this MPI job's processes (--peers is then the job's size):
    /// ringtrain's ring over MPI and MPI_Iallreduce mode beside MPI_Allreduce itself.
    #[arg(long)]
    mpi: bool,
    /// Timing rounds; the candidates take turns within each round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    if args.mpi {
        #[cfg(feature = "mpi")]
        return over_mpi::run(args);
        #[cfg(not(feature = "mpi"))]
        return Err("--mpi needs a build with `--features mpi` (and an MPI library)".into());
    }
    let sweep = ring_sweep(&RingSweepConfig {
        peers: args.peers.clone(),
        sizes: args.sizes.clone(),
        min_time: args.min_time,
        chunk_bytes: args.chunk_bytes,
        baseline: !args.no_baseline,
        compression: args.compression,
        thresholds: thresholds(args),
        rounds: args.rounds,
        progress: true,
    })?;
    print!("{sweep}");
    if let Some(path) = &args.json_out {
        sweep.write_json(path)?;
    }
    Ok(())
}

fn thresholds(args: &Args) -> Thresholds {
    args.algorithm
        .map_or_else(Thresholds::default, Thresholds::only)
}

/// `--mpi`: the same sizes across processes, three all-reduces side by side.
#[cfg(feature = "mpi")]
mod over_mpi {
    use super::*;
    use indicatif::{ProgressBar, ProgressStyle};
    use ringtrain::bench::collective::{bus_bandwidth, median, time_ranked};
    use ringtrain::bench::{human_bytes as human, write_json};
    use ringtrain::comm::mpi::{Mpi, MpiAlgorithm, MpiComm, MpiConfig};
    use ringtrain::comm::Communicator;
    use serde::Serialize;
    use std::time::Duration;

    #[derive(Serialize)]
    struct Row {
        processes: usize,
        bytes: usize,
        mpi_allreduce_time_us: f64,
        mpi_allreduce_busbw_gbs: f64,
        ring_time_us: f64,
        ring_busbw_gbs: f64,
        native_time_us: f64,
        native_busbw_gbs: f64,
    }

    #[derive(Serialize)]
    struct Report {
        mode: &'static str,
        library: String,
        processes: usize,
        processes_on_rank0_machine: usize,
        cores: usize,
        chunk_bytes: usize,
        rows: Vec<Row>,
    }

    pub fn run(args: &Args) -> Result<(), Box<dyn Error>> {
        let mpi = Mpi::init()?;
        let result = measure(args, &mpi);
        if let Err(e) = &result {
            mpi.abort_job_on_exit();
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("rank {}: error: {e}\n", mpi.rank()).as_bytes(),
            );
        }
        result
    }

    fn measure(args: &Args, mpi: &Mpi) -> Result<(), Box<dyn Error>> {
        let n = mpi.size();
        let root = mpi.rank() == 0;
        // Not available_parallelism: MPI launchers bind each rank to a core or two.
        let cores = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| s.matches("\nprocessor").count() + usize::from(s.starts_with("processor")))
            .ok()
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let config = |algorithm| MpiConfig {
            algorithm,
            chunk_bytes: args.chunk_bytes,
            thresholds: thresholds(args),
            ..MpiConfig::default()
        };
        // Communicators are created collectively, in the same order on every rank.
        let mut coord = mpi.communicator(config(MpiAlgorithm::Native))?;
        let mut ring = mpi.communicator(config(MpiAlgorithm::Ring))?;
        let mut native = mpi.communicator(config(MpiAlgorithm::Native))?;
        let mut plain = mpi.communicator(config(MpiAlgorithm::Native))?;
        let min_time = Duration::from_secs_f64(args.min_time);
        let bar = if root {
            ProgressBar::new(args.sizes.len() as u64)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(ProgressStyle::with_template(
            "[{bar:30}] {pos}/{len} {msg}",
        )?);
        let mut rows = Vec::new();
        for &bytes in &args.sizes {
            bar.set_message(format!("{n} processes, {}", human(bytes)));
            let len = bytes / 4;
            // Zeros stay zeros however often they are summed.
            let mut buf = vec![0.0f32; len];
            let (send, mut recv) = (vec![0.0f32; len], vec![0.0f32; len]);
            let (mut t_mpi, mut t_ring, mut t_native) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..args.rounds.max(1) {
                t_mpi.extend(time_ranked(
                    &mut coord,
                    || plain.blocking_all_reduce(&send, &mut recv),
                    3,
                    min_time,
                )?);
                t_ring.extend(time_comm(&mut coord, &mut ring, &mut buf, min_time)?);
                t_native.extend(time_comm(&mut coord, &mut native, &mut buf, min_time)?);
            }
            let algbw = |t: f64| (len * 4) as f64 / t / 1e9;
            let (m, r, v) = (median(t_mpi), median(t_ring), median(t_native));
            rows.push(Row {
                processes: n,
                bytes: len * 4,
                mpi_allreduce_time_us: m * 1e6,
                mpi_allreduce_busbw_gbs: bus_bandwidth(algbw(m), n),
                ring_time_us: r * 1e6,
                ring_busbw_gbs: bus_bandwidth(algbw(r), n),
                native_time_us: v * 1e6,
                native_busbw_gbs: bus_bandwidth(algbw(v), n),
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        if !root {
            return Ok(());
        }
        let library = mpi.library_version();
        println!(
            "all-reduce, f32 sum, across {n} MPI processes ({library}; {} on rank 0's machine, \
             which has {cores} cores), \
             ring chunks of {}; GB/s = 1e9 bytes/s; busbw = algbw x 2(n-1)/n",
            mpi.local_size(),
            human(args.chunk_bytes)
        );
        println!(
            "{:>6} | {:>12} {:>8} | {:>10} {:>8} | {:>12} {:>8} | {:>13}",
            "size",
            "MPI_Allreduce us",
            "busbw",
            "ring us",
            "busbw",
            "Iallreduce us",
            "busbw",
            "MPI / ring"
        );
        for r in &rows {
            println!(
                "{:>6} | {:>16.1} {:>8.2} | {:>10.1} {:>8.2} | {:>13.1} {:>8.2} | {:>12.2}x",
                human(r.bytes),
                r.mpi_allreduce_time_us,
                r.mpi_allreduce_busbw_gbs,
                r.ring_time_us,
                r.ring_busbw_gbs,
                r.native_time_us,
                r.native_busbw_gbs,
                r.mpi_allreduce_time_us / r.ring_time_us,
            );
        }
        if let Some(path) = &args.json_out {
            let report = Report {
                mode: "mpi",
                library,
                processes: n,
                processes_on_rank0_machine: mpi.local_size(),
                cores,
                chunk_bytes: args.chunk_bytes,
                rows,
            };
            write_json(path, &report)?;
        }
        Ok(())
    }

    fn time_comm(
        coord: &mut MpiComm,
        comm: &mut MpiComm,
        buf: &mut [f32],
        min_time: Duration,
    ) -> Result<Vec<f64>, Box<dyn Error>> {
        Ok(time_ranked(coord, || comm.all_reduce(buf), 3, min_time)?)
    }
}
