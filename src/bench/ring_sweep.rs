//! The in-process ring's all-reduce over a sweep of group and message sizes, beside the
//! naive gather-to-one group, memcpy and, where asked, the ring with compressed values:
//! the figures of `examples/allreduce.rs` and docs/BENCHMARKS.md, as a library call
//! ([`RingSweep`] prints as the example's tables).

use super::collective::{
    bus_bandwidth, median, memcpy_bandwidth, time_all_reduce, time_all_reduce_as,
};
use super::protocol::Res;
use crate::comm::{ring_with, star, CommError, Communicator, RingConfig, Thresholds};
use crate::Precision;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// What [`ring_sweep`] measures.
#[derive(Debug, Clone)]
pub struct RingSweepConfig {
    /// Group sizes (peers, one thread each).
    pub peers: Vec<usize>,
    /// Message sizes in bytes.
    pub sizes: Vec<usize>,
    /// Seconds of timed samples per measurement (at least 3 samples).
    pub min_time: f64,
    /// The ring's chunk size in bytes.
    pub chunk_bytes: usize,
    /// Time the naive baseline too (it is slow at large sizes).
    pub baseline: bool,
    /// Also time the ring with values sent as this (bf16 or f16), summed in f32.
    pub compression: Option<Precision>,
    /// Where the group switches from its small-message algorithms to the ring
    /// ([`Thresholds::only`] times one algorithm at every size).
    pub thresholds: Thresholds,
    /// Rounds per point: the ring and the baseline take turns within each, and each
    /// figure is the median over all rounds' samples, so that a drift of the machine
    /// (another job, a frequency change) weighs on both alike.
    pub rounds: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// One group size and message size.
#[derive(Debug, Clone, Serialize)]
pub struct RingPoint {
    pub peers: usize,
    pub bytes: usize,
    pub ring_time_us: f64,
    pub ring_algbw_gbs: f64,
    pub ring_busbw_gbs: f64,
    pub baseline_time_us: Option<f64>,
    pub baseline_algbw_gbs: Option<f64>,
    pub baseline_busbw_gbs: Option<f64>,
    pub memcpy_gbs: f64,
    /// The ring with [`RingSweepConfig::compression`], and the bytes one peer sent per
    /// all-reduce with it and without.
    pub compressed_time_us: Option<f64>,
    pub compressed_bytes_sent: Option<u64>,
    pub ring_bytes_sent: u64,
}

/// Every point of a [`ring_sweep`]; `Display` prints the tables, the JSON
/// ([`RingSweep::write_json`]) has the same fields.
#[derive(Debug, Clone, Serialize)]
pub struct RingSweep {
    pub cores: usize,
    pub chunk_bytes: usize,
    pub compression: Option<String>,
    pub rows: Vec<RingPoint>,
}

/// Measures every group size of `config` at every message size.
pub fn ring_sweep(config: &RingSweepConfig) -> Res<RingSweep> {
    if config.peers.contains(&0) {
        return Err("a group needs at least one peer".into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ring = RingConfig {
        chunk_bytes: config.chunk_bytes,
        thresholds: config.thresholds,
        ..RingConfig::default()
    };
    let min_time = Duration::from_secs_f64(config.min_time);
    let bar = if config.progress {
        ProgressBar::new((config.peers.len() * config.sizes.len()) as u64).with_style(
            ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")?,
        )
    } else {
        ProgressBar::hidden()
    };
    let mut rows = Vec::new();
    let memcpy: Vec<f64> = config.sizes.iter().map(|&b| memcpy_bandwidth(b)).collect();
    for &n in &config.peers {
        for (&bytes, &memcpy_bw) in config.sizes.iter().zip(&memcpy) {
            bar.set_message(format!("{n} peers, {}", human_bytes(bytes)));
            let len = bytes / 4;
            let time = |wire: Precision| -> Res<f64> {
                let peers = ring_with(n, ring.clone())?;
                Ok(median(time_all_reduce_as(peers, len, wire, 3, min_time)?))
            };
            let (mut ring_samples, mut star_samples) = (Vec::new(), Vec::new());
            for _ in 0..config.rounds.max(1) {
                let peers = ring_with(n, ring.clone())?;
                ring_samples.extend(time_all_reduce(peers, len, 3, min_time)?);
                if config.baseline {
                    let peers = star(n, ring.timeout)?;
                    star_samples.extend(time_all_reduce(peers, len, 3, min_time)?);
                }
            }
            let ring_t = median(ring_samples);
            let baseline = config.baseline.then(|| median(star_samples));
            let compressed = config.compression.map(time).transpose()?;
            let algbw = |t: f64| (len * 4) as f64 / t / 1e9;
            rows.push(RingPoint {
                peers: n,
                bytes: len * 4,
                ring_time_us: ring_t * 1e6,
                ring_algbw_gbs: algbw(ring_t),
                ring_busbw_gbs: bus_bandwidth(algbw(ring_t), n),
                baseline_time_us: baseline.map(|t| t * 1e6),
                baseline_algbw_gbs: baseline.map(algbw),
                baseline_busbw_gbs: baseline.map(|t| bus_bandwidth(algbw(t), n)),
                memcpy_gbs: memcpy_bw / 1e9,
                compressed_time_us: compressed.map(|t| t * 1e6),
                compressed_bytes_sent: config
                    .compression
                    .map(|wire| bytes_per_all_reduce(n, len, wire, config.thresholds))
                    .transpose()?,
                ring_bytes_sent: bytes_per_all_reduce(n, len, Precision::F32, config.thresholds)?,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(RingSweep {
        cores,
        chunk_bytes: config.chunk_bytes,
        compression: config.compression.map(|w| w.to_string()),
        rows,
    })
}

impl RingSweep {
    /// Writes the figures as JSON, atomically.
    pub fn write_json(&self, path: &Path) -> Res<()> {
        super::write_json(path, self)
    }
}

impl fmt::Display for RingSweep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "all-reduce, f32 sum, in-process (threads on {} cores), ring chunks of {}; \
             GB/s = 1e9 bytes/s; busbw = algbw x 2(n-1)/n",
            self.cores,
            human_bytes(self.chunk_bytes)
        )?;
        writeln!(
            f,
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
        )?;
        let cell = |v: Option<f64>, w: usize, p: usize| {
            v.map_or(format!("{:>w$}", "-"), |v| format!("{v:>w$.p$}"))
        };
        for r in &self.rows {
            writeln!(
                f,
                "{:>5} {:>6} | {:>10.1} {:>8.2} {:>8.2} | {} {} {} | {:>7.2} {:>12}",
                r.peers,
                human_bytes(r.bytes),
                r.ring_time_us,
                r.ring_algbw_gbs,
                r.ring_busbw_gbs,
                cell(r.baseline_time_us, 10, 1),
                cell(r.baseline_algbw_gbs, 8, 2),
                cell(r.baseline_busbw_gbs, 8, 2),
                r.memcpy_gbs,
                r.baseline_time_us
                    .map_or("-".into(), |b| format!("{:.2}x", b / r.ring_time_us)),
            )?;
        }
        let Some(wire) = &self.compression else {
            return Ok(());
        };
        writeln!(
            f,
            "\nthe ring with values sent as {wire} (summed in f32), per peer and all-reduce"
        )?;
        writeln!(
            f,
            "{:>5} {:>6} | {:>10} {:>12} | {:>10} {:>12} | {:>9} {:>7}",
            "peers", "size", "f32 us", "f32 bytes", "wire us", "wire bytes", "bytes", "time"
        )?;
        for r in &self.rows {
            let (Some(t), Some(b)) = (r.compressed_time_us, r.compressed_bytes_sent) else {
                continue;
            };
            writeln!(
                f,
                "{:>5} {:>6} | {:>10.1} {:>12} | {:>10.1} {:>12} | {:>8.2}x {:>6.2}x",
                r.peers,
                human_bytes(r.bytes),
                r.ring_time_us,
                r.ring_bytes_sent,
                t,
                b,
                b as f64 / r.ring_bytes_sent as f64,
                t / r.ring_time_us,
            )?;
        }
        Ok(())
    }
}

/// Payload bytes peer 0 of an in-process group of `n` switching algorithm at
/// `thresholds` sends in one all-reduce of `len` values in `wire`'s format.
pub fn bytes_per_all_reduce(
    n: usize,
    len: usize,
    wire: Precision,
    thresholds: Thresholds,
) -> Result<u64, CommError> {
    let config = RingConfig {
        thresholds,
        ..RingConfig::default()
    };
    let mut peers = ring_with(n, config)?;
    let sent = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .iter_mut()
            .map(|p| {
                s.spawn(move || -> Result<u64, CommError> {
                    p.all_reduce_as(&mut vec![0.0f32; len], wire)?;
                    Ok(p.bytes_sent().unwrap_or(0))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a ring peer panicked"))
            .collect::<Result<Vec<u64>, _>>()
    })?;
    Ok(sent[0])
}

/// A byte count as a command line gives it: digits with an optional K, M or G (powers
/// of 1024), at least 4 (one f32). For clap's `value_parser`.
pub fn parse_bytes(s: &str) -> Result<usize, String> {
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

/// `4K`, `16M`, `1G` where the size is a whole number of them, else the bytes.
pub fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => format!("{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_in_powers_of_1024() {
        assert_eq!(parse_bytes("64K"), Ok(64 << 10));
        assert_eq!(parse_bytes(" 16m "), Ok(16 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("2").is_err());
        assert!(parse_bytes("3T").is_err());
        assert!(parse_bytes("x").is_err());
        assert_eq!(human_bytes(64 << 10), "64K");
        assert_eq!(human_bytes(1 << 30), "1G");
        assert_eq!(human_bytes(1000), "1000");
    }

    #[test]
    fn a_small_sweep_measures_and_compresses_by_half() {
        let sweep = ring_sweep(&RingSweepConfig {
            // Segments of 256 values: whole words in both formats, so exactly half.
            peers: vec![1, 4],
            sizes: vec![4096],
            min_time: 0.0,
            chunk_bytes: 1024,
            baseline: true,
            compression: Some(Precision::Bf16),
            thresholds: Thresholds::only(crate::comm::Algorithm::Ring),
            rounds: 1,
            progress: false,
        })
        .unwrap();
        assert_eq!(sweep.rows.len(), 2);
        let four = &sweep.rows[1];
        assert!(four.ring_time_us > 0.0 && four.baseline_time_us.is_some());
        assert_eq!(four.ring_bytes_sent, 2 * 3 * 1024);
        assert_eq!(
            2 * four.compressed_bytes_sent.unwrap(),
            four.ring_bytes_sent
        );
        assert_eq!(
            sweep.rows[0].ring_bytes_sent, 0,
            "a group of one sends nothing"
        );
        assert!(sweep.to_string().contains("sent as bf16"));
        assert!(ring_sweep(&RingSweepConfig {
            peers: vec![0],
            ..RingSweepConfig {
                peers: vec![],
                sizes: vec![],
                min_time: 0.0,
                chunk_bytes: 1024,
                baseline: false,
                compression: None,
                thresholds: Thresholds::default(),
                rounds: 1,
                progress: false,
            }
        })
        .is_err());
    }
}
