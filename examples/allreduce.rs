//! All-reduce bandwidth of the in-process ring against the naive gather-to-one-then-
//! broadcast group and against this machine's memcpy, for several group sizes and
//! message sizes, reported as nccl-tests reports them (algorithm and bus bandwidth).
//!
//!     cargo run --release --example allreduce
//!     cargo run --release --example allreduce -- --peers 2,4 --sizes 1M,64M --json-out ar.json
//!
//! Peers are threads; on a machine with fewer cores than peers they take turns, and
//! bandwidth per peer falls accordingly (the table says how many cores there were).

#[path = "../benches/support/collective.rs"]
mod collective;

use clap::Parser;
use collective::{bus_bandwidth, memcpy_bandwidth, time_all_reduce};
use indicatif::{ProgressBar, ProgressStyle};
use ringtrain::comm::{ring_with, star, RingConfig};
use serde::Serialize;
use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

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
    /// Skip the naive baseline (it is slow at large sizes).
    #[arg(long)]
    no_baseline: bool,
    /// Write the results as JSON.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 4096, 64K or 16M"))?;
    let scale = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        other => return Err(format!("unknown unit `{other}` in `{s}`")),
    };
    match n.checked_mul(scale) {
        Some(b) if b >= 4 => Ok(b),
        _ => Err(format!("`{s}`: sizes must be at least 4 bytes (one f32)")),
    }
}

#[derive(Serialize)]
struct Row {
    peers: usize,
    bytes: usize,
    ring_time_us: f64,
    ring_algbw_gbs: f64,
    ring_busbw_gbs: f64,
    baseline_time_us: Option<f64>,
    baseline_algbw_gbs: Option<f64>,
    baseline_busbw_gbs: Option<f64>,
    memcpy_gbs: f64,
}

#[derive(Serialize)]
struct Report {
    cores: usize,
    chunk_bytes: usize,
    rows: Vec<Row>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b}"),
    }
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    if args.peers.contains(&0) {
        return Err("--peers: a group needs at least one peer".into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let config = RingConfig {
        chunk_bytes: args.chunk_bytes,
        ..RingConfig::default()
    };
    let min_time = Duration::from_secs_f64(args.min_time);
    let bar = ProgressBar::new((args.peers.len() * args.sizes.len()) as u64).with_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")?,
    );
    let mut rows = Vec::new();
    let memcpy: Vec<f64> = args.sizes.iter().map(|&b| memcpy_bandwidth(b)).collect();
    for &n in &args.peers {
        for (&bytes, &memcpy_bw) in args.sizes.iter().zip(&memcpy) {
            bar.set_message(format!("{n} peers, {}", human(bytes)));
            let len = bytes / 4;
            let ring = median(time_all_reduce(
                ring_with(n, config.clone())?,
                len,
                3,
                min_time,
            )?);
            let baseline = if args.no_baseline {
                None
            } else {
                let peers = star(n, config.timeout)?;
                Some(median(time_all_reduce(peers, len, 3, min_time)?))
            };
            let algbw = |t: f64| (len * 4) as f64 / t / 1e9;
            rows.push(Row {
                peers: n,
                bytes: len * 4,
                ring_time_us: ring * 1e6,
                ring_algbw_gbs: algbw(ring),
                ring_busbw_gbs: bus_bandwidth(algbw(ring), n),
                baseline_time_us: baseline.map(|t| t * 1e6),
                baseline_algbw_gbs: baseline.map(algbw),
                baseline_busbw_gbs: baseline.map(|t| bus_bandwidth(algbw(t), n)),
                memcpy_gbs: memcpy_bw / 1e9,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    println!(
        "all-reduce, f32 sum, in-process (threads on {cores} cores), ring chunks of {}; \
         GB/s = 1e9 bytes/s; busbw = algbw x 2(n-1)/n",
        human(args.chunk_bytes)
    );
    println!(
        "{:>5} {:>6} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} | {:>7} {:>12}",
        "peers",
        "size",
        "ring us",
        "algbw",
        "busbw",
        "naive us",
        "algbw",
        "busbw",
        "memcpy",
        "ring/naive"
    );
    for r in &rows {
        let base = |v: Option<f64>, w: usize, p: usize| {
            v.map_or(format!("{:>w$}", "-"), |v| format!("{v:>w$.p$}"))
        };
        println!(
            "{:>5} {:>6} | {:>10.1} {:>8.2} {:>8.2} | {} {} {} | {:>7.2} {:>12}",
            r.peers,
            human(r.bytes),
            r.ring_time_us,
            r.ring_algbw_gbs,
            r.ring_busbw_gbs,
            base(r.baseline_time_us, 10, 1),
            base(r.baseline_algbw_gbs, 8, 2),
            base(r.baseline_busbw_gbs, 8, 2),
            r.memcpy_gbs,
            r.baseline_time_us
                .map_or("-".into(), |b| format!("{:.2}x", b / r.ring_time_us)),
        );
    }
    if let Some(path) = &args.json_out {
        let report = Report {
            cores,
            chunk_bytes: args.chunk_bytes,
            rows,
        };
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&report)?)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}
